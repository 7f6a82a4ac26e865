"""``modft serve --engine vllm``: the server's API and store-following, with a running vLLM decoding.

The front (this process) is the embedded server less its decoding: it renders prompts, follows the
store's aliases through the one checked loader (hashes, base identity, parents: ``AdapterStack.use``),
keeps the operators' switches and names the versions of every answer. vLLM (another process, started
with the launch line ``modft export --target vllm`` printed) decodes, batching continuously.

Each set of versions a stack can serve (its versions, and the fallbacks an operator's switch-off can
reach: every subset that keeps each adapter's parent) is exported once as one pure-LoRA ``cat``
adapter (``targets.export_vllm_adapter``) into a folder of its own, named after the versions
(``domain@1+task@2``), and loaded into vLLM at runtime under that name (``/v1/load_lora_adapter``;
vLLM must run with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). All of it happens before the stack
switches: a request never waits for an export, and a version vLLM refuses leaves the stack on its last
good versions, degraded with vLLM's reason, as the embedded server does for a failed check.

Version sets one alias move away are prepared the same way while the front idles: each stack with one
adapter replaced by the version another alias names (a ``candidate``), and the set it served before
its last switch (what a rollback returns to). A promotion of a prepared candidate, and a rollback, then
only switch the name requests go to.

A name always means the same weights (versions never change), so vLLM's prefix cache, which keys
cached blocks by adapter name and path, cannot serve blocks of other weights; the front still asks
vLLM to drop its prefix cache on every switch (``/reset_prefix_cache``, offered when vLLM runs with
``VLLM_SERVER_DEV_MODE=1``) and records the answer in the switch's audit note. A request in flight
keeps the adapter it started on; an adapter no stack can reach any more is unloaded once its last
request ends.

What vLLM cannot take is refused before anything switches, with the reason: an adapter its lint
rejects (``targets.lint``), and token rows of a vocabulary-extended domain adapter that differ from
the rows the engine's base holds (they live in the base's embeddings: a new domain version that
trains other rows needs a new base export and a vLLM restart).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors import safe_open

from modft_utils.errors import ModftError
from modft_utils.serve import targets
from modft_utils.serve.engine import Engine, Job, Loaded, ServeError, StackState, _key
from modft_utils.serve.export import EXPORT_RECORD
from modft_utils.serve.stacks import StackSpec, identity
from modft_utils.store import AdapterVersion, Registry

log = logging.getLogger("modft.serve")

PROBE_NAME = "modft-probe-not-loaded"  # unloaded to learn whether vLLM offers the runtime LoRA routes


class EngineError(ServeError):
    """The vLLM process cannot be used as asked: not reachable, another base, no runtime LoRA routes (503)."""

    status = 503
    code = "engine_unavailable"


class EngineRefused(ModftError, RuntimeError):
    """A version set vLLM cannot serve (its lint, its token rows, or vLLM's own refusal to load it)."""


class EngineUnreachable(OSError):
    """vLLM did not answer; the next sync tries again."""


def label(key: Sequence[tuple[str, int]]) -> str:
    """``domain@1+task@2``: a version set's name in vLLM and its export folder's name."""
    return "+".join(f"{n}@{v}" for n, v in key)


def fallback_sets(versions: Sequence[AdapterVersion]) -> list[tuple[AdapterVersion, ...]]:
    """Every subset of ``versions`` (stack order kept) in which each adapter's parent, when the stack holds
    that adapter's parent's name, is present too: what the stack can serve as operators switch adapters
    off (``Engine.set_disabled`` refuses to leave a child without its parent). The full set comes first."""
    names = {v.name for v in versions}
    out = []
    for size in range(len(versions), -1, -1):
        for subset in combinations(versions, size):
            held = {v.name for v in subset}
            parents = [v.manifest.parent for v in subset if v.manifest.parent is not None]
            if all(p.name in held or p.name not in names for p in parents):
                out.append(subset)
    return out


class VllmEngine(Engine):
    """An :class:`Engine` whose decoding runs in a vLLM OpenAI server at ``engine_url``.

    Args:
        loader: loads the base the adapters are checked and exported against (the 4-bit base, as the
            embedded server's loader does): the stack check needs it, and PEFT's ``cat`` runs on it.
        registry: the store whose aliases the stacks follow.
        specs: the named stacks to serve.
        engine_url: the vLLM server, e.g. ``http://127.0.0.1:8001``.
        engine_export: the ``modft export --target vllm`` folder whose ``base/`` that vLLM serves; its
            manifest names the base identity (checked against the loaded base) and the served base name.
        work_dir: where the version sets' adapters are exported (reused across restarts: versions never
            change, and each folder is written whole).
        actor: who the audit notes of switches name.
        max_queue: the most requests waiting or decoding at once; then 429.
        poll_s: how often an idle front reads the store's aliases (and checks that vLLM answers).
        connect_wait_s: how long the front waits for vLLM to answer at start (vLLM takes a minute or more).
        request_timeout_s: the longest a request may take in vLLM.
    """

    def __init__(
        self,
        loader: Callable[[], Loaded],
        registry: Registry,
        specs: Sequence[StackSpec],
        *,
        engine_url: str,
        engine_export: str | Path,
        work_dir: str | Path,
        actor: str | None = None,
        max_queue: int = 64,
        poll_s: float = 0.5,
        connect_wait_s: float = 600.0,
        request_timeout_s: float = 300.0,
    ) -> None:
        super().__init__(
            self._checked(loader), registry, specs, max_batch=max_queue, batch_wait_s=0.0, max_queue=max_queue,
            poll_s=poll_s,
        )  # fmt: skip
        self.url = engine_url.rstrip("/")
        self.export_dir = Path(engine_export)
        self.work_dir = Path(work_dir)
        self.actor = actor
        self.connect_wait_s = connect_wait_s
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(request_timeout_s, connect=5.0))
        self.pool = ThreadPoolExecutor(max_queue, thread_name_prefix="modft-vllm")
        self.manifest: dict[str, Any] = {}
        self.base_model = "base"
        self.loras: dict[tuple[tuple[str, int], ...], str] = {}  # version set -> its adapter name in vLLM
        self._users: Counter[str] = Counter()  # requests in flight per adapter name
        self._users_lock = threading.Lock()
        self.engine_problem: str | None = None
        self._last_ping = 0.0
        self.switches: list[dict[str, Any]] = []  # what each switch did in vLLM, as its audit note says
        self._previous: dict[str, tuple[AdapterVersion, ...]] = {}  # stack -> what it served before its last switch
        self._unpreparable: dict[tuple[tuple[str, int], ...], str] = {}  # candidates that failed, and why

    # ----------------------------------------------------------------- start

    def _checked(self, loader: Callable[[], Loaded]) -> Callable[[], Loaded]:
        def load() -> Loaded:
            self._connect()
            loaded = loader()
            exported = self.manifest.get("base_identity")
            if exported != asdict(loaded.base):
                raise EngineError(
                    f"{self.export_dir} was exported from another base than this run's "
                    f"({(exported or {}).get('config_sha256', '?')[:8]} vs {loaded.base.config_sha256[:8]}): "
                    "export this run's stack with `modft export --target vllm` and serve that"
                )
            loaded.describe += f"; decoding in vLLM at {self.url} ({self.export_dir / 'base'})"
            return loaded

        return load

    def _connect(self) -> None:
        """Read the export's manifest, wait for vLLM, check it serves that base and offers runtime LoRA loads."""
        path = self.export_dir / EXPORT_RECORD
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise EngineError(
                f"--engine-export {self.export_dir}: cannot read {EXPORT_RECORD} ({err}); "
                "give the folder `modft export --target vllm` wrote"
            ) from None
        if self.manifest.get("kind") != "vllm":
            raise EngineError(f"--engine-export {self.export_dir} is a {self.manifest.get('kind')!r} export, not vllm")
        launch = self.manifest.get("launch", [])
        if "--served-model-name" in launch:
            self.base_model = launch[launch.index("--served-model-name") + 1]
        deadline = time.monotonic() + self.connect_wait_s
        while True:
            try:
                if self.http.get("/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(f"vLLM at {self.url} did not answer /health within {self.connect_wait_s:g} s")
            time.sleep(1.0)
        models = self.http.get("/v1/models").json().get("data", [])
        base = next((m for m in models if m.get("id") == self.base_model), None)
        want = (self.export_dir / "base").resolve()
        if base is None or Path(str(base.get("root", ""))).resolve() != want:
            served = {m.get("id"): m.get("root") for m in models if not m.get("parent")}
            raise EngineError(
                f"vLLM at {self.url} serves {served}, not the export's base {want} as {self.base_model!r}"
            )
        probe = self.http.post("/v1/unload_lora_adapter", json={"lora_name": PROBE_NAME})
        if "error" not in _json(probe):  # FastAPI's own 404: the routes are not there
            raise EngineError(
                f"vLLM at {self.url} does not offer runtime adapter loads: start it with "
                f"{' '.join(f'{k}={v}' for k, v in targets.VLLM_LAUNCH_ENV.items())} and --enable-lora"
            )

    # ----------------------------------------------------------------- following the store

    def sync(self) -> None:
        super().sync()
        candidates = self._candidates()  # read once per sync: it reads the store (sync runs per dispatch)
        self._prepare_candidates(candidates)
        self._unload_unreachable(candidates)
        now = time.monotonic()
        if now - self._last_ping >= self.poll_s:
            self._last_ping = now
            try:
                ok = self.http.get("/health", timeout=5).status_code == 200
                problem = None if ok else "vLLM's /health does not answer 200"
            except httpx.HTTPError as err:
                problem = f"vLLM at {self.url} does not answer: {type(err).__name__}: {err}"
            if problem != self.engine_problem:
                (log.warning if problem else log.info)("engine: %s", problem or f"vLLM at {self.url} answers again")
            self.engine_problem = problem

    def _adopt(self, state: StackState, versions: tuple[AdapterVersion, ...]) -> None:
        for subset in fallback_sets(versions):
            self._ensure_loaded(subset)

    def _ensure_loaded(self, versions: tuple[AdapterVersion, ...]) -> str:
        """The adapter name in vLLM of ``versions`` (the base's name for none): exported and loaded if need be."""
        key = _key(versions)
        if not key:
            return self.base_model
        if key in self.loras:
            return self.loras[key]
        name = label(key)
        folder = self._export(versions, name)
        try:
            r = self.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)})
        except httpx.HTTPError as err:
            raise EngineUnreachable(f"vLLM at {self.url}: {type(err).__name__}: {err}") from None
        if r.status_code != 200 and "already been loaded" not in _message(r):
            raise EngineRefused(f"vLLM refused to load {name} ({r.status_code}): {_message(r)}")
        self._warm(name)
        self.loras[key] = name
        log.info("loaded %s into vLLM from %s", name, folder)
        return name

    def _warm(self, name: str) -> None:
        """One 1-token completion on adapter ``name``: vLLM reads an adapter's weights into its workers on
        the first request that uses it, which would otherwise fall on the first request after a move."""
        assert self.loaded is not None
        tok = self.loaded.tokenizer
        token = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        body = {"model": name, "prompt": [int(token)], "max_tokens": 1, "temperature": 0.0}
        try:
            r = self.http.post("/v1/completions", json=body)
        except httpx.HTTPError as err:
            raise EngineUnreachable(f"vLLM at {self.url}: {type(err).__name__}: {err}") from None
        if r.status_code != 200:
            raise EngineRefused(f"vLLM loaded {name} but cannot run it ({r.status_code}): {_message(r)}")

    def _export(self, versions: tuple[AdapterVersion, ...], name: str) -> Path:
        """Export ``versions`` as one adapter into ``work_dir/<name>`` (once: the folder is reused after)."""
        folder = self.work_dir / name
        record = folder / EXPORT_RECORD
        refs = [{"ref": f"{v.name}@{v.version}", "manifest_sha256": v.manifest_sha256} for v in versions]
        if record.is_file() and json.loads(record.read_text(encoding="utf-8")).get("versions") == refs:
            return folder
        assert self.stack is not None
        findings = targets.lint("vllm", {v.name: v.local_copy() for v in versions})
        if findings:
            raise EngineRefused("; ".join(str(f) for f in findings))
        names = self.stack.use(*versions)  # flags only: sync loaded and checked them
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix=f".{name}-") as tmp:
            adapter = targets.export_vllm_adapter(self.stack.model, names, Path(tmp) / "adapter", served_name=name)
            self._check_rows(name, adapter.rows)
            (adapter.path / EXPORT_RECORD).write_text(
                json.dumps({"kind": "vllm-adapter", "versions": refs, "rank": adapter.rank}, indent=2) + "\n",
                encoding="utf-8",
            )
            if folder.exists():
                shutil.rmtree(folder)
            shutil.move(str(adapter.path), folder)
        return folder

    def _check_rows(self, name: str, rows: dict[str, tuple[list[int], torch.Tensor]]) -> None:
        """Refuse token rows that differ from those in the engine's base (where the vLLM export put them)."""
        if not rows:
            return
        weights = sorted((self.export_dir / "base").glob("*.safetensors"))
        for module, (ids, value) in rows.items():
            key = f"{module}.weight"
            held = None
            for path in weights:
                with safe_open(str(path), "pt") as f:
                    if key in f.keys():  # noqa: SIM118 - safe_open has keys(), not __contains__
                        held = f.get_slice(key)[:]
                        break
            if held is None or not torch.equal(held[torch.tensor(ids)], value.to(held.dtype)):
                raise EngineRefused(
                    f"{name} trained rows for {len(ids)} new tokens in {module} that the engine's base "
                    f"({self.export_dir / 'base'}) does not hold: export this stack with `modft export --target vllm` "
                    "and restart vLLM on it"
                )

    def _switched(self, state: StackState, previous: tuple[AdapterVersion, ...] | None) -> None:
        versions = state.versions or ()
        changed = [v for v in versions if previous is None or v not in previous]
        cache = self._reset_prefix_cache()
        note = {
            "stack": state.spec.name,
            "versions": [f"{v.name}@{v.version}" for v in versions],
            "was": [f"{v.name}@{v.version}" for v in previous] if previous is not None else None,
            "engine": self.url,
            "engine_adapter": self.loras.get(_key(versions), self.base_model),
            "prefix_cache": cache,
        }
        self.switches.append(note)
        if previous:
            self._previous[state.spec.name] = previous
        reason = "serving started" if previous is None else "the store's alias moved"
        for v in changed:
            try:
                self.registry.note(v.name, "engine-switch", reason=reason, actor=self.actor, **note)
            except (ModftError, OSError) as err:  # the switch is made; a store that refuses the note is reported
                log.error("the switch of stack %r to %s is not audited: %s", state.spec.name, note["versions"], err)

    def _reset_prefix_cache(self) -> str:
        try:
            r = self.http.post("/reset_prefix_cache")
        except httpx.HTTPError as err:
            return f"not reset: {type(err).__name__}: {err}"
        if r.status_code == 200:
            return "reset"
        if r.status_code == 404:
            return (
                "not offered (vLLM runs without VLLM_SERVER_DEV_MODE=1); not needed: vLLM keys cached blocks by "
                "adapter name and path, and each version set has its own"
            )
        return f"not reset: {r.status_code} {_message(r)}"

    def _candidates(self) -> list[tuple[AdapterVersion, ...]]:
        """Version sets one alias move away: each stack with one adapter replaced by the version another of
        that adapter's aliases names (``candidate``, or the version a rollback returns to), where every
        parent in the set is the version its child was trained on."""
        out = []
        for state in self.states.values():
            for i, current in enumerate(state.versions or ()):
                try:
                    numbers = set(self.registry.aliases(current.name).values()) - {current.version}
                except ModftError:
                    continue
                for number in sorted(numbers):
                    try:
                        other = self.registry.get(current.name, number)
                    except ModftError:
                        continue
                    versions = (*state.versions[:i], other, *state.versions[i + 1 :])
                    held = {v.name: v for v in versions}
                    parents = [v.manifest.parent for v in versions if v.manifest.parent is not None]
                    if all(p.name not in held or held[p.name].ref == p for p in parents):
                        out.append(versions)
        return out

    def _prepare_candidates(self, candidates: list[tuple[AdapterVersion, ...]]) -> None:
        """Check, export and load the candidates ahead of their promotion, so a move only switches names.

        One that cannot be prepared is tried again only when it is promoted (then the stack says why)."""
        assert self.stack is not None
        for versions in candidates:
            key = _key(versions)
            if key in self.loras or key in self._unpreparable:
                continue
            try:
                self.stack.use(*versions)
                self._ensure_loaded(versions)
                log.info("prepared %s in vLLM ahead of a move", label(key))
            except (ModftError, OSError) as err:
                self._unpreparable[key] = str(err)
                log.info("cannot prepare %s ahead of a move: %s", label(key), err)

    def _unload_unreachable(self, candidates: list[tuple[AdapterVersion, ...]]) -> None:
        """Unload adapters no stack can serve now, none of a move's candidates, no stack's previous set (a
        rollback is the move that must be fastest) and no request is using."""
        kept = [st.versions for st in self.states.values() if st.versions] + list(self._previous.values())
        reachable = {_key(s) for versions in kept for s in fallback_sets(versions)}
        reachable |= {_key(c) for c in candidates}
        for key, name in list(self.loras.items()):
            with self._users_lock:
                if key in reachable or self._users[name]:
                    continue
            try:
                r = self.http.post("/v1/unload_lora_adapter", json={"lora_name": name})
            except httpx.HTTPError:
                return  # vLLM is away: the next sync tries again
            if r.status_code in (200, 404):
                del self.loras[key]
                log.info("unloaded %s from vLLM (no stack serves it)", name)

    # ----------------------------------------------------------------- requests

    def submit(self, job: Job) -> None:
        if self.status == "ready" and self.engine_problem:
            raise EngineError(f"the engine does not answer: {self.engine_problem}")
        super().submit(job)

    def _decode_batch(self, jobs: list[Job]) -> None:
        """Hand each job to vLLM on a thread of its own (vLLM batches them); returns at once."""
        assert self.loaded is not None
        for job in jobs:
            state = self.states[job.stack]
            with self._lock:
                served = state.served
            key = _key(served)
            name = self.loras.get(key) if key else self.base_model
            if name is None:  # only a version set sync could not load: the stack says why
                job.deliver(("error", f"{label(key)} is not loaded in vLLM: {state.problem or 'not yet'}"))
                self._release()
                continue
            job.deliver(("start", identity(self.loaded.base, key), [f"{n}@{v}" for n, v in key], len(jobs)))
            with self._users_lock:
                self._users[name] += 1
            self.pool.submit(self._forward, job, name)
        self.batches += 1

    def _forward(self, job: Job, model: str) -> None:
        """One completion in vLLM (greedy, the job's token ids as the prompt), streamed back as events."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": job.prompt_ids,
            "max_tokens": job.max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if job.stop:
            body["stop"] = list(job.stop)
        text, reason, tokens = "", None, None
        try:
            with self.http.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    job.deliver(("error", f"vLLM answered {r.status_code}: {_message(r)}"))
                    return
                for line in r.iter_lines():
                    if job.cancelled.is_set():  # closing the stream makes vLLM abort the request
                        log.info("a %r request was cancelled after %d characters", job.stack, len(text))
                        return
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"].get("completion_tokens")
                    for choice in chunk.get("choices") or ():
                        piece = choice.get("text") or ""
                        if piece:
                            text += piece
                            if job.stream:
                                job.deliver(("delta", piece))
                        reason = choice.get("finish_reason") or reason
            job.deliver(("done", text, reason or "length", int(tokens or 0)))
        except (httpx.HTTPError, ValueError) as err:
            job.deliver(("error", f"vLLM at {self.url} failed mid-request: {type(err).__name__}: {err}"))
        finally:
            with self._users_lock:
                self._users[model] -= 1
            self._release()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(r: httpx.Response) -> str:
    body = _json(r)
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message", error))[:500]
    return str(body.get("detail") or error or r.text)[:500]


__all__ = ["EngineError", "EngineRefused", "VllmEngine", "fallback_sets", "label"]
