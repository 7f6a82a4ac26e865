"""`python -m modft_utils.serve`: a real server process over a tiny run's store, driven by the official
`openai` client and plain HTTP (httpx), on 127.0.0.1 only.

One server for the module (started by the `server` fixture, stopped at the end). Its store holds random
adapters on the tiny base (the conftest's `random_adapter`: no training steps): domain@1; task@1 and task@2
trained on domain@1; task@3, whose weights the tamper test damages; production is domain@1 and task@1.
Tests that move aliases put them back, so the order of tests does not matter for what they assert.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

from modft_utils import adapters, evaluate, modeling, runs
from modft_utils.adapters import AdapterStack
from modft_utils.config import load_profile
from modft_utils.data import prompt_format
from modft_utils.data.tasks import Conversation, prompt_text
from modft_utils.serve import ServerProcess
from modft_utils.store import WEIGHTS_FILE, Registry, base_identity

TOKEN = "s3cret-admin-token-for-tests"
FULL = "base+domain+task"
MAX_TOKENS = 6  # small answers keep the module fast; the server's own limit is 32
START_TIMEOUT_S = 180


class Served:
    """The running server, its store and run, and a reference model to compare answers with."""

    def __init__(self, url: str, registry: Registry, run: runs.RunFolder, log: Path, profile, base) -> None:
        self.url, self.registry, self.run, self.log = url, registry, run, log
        self.profile, self.base = profile, base
        self.http = httpx.Client(base_url=url, timeout=60)
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)

    def ready(self) -> dict:
        return self.http.get("/ready").json()


@pytest.fixture(scope="module")
def server(root, tmp_path_factory, test_outputs, random_adapter):
    tmp = tmp_path_factory.mktemp("serve")
    overrides = {
        "registry": str(tmp / "registry"),
        "runs_dir": str(tmp / "runs"),
        "cache_dir": str(test_outputs / "cache"),
    }
    profile = load_profile(root / "params" / "tiny.yaml", overrides)
    run = runs.folder(tmp / "runs" / "served").create(profile)  # profile.resolved.json, as notebook 01 writes it
    base = modeling.ensure_base(profile, progress=False)
    model = modeling.load_base(profile, base)
    identity = base_identity(model, model_id=profile.model.id, revision=base.revision)
    store = Registry(profile.registry_uri())
    plan = [("domain", None), ("task", "domain@1"), ("task", "domain@1"), ("task", "domain@1")]
    for seed, (name, parent) in enumerate(plan, start=1):
        spec = profile.dapt.lora if name == "domain" else profile.sft.lora
        model = random_adapter(model, f"a{seed}", spec, seed)
        folder = adapters.save_adapter(model, f"a{seed}", tmp / "adapters" / f"a{seed}")
        store.publish(name, folder, base=identity, parent=parent, params={}, data_fingerprint="", metrics={})
    store.promote("domain", 1, reason="test")
    store.promote("task", 1, reason="test")
    del model

    token_file = tmp / "admin.token"
    token_file.write_text(TOKEN + "\n")
    log = tmp / "requests.jsonl"
    args = [
        "--run", str(run), "--poll", "0.2", "--max-tokens", "32", "--default-max-tokens", str(MAX_TOKENS),
        "--max-body-bytes", "65536", "--log", str(log), "--admin-token-file", str(token_file),
        "--stack", "pinned=domain@1+task@2", "--stack", "nothing=task@candidate",
    ]  # fmt: skip
    # One thread for the server, one for this process's reference model (see ServerProcess's `threads`).
    proc = ServerProcess(args, tmp / "server.log", threads=1)
    served = Served(proc.url, store, run, log, profile, base)
    served.tmp = tmp
    try:
        proc.start(START_TIMEOUT_S)
        yield served
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def reference(server):
    """The notebooks' way to the same answers: the run's base with the store's versions, evaluate.generate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the server fixture
    model = modeling.load_base(server.profile, server.base)
    tok = modeling.load_tokenizer(server.base)
    stack = AdapterStack(model, server.registry, base_identity(model, model_id="tiny", revision=None))
    try:
        yield stack, tok, prompt_format(server.profile, tok)
    finally:
        torch.set_num_threads(threads)


def questions(root: Path, n: int) -> list[dict]:
    rows = [json.loads(line) for line in (root / "data/sample/squad/validation.jsonl").read_text().splitlines()]
    return rows[:n]


# ----------------------------------------------------------------- answers


def test_models_lists_stacks_with_exact_versions(server):
    models = server.client.models.list()
    by_id = {m.id: m for m in models.data}
    assert set(by_id) == {"base", "base+domain", FULL, "pinned"}
    assert by_id[FULL].versions == ["domain@1", "task@1"] and by_id[FULL].status == "ok"
    assert by_id["pinned"].versions == ["domain@1", "task@2"]
    assert by_id["base"].stack.startswith("base:") and by_id["base"].versions == []
    raw = server.http.get("/v1/models").json()
    assert [u["id"] for u in raw["unavailable"]] == ["nothing"]
    assert "no 'candidate' alias" in raw["unavailable"][0]["reason"]
    assert server.http.get("/health").json() == {"status": "ok"}
    assert server.ready()["status"] == "ready"


def test_served_answers_equal_evaluate_generate(server, reference, root):
    stack, tok, fmt = reference
    rows = questions(root, 3)
    stack.use("domain@1", "task@1")
    # completions: the SFT prompt the notebooks score with
    prompts = [fmt.prompt(tok, r["context"], r["question"]) for r in rows]
    for prompt in prompts:
        got = server.client.completions.create(model=FULL, prompt=prompt, max_tokens=MAX_TOKENS)
        want = evaluate.generate(stack.model, tok, [prompt], max_new_tokens=MAX_TOKENS, one_line=False)[0]
        assert got.choices[0].text.strip() == want
        assert got.system_fingerprint.endswith("+domain@1+task@1") and got.usage.prompt_tokens == len(
            tok(prompt, add_special_tokens=False)["input_ids"]
        )
        # stop at the first newline: evaluate.generate's one-line answer (what SQuAD scoring reads)
        one = server.client.completions.create(model=FULL, prompt=prompt, max_tokens=MAX_TOKENS, stop=["\n"])
        assert (
            one.choices[0].text.strip() == evaluate.generate(stack.model, tok, [prompt], max_new_tokens=MAX_TOKENS)[0]
        )
    # chat: the prompt rendered by the function training and scoring use
    for r in rows:
        messages = [{"role": "user", "content": r["question"]}]
        got = server.client.chat.completions.create(model=FULL, messages=messages, max_tokens=MAX_TOKENS)
        prompt = prompt_text(Conversation("x", (("user", r["question"]), ("assistant", ""))), tok, fmt)
        want = evaluate.generate(stack.model, tok, [prompt], max_new_tokens=MAX_TOKENS, one_line=False)[0]
        assert got.choices[0].message.content.strip() == want
        assert got.object == "chat.completion" and got.choices[0].finish_reason in ("stop", "length")
    # another stack on the same base: flags only, other answers
    stack.use()
    prompt = prompts[0]
    base_answer = server.client.completions.create(model="base", prompt=prompt, max_tokens=MAX_TOKENS)
    assert (
        base_answer.choices[0].text.strip()
        == evaluate.generate(stack.model, tok, [prompt], max_new_tokens=MAX_TOKENS, one_line=False)[0]
    )


def test_streaming_is_server_sent_events(server):
    messages = [{"role": "user", "content": "Who founded the Guild of Eel-Smokers?"}]
    whole = server.client.chat.completions.create(model=FULL, messages=messages, max_tokens=MAX_TOKENS)
    chunks = list(
        server.client.chat.completions.create(model=FULL, messages=messages, max_tokens=MAX_TOKENS, stream=True)
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert {c.system_fingerprint for c in chunks} == {whole.system_fingerprint}

    body = {
        "model": FULL,
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with server.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-modft-stack"] == whole.system_fingerprint
        raw = resp.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == whole.usage.completion_tokens

    text = "".join(
        c.choices[0].text
        for c in server.client.completions.create(model=FULL, prompt="The guild", max_tokens=MAX_TOKENS, stream=True)
    )
    assert (
        text == server.client.completions.create(model=FULL, prompt="The guild", max_tokens=MAX_TOKENS).choices[0].text
    )


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "model_not_found"),
        ({"model": FULL}, 400, "messages", None),
        ({"model": FULL, "messages": []}, 400, "messages", None),
        ({"model": FULL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", None),
        ({"model": FULL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 33}, 400, "max_tokens", None),
        ({"model": FULL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n", "unsupported_parameter"),
        ({"model": FULL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}, 400, "temperature", "unsupported_parameter"),
        ({"model": FULL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400, "max_tokens", None),
        ({"model": FULL, "messages": [{"role": "user", "content": "word " * 1100}]}, 400, "messages", "context_length_exceeded"),
        ({"model": FULL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"eos": -100}}, 400, "logit_bias", None),
        ({"model": FULL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"99999999": 1}}, 400, "logit_bias", None),
        ({"model": FULL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 101}}, 400, "logit_bias", None),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(server, body, status, param, code):
    resp = server.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and (code is None or err["code"] == code)
    assert "Traceback" not in resp.text


def test_malformed_oversized_and_unknown_routes(server):
    resp = server.http.post(
        "/v1/chat/completions", content=b'{"model": "x", ', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    big = {"model": FULL, "messages": [{"role": "user", "content": "x" * 70000}]}
    resp = server.http.post("/v1/chat/completions", json=big)
    assert resp.status_code == 413 and "limit" in resp.json()["error"]["message"]
    resp = server.http.get("/v1/nothing-here")
    assert resp.status_code == 404 and set(resp.json()["error"]) == {"message", "type", "param", "code"}
    long = server.client.completions.with_raw_response
    with pytest.raises(openai.BadRequestError, match="window is 1024 tokens"):
        long.create(model=FULL, prompt="word " * 1100, max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        server.client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_logit_bias_bans_a_token(server, reference):
    """OpenAI's logit_bias, -100 on EOS: the reply runs to max_tokens (finish_reason "length")."""
    _, tok, _ = reference
    ask = dict(model=FULL, messages=[{"role": "user", "content": "hi"}], max_tokens=24)
    banned = server.client.chat.completions.create(**ask, logit_bias={str(tok.eos_token_id): -100})
    assert banned.choices[0].finish_reason == "length" and banned.usage.completion_tokens == 24


# ----------------------------------------------------------------- operators


def test_admin_switches_an_adapter_off_and_on_and_audits_it(server):
    messages = [{"role": "user", "content": "hi"}]
    action = {"adapter": "task", "reason": "drill: task answers wrong"}
    resp = server.http.post(f"/admin/stacks/{FULL}/disable", json=action)
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
    resp = server.http.post(f"/admin/stacks/{FULL}/disable", json=action, headers={"Authorization": "Bearer wrong"})
    assert resp.status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = server.http.post(f"/admin/stacks/{FULL}/disable", json={"adapter": "domain", "reason": "x"}, headers=auth)
    assert resp.status_code == 409  # task@1 was trained on the domain: it cannot run without it
    resp = server.http.post(f"/admin/stacks/{FULL}/disable", json=action, headers=auth)
    assert resp.status_code == 200, resp.text
    try:
        answer = server.client.chat.completions.create(model=FULL, messages=messages, max_tokens=2)
        assert answer.system_fingerprint.endswith("+domain@1")  # the exact fallback: base+domain
        fallback = server.client.chat.completions.create(model="base+domain", messages=messages, max_tokens=2)
        assert answer.choices[0].message.content == fallback.choices[0].message.content
    finally:
        resp = server.http.post(f"/admin/stacks/{FULL}/enable", json={**action, "reason": "drill over"}, headers=auth)
        assert resp.status_code == 200
    answer = server.client.chat.completions.create(model=FULL, messages=messages, max_tokens=2)
    assert answer.system_fingerprint.endswith("+domain@1+task@1")
    notes = [e for e in server.registry.audit("task") if e["event"].startswith("serve-")]
    assert [(e["event"], e["stack"], e["version"]) for e in notes[-2:]] == [
        ("serve-disable", FULL, 1),
        ("serve-enable", FULL, 1),
    ]
    assert TOKEN not in server.log.read_text()


def test_request_log_has_no_prompt_text(server):
    server.client.chat.completions.create(
        model=FULL, messages=[{"role": "user", "content": "secret question"}], max_tokens=2
    )
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    served = [r for r in lines if r.get("status") == 200 and r.get("route") == "/v1/chat/completions"]
    assert served and {"time", "stack", "versions", "prompt_tokens", "completion_tokens", "latency_ms"} <= set(
        served[-1]
    )
    assert "secret question" not in server.log.read_text() and not any("prompt" in r for r in lines)


# ----------------------------------------------------------------- following the store


def test_live_rollback_fails_no_request(server):
    """Clients keep asking while another thread promotes and rolls back the task alias."""
    store = server.registry
    # (the move began, it had returned, the version it left in production)
    timeline: list[tuple[float, float, int]] = [(0.0, 0.0, store.aliases("task")["production"])]
    lock = threading.Lock()
    done = threading.Event()
    results: list[tuple[float, float, str]] = []
    failures: list[str] = []

    def client_loop() -> None:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=30)
        for _ in range(5000):  # bounded in count, and in time by `done`
            if done.is_set():
                return
            t0 = time.monotonic()
            try:
                r = client.chat.completions.create(
                    model=FULL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                with lock:
                    results.append((t0, time.monotonic(), r.system_fingerprint))
            except Exception as err:  # noqa: BLE001 - every failure is counted and shown
                with lock:
                    failures.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for move in ("promote", "rollback", "promote", "rollback"):
            time.sleep(0.5)
            before = time.monotonic()
            if move == "promote":
                store.promote("task", 2, reason="live test")
            else:
                store.rollback("task", reason="live test")
            timeline.append((before, time.monotonic(), store.aliases("task")["production"]))
        last = time.monotonic()
        time.sleep(3.0)
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    assert timeline[-1][2] == 1 and {v for _, _, v in timeline} == {1, 2}

    def production_during(t0: float, t1: float) -> set[int]:
        # a version was production from no earlier than its move began until no later than the next one returned
        ends = [after for _, after, _ in timeline[1:]] + [float("inf")]
        return {v for (start, _, v), end in zip(timeline, ends) if start <= t1 and end >= t0}

    seen = set()
    for t0, t1, fingerprint in results:
        version = int(fingerprint.rsplit("task@", 1)[1])
        seen.add(version)
        assert version in production_during(t0, t1), (fingerprint, t0, t1, timeline)
        if t0 > last + 2.0:
            assert version == 1
    assert seen == {1, 2} and sum(t0 > last + 2.0 for t0, _, _ in results) > 0


def test_tampered_version_is_refused_and_the_last_good_stack_serves(server):
    store = server.registry
    weights = store.get("task", 3).path / WEIGHTS_FILE
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    store.promote("task", 3, reason="tamper test")
    try:
        deadline = time.monotonic() + 5
        while server.ready()["status"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = server.ready()
        assert ready["status"] == "degraded"
        assert any("task@3" in p and "refused" in p for p in ready["problems"]), ready
        answer = server.client.chat.completions.create(
            model=FULL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert answer.system_fingerprint.endswith("+domain@1+task@1")
        model = {m.id: m for m in server.client.models.list().data}[FULL]
        assert model.status == "degraded" and "task@3" in model.problem and model.versions == ["domain@1", "task@1"]
    finally:
        store.rollback("task", reason="tamper test over")
    deadline = time.monotonic() + 2
    while server.ready()["status"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.ready()["status"] == "ready"


# ----------------------------------------------------------------- capacity, disconnects, crashes

LONG = 600  # tokens a long stream asks for: seconds of decoding on the tiny base, so a freed slot shows


@pytest.fixture(scope="module")
def small(server):
    """A second server on the same run and store with room for two requests, decoded one at a time."""
    args = [
        "--run", str(server.run), "--poll", "0.2", "--max-queue", "2", "--max-batch", "1",
        "--max-tokens", str(LONG), "--log", str(server.tmp / "small.jsonl"), "--no-default-stacks",
        "--stack", f"{FULL}=domain@production+task@production",
    ]  # fmt: skip
    proc = ServerProcess(args, server.tmp / "small.log", threads=1)
    try:
        yield proc.start(START_TIMEOUT_S)
    finally:
        proc.stop()


def _open_stream(url: str, eos: int) -> tuple[httpx.Client, httpx.Response, Iterator[str]]:
    """A streaming chat request of LONG tokens, its first event read; the caller closes it.

    EOS is banned (logit_bias), so the stream decodes for seconds whatever the base would answer: a
    tiny base rebuilt by newer libraries ended "hi" after 10 tokens, and the queue emptied early.
    The line iterator is returned to be kept: dropping it closes the connection (httpx closes the
    stream of a response it has not read to the end)."""
    http = httpx.Client(base_url=url, timeout=60)
    body = {
        "model": FULL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": LONG,
        "stream": True,
        "logit_bias": {str(eos): -100},
    }
    response = http.send(http.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    next(lines)
    return http, response, lines


def _queued(url: str) -> int:
    return httpx.get(f"{url}/ready", timeout=10).json()["queued"]


def test_a_full_queue_answers_429_and_a_gone_stream_frees_its_slot(small, reference):
    eos = reference[1].eos_token_id
    first = _open_stream(small.url, eos)  # decoding (one request at a time on this server)
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(_open_stream, small.url, eos)  # waits in the queue: it answers once it decodes
        try:
            deadline = time.monotonic() + 10
            while _queued(small.url) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _queued(small.url) == 2
            refused = httpx.post(
                f"{small.url}/v1/chat/completions",
                json={"model": FULL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                timeout=30,
            )
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            client = openai.OpenAI(base_url=f"{small.url}/v1", api_key="x", max_retries=0, timeout=30)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=FULL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        finally:
            closed = time.monotonic()
            for opened in (first, None):  # the second starts decoding (and answers) once the first is gone
                http, response, _ = opened or second.result(60)
                response.close()
                http.close()
    while _queued(small.url) and time.monotonic() < closed + 20:
        time.sleep(0.05)
    assert _queued(small.url) == 0
    records = [json.loads(line) for line in (small.output.parent / "small.jsonl").read_text().splitlines()]
    assert [r["error"] for r in records if r["status"] == 499] == ["client disconnected"] * 2
    # Both stopped decoding when their client went away, long before their LONG tokens.
    stopped = [int(n) for n in re.findall(r"cancelled after (\d+) of 600 tokens", small.log_tail(100_000))]
    assert len(stopped) == 2 and max(stopped) < LONG, stopped
    answer = openai.OpenAI(base_url=f"{small.url}/v1", api_key="x", max_retries=0, timeout=30)
    assert answer.chat.completions.create(model=FULL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)


def test_killed_mid_stream_it_restarts_on_the_aliases_of_that_moment(small, server, reference):
    store = server.registry
    http, response, lines = _open_stream(small.url, reference[1].eos_token_id)
    small.kill()  # SIGKILL while the stream is being decoded
    with pytest.raises(httpx.HTTPError):
        for _ in lines:
            pass
    http.close()
    store.promote("task", 2, reason="moved while the server was down")
    try:
        small.start(START_TIMEOUT_S)
        client = openai.OpenAI(base_url=f"{small.url}/v1", api_key="x", max_retries=0, timeout=30)
        (model,) = client.models.list().data
        assert model.versions == ["domain@1", "task@2"] and model.status == "ok"
        answer = client.chat.completions.create(model=FULL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        assert answer.system_fingerprint.endswith("+domain@1+task@2")
    finally:
        store.rollback("task", reason="restart test over")
    # The kill left the store whole (the tamper test damages task@3's weights on purpose).
    assert [str(p) for p in store.verify() if (p.adapter, p.version) != ("task", 3)] == []
