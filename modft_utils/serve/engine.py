"""The model worker: one thread owns the loaded base, its adapters and every decode step.

HTTP handlers never touch the model. They :meth:`Engine.submit` a :class:`Job` (prompt token ids,
limits, the stack asked for) and read its events; the worker thread

1. waits for jobs, then collects more for a bounded time (up to ``max_batch`` jobs, while they keep
   arriving within a window of each other: ``batch_wait_s``, or right after a batch up to 5% of its
   time; at most ten windows),
2. reads the store's aliases (:meth:`Engine.sync`): a stack whose alias moved gets the newly named
   version, loaded through :meth:`AdapterStack.use <modft_utils.adapters.AdapterStack.use>` (hashes,
   base identity, parent checked); a version that fails a check is refused, remembered, and the stack
   keeps serving its last good versions, marked degraded with the reason,
3. decodes the jobs of each stack together (greedy, left-padded, one ``generate`` call per stack group),
   switching stacks by flags only (``AdapterStack.use``: no copies, no reloads).

Because the aliases are read after a batch is collected and before it runs, and switches happen only
between batches, a job runs on versions the store named at a moment after it arrived, and a job in
flight finishes on the versions it started with. While idle the worker still syncs every ``poll_s``,
so ``/v1/models`` and ``/ready`` follow the store without traffic.

The queue is bounded (``max_queue`` jobs waiting or decoding): over it :meth:`submit` raises
:class:`Busy`. A cancelled job (a streaming client that went away) is dropped while waiting, or
stops decoding at its next step, and its slot is free from then on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from modft_utils.adapters import AdapterStack
from modft_utils.data import PromptFormat
from modft_utils.errors import ModftError
from modft_utils.serve.stacks import StackSpec, identity
from modft_utils.store import AdapterVersion, BaseIdentity, Registry

log = logging.getLogger("modft.serve")


class ServeError(ModftError, RuntimeError):
    """A request the engine cannot take now; ``status`` is the HTTP status it answers with."""

    status = 500
    code: str | None = None


class Busy(ServeError):
    """The queue is full: try again shortly (429 with Retry-After)."""

    status = 429
    code = "rate_limit_exceeded"


class NotReady(ServeError):
    """The base is still loading, or failed to load (503)."""

    status = 503
    code = "not_ready"


class UnknownStack(ServeError):
    """A ``model`` that names no stack (404)."""

    status = 404
    code = "model_not_found"


@dataclass
class Loaded:
    """What the worker serves: the base (a PeftModel once an adapter is in), its tokenizer and identity.

    ``window`` is the model's context length in tokens; ``fmt`` renders chat prompts as training did.
    """

    model: Any
    tokenizer: Any
    base: BaseIdentity
    fmt: PromptFormat
    window: int
    describe: str = ""


@dataclass
class Job:
    """One completion: prompt token ids, limits, and where its events go.

    ``deliver`` is called from the worker thread with ``("start", identity, versions, batch_rows)``,
    then (only when ``stream``) ``("delta", text)`` for each piece of text, then
    ``("done", text, finish_reason, completion_tokens)``, or ``("error", message)``. A job that is not
    streamed gets no deltas: every event wakes the HTTP thread, which then competes with the decoding
    thread for the interpreter.
    """

    stack: str
    prompt_ids: list[int]
    max_tokens: int
    deliver: Callable[[tuple], None]
    stop: tuple[str, ...] = ()
    stream: bool = True
    # OpenAI's logit_bias: added to these tokens' logits at every step (-100 bans a token, e.g. EOS)
    logit_bias: dict[int, float] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Stop the job at its next step (or before it starts); its queue slot is freed."""
        self.cancelled.set()


@dataclass
class StackState:
    """A named stack as the worker serves it.

    ``versions`` are the last good versions (None until the stack could be loaded once); ``problem``
    says why the versions the store names now are not the ones served (degraded), or why the stack
    cannot serve at all; ``disabled`` holds adapters switched off by an operator, with the reason.
    """

    spec: StackSpec
    versions: tuple[AdapterVersion, ...] | None = None
    problem: str | None = None
    disabled: dict[str, str] = field(default_factory=dict)

    @property
    def served(self) -> tuple[AdapterVersion, ...]:
        """The versions a request runs on now: the last good ones less the disabled adapters."""
        return tuple(v for v in self.versions or () if v.name not in self.disabled)

    def versions_text(self) -> list[str]:
        return [f"{v.name}@{v.version}" for v in self.served]


def _key(versions: Sequence[AdapterVersion]) -> tuple[tuple[str, int], ...]:
    return tuple((v.name, v.version) for v in versions)


class _Rows(StoppingCriteria):
    """Called by ``generate`` after every decode step: streams each row's new text to its job and says
    which rows are done (EOS, a stop string, its own ``max_tokens``, or cancelled).

    Text is decoded from all of a row's tokens each step (as ``evaluate.generate`` decodes the whole
    continuation), so a character split over two tokens is sent once it is whole.
    """

    def __init__(self, jobs: Sequence[Job], tokenizer, eos_ids: set[int], release: Callable[[], None]):
        self.jobs = list(jobs)
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.release = release
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent: list[str] = ["" for _ in jobs]
        self.done: list[bool] = [False for _ in jobs]
        # Stop strings may arrive split over tokens: hold back what could be the start of one.
        self.holdback = [max((len(s) for s in j.stop), default=1) - 1 for j in jobs]

    def finish(self, i: int, reason: str, text: str | None = None) -> None:
        if self.done[i]:
            return
        self.done[i] = True
        job = self.jobs[i]
        if reason == "cancelled":
            log.info("a %r request was cancelled after %d of %d tokens", job.stack, len(self.tokens[i]), job.max_tokens)
        else:
            if text is not None and text != self.sent[i] and text.startswith(self.sent[i]):
                if job.stream:
                    job.deliver(("delta", text[len(self.sent[i]) :]))
                self.sent[i] = text
            job.deliver(("done", self.sent[i], reason, len(self.tokens[i])))
        self.release()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, -1].tolist()
        for i, job in enumerate(self.jobs):
            if self.done[i]:
                continue
            if job.cancelled.is_set():
                self.finish(i, "cancelled")
                continue
            token = new[i]
            self.tokens[i].append(token)
            if token in self.eos_ids:
                self.finish(i, "stop", self.text(i, eos=True))
                continue
            if not (job.stream or job.stop):  # nothing to look at before the end
                if len(self.tokens[i]) >= job.max_tokens:
                    self.finish(i, "length", self.text(i))
                continue
            text = self.text(i)
            cut = min((p for p in (text.find(s) for s in job.stop) if p >= 0), default=-1)
            if cut >= 0:
                self.finish(i, "stop", text[:cut])
                continue
            if len(self.tokens[i]) >= job.max_tokens:
                self.finish(i, "length", text)
                continue
            if not job.stream:
                continue
            visible = text[: len(text) - self.holdback[i]] if self.holdback[i] else text
            if visible.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                visible = visible[:-1]
            if len(visible) > len(self.sent[i]) and visible.startswith(self.sent[i]):
                job.deliver(("delta", visible[len(self.sent[i]) :]))
                self.sent[i] = visible
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def text(self, i: int, *, eos: bool = False) -> str:
        """Row ``i``'s text so far (without its final EOS token when ``eos``)."""
        tokens = self.tokens[i][:-1] if eos else self.tokens[i]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


class Engine:
    """The worker thread and its bounded queue; see the module docstring.

    Args:
        loader: loads the base (called once, in the worker thread, so the server listens meanwhile).
        registry: the store whose aliases the stacks follow.
        specs: the named stacks to serve.
        max_batch: the most jobs decoded in one batch (over all stacks).
        batch_wait_s: how long an idle worker waits for one more job once one is there (right after a
            batch: up to 5% of that batch's time, at most 100 ms); each arrival extends the wait by as
            much, up to ten times it in all.
        max_queue: the most jobs waiting or decoding; over it :meth:`submit` raises :class:`Busy`.
        poll_s: how often an idle worker reads the store's aliases.
    """

    def __init__(
        self,
        loader: Callable[[], Loaded],
        registry: Registry,
        specs: Sequence[StackSpec],
        *,
        max_batch: int = 8,
        batch_wait_s: float = 0.01,
        max_queue: int = 64,
        poll_s: float = 0.5,
    ) -> None:
        self.loader = loader
        self.registry = registry
        self.states = {s.name: StackState(s) for s in specs}
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.poll_s = poll_s
        self.loaded: Loaded | None = None
        self.stack: AdapterStack | None = None
        self.status = "loading"  # loading, ready, failed
        self.failure: str | None = None
        self._pending: deque[Job] = deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # stack states, read by the HTTP threads
        self._refused: dict[tuple[tuple[str, int], ...], str] = {}  # version sets that failed a check
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modft-serve-worker", daemon=True)
        self.batches = 0  # decoded batches, for the log and measurements
        self._last_batch_end = 0.0  # when the last batch finished (monotonic), and how long it took
        self._last_batch_s = 0.0

    # ----------------------------------------------------------------- life cycle

    def start(self) -> Engine:
        """Start the worker thread; it loads the base first (unless :meth:`load` ran), then decodes.

        Load and decode on the one worker thread: measured on the tiny base (2 CPU cores, torch's
        OpenMP threads), a base loaded on the main thread and decoded on the worker took 0.33-0.37 s per
        16-token request, loaded and decoded on the worker 0.18 s, as fast as a plain ``generate`` loop
        on the main thread. Every thread that runs torch ops keeps a team of OpenMP threads, and two
        teams on two cores compete.
        """
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the base is loaded (True) or failed to load (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status == "loading":
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return self.status == "ready"

    def load(self) -> bool:
        """Load the base and the stacks' versions in the calling thread; True when the engine can serve.

        :meth:`start` calls it on the worker thread, which then decodes (see there why that thread).
        """
        try:
            self.loaded = self.loader()
            self.stack = AdapterStack(self.loaded.model, self.registry, self.loaded.base)
            self.sync()
            self.status = "ready"
            log.info("ready: %s", self.loaded.describe or "base loaded")
        except Exception as err:  # noqa: BLE001 - any failure to load is reported by /ready and the log
            self.failure = f"{type(err).__name__}: {err}" if not isinstance(err, ModftError) else str(err)
            self.status = "failed"
            log.error("cannot serve: %s", self.failure)
            self._fail_pending(self.failure)
        return self.status == "ready"

    def _run(self) -> None:
        if self.loaded is None and not self.load():  # on this thread: see start()
            return
        while not self._stop.is_set():
            jobs = self._collect()
            try:
                self.sync()
            except Exception as err:  # noqa: BLE001 - a store that cannot be read must not stop serving
                log.warning("store sync failed: %s: %s", type(err).__name__, err)
            if jobs:
                self._decode_batch(jobs)

    def _fail_pending(self, message: str) -> None:
        with self._cond:
            jobs, self._pending = list(self._pending), deque()
        for job in jobs:
            job.deliver(("error", message))

    # ----------------------------------------------------------------- queue

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`NotReady`, :class:`UnknownStack` or :class:`Busy` instead."""
        if self.status != "ready":
            raise NotReady(self.failure or "the base is still loading: retry once /ready says ready")
        with self._lock:
            state = self.states.get(job.stack)
            if state is None:
                raise UnknownStack(f"the model {job.stack!r} does not exist: serving {sorted(self.states)}")
            if state.versions is None:
                raise UnknownStack(f"the model {job.stack!r} cannot be served now: {state.problem}")
        with self._cond:
            if len(self._pending) + self._inflight >= self.max_queue:
                raise Busy(f"the server is at capacity ({self.max_queue} requests in the queue): retry shortly")
            self._pending.append(job)
            self._inflight += 1  # a slot is held from submit until the job finishes or is dropped
            self._cond.notify()

    def _release(self) -> None:
        with self._cond:
            self._inflight -= 1

    @property
    def queued(self) -> int:
        """Jobs waiting or decoding."""
        return self._inflight

    def _collect(self) -> list[Job]:
        with self._cond:
            if not self._pending:
                self._cond.wait(self.poll_s)
            if not self._pending or self._stop.is_set():
                return []
            # Clients answered together come back spread over tens of ms (measured with 8 openai clients
            # in one process), so a fixed 10 ms window split SmolLM2's batches of 8 into 2+6, 4+4, ...
            # and cost a third of the throughput. Right after a batch the worker waits for the refill up
            # to 5% of that batch's time (at most 100 ms), each arrival giving the next one as long
            # again; a request reaching an idle worker waits batch_wait_s.
            now = time.monotonic()
            window = self.batch_wait_s
            if now - self._last_batch_end < 1.0:
                window = max(window, min(0.1, 0.05 * self._last_batch_s))
            deadline = now + window
            seen = len(self._pending)
            while len(self._pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
                if len(self._pending) > seen:
                    seen = len(self._pending)
                    deadline = min(time.monotonic() + window, now + 10 * window)
            jobs = []
            while self._pending and len(jobs) < self.max_batch:
                job = self._pending.popleft()
                if job.cancelled.is_set():
                    self._inflight -= 1  # a client gone before its turn: its slot is free
                    continue
                jobs.append(job)
            return jobs

    # ----------------------------------------------------------------- following the store

    def sync(self) -> None:
        """Read the aliases of every adapter the stacks follow; switch a stack whose alias moved.

        A new version is loaded and its stack checked (hashes, base identity, parent) through
        ``AdapterStack.use``; a version set that fails is refused for good (versions never change), and
        its stack keeps its last good versions with ``problem`` saying why.
        """
        assert self.stack is not None
        names = sorted({n for st in self.states.values() for n in st.spec.adapter_names})
        aliases: dict[str, dict[str, int]] = {}
        unreadable: dict[str, str] = {}
        for name in names:
            try:
                aliases[name] = self.registry.aliases(name)
            except ModftError as err:
                unreadable[name] = str(err)
        for state in self.states.values():
            self._sync_stack(state, aliases, unreadable)

    def _sync_stack(self, state: StackState, aliases: dict[str, dict[str, int]], unreadable: dict[str, str]) -> None:
        wanted: list[tuple[str, int]] = []
        for ref in state.spec.refs:
            name, _, selector = ref.partition("@")
            if selector.isdigit():
                wanted.append((name, int(selector)))
            elif name in unreadable:
                return self._set_problem(state, f"cannot read the aliases of {name!r}: {unreadable[name]}")
            elif selector in aliases.get(name, {}):
                wanted.append((name, aliases[name][selector]))
            else:
                return self._set_problem(state, f"adapter {name!r} has no {selector!r} alias in {self.registry.uri}")
        key = tuple(wanted)
        if state.versions is not None and _key(state.versions) == key:
            return self._set_problem(state, None)
        if key in self._refused:
            return self._set_problem(state, self._refused[key])
        label = "+".join(f"{n}@{v}" for n, v in key) or "the bare base"
        try:
            versions = tuple(
                self.registry.resolve(ref) if not ref.partition("@")[2].isdigit() else self.registry.get(n, v)
                for ref, (n, v) in zip(state.spec.refs, key)
            )
            assert self.stack is not None
            self.stack.use(*versions)  # loads what is new (checked) and checks parents; flags only otherwise
            self._adopt(state, versions)
        except ModftError as err:
            reason = f"{label} refused: {err}"
            self._refused[key] = reason
            log.warning("stack %r: %s; still serving %s", state.spec.name, reason, self._served_label(state))
            return self._set_problem(state, reason)
        except OSError as err:  # a store that cannot be read now: try again at the next sync
            return self._set_problem(state, f"cannot load {label}: {err}")
        before, previous = self._served_label(state), state.versions
        with self._lock:
            state.versions = versions
            state.problem = None
        log.info("stack %r serves %s (was %s)", state.spec.name, self._served_label(state), before)
        self._switched(state, previous)

    def _adopt(self, state: StackState, versions: tuple[AdapterVersion, ...]) -> None:
        """Make ``versions`` servable for ``state`` before the stack switches to them (raise ModftError to
        refuse them, OSError to try again at the next sync). The embedded engine needs nothing more than
        ``AdapterStack.use``; an engine that drives another server exports and loads them there."""

    def _switched(self, state: StackState, previous: tuple[AdapterVersion, ...] | None) -> None:
        """Called once ``state`` serves new versions (``previous``: what it served before, None at start)."""

    def _set_problem(self, state: StackState, problem: str | None) -> None:
        if problem != state.problem and problem is not None and state.versions is None:
            log.warning("stack %r cannot be served: %s", state.spec.name, problem)
        with self._lock:
            state.problem = problem

    def _served_label(self, state: StackState) -> str:
        if state.versions is None:
            return "nothing"
        assert self.loaded is not None
        return identity(self.loaded.base, _key(state.served))

    # ----------------------------------------------------------------- reporting

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each stack: identity and versions served now, status (ok, degraded, unavailable, disabled) and why."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for name, st in self.states.items():
                if st.versions is None:
                    status = "unavailable"
                elif st.problem:
                    status = "degraded"
                else:
                    status = "ok"
                out[name] = {
                    "refs": list(st.spec.refs),
                    "status": status,
                    "problem": st.problem,
                    "stack": self._served_label(st) if self.loaded is not None else None,
                    "versions": st.versions_text(),
                    "disabled": dict(st.disabled),
                }
        return out

    # ----------------------------------------------------------------- operators

    def set_disabled(self, stack: str, adapter: str, reason: str | None) -> AdapterVersion:
        """Switch ``adapter`` of ``stack`` off (``reason`` given) or back on (None) from the next batch on.

        Returns the version concerned. Refuses (ServeError 409) an adapter the stack does not run, or
        one another active adapter was trained on (switching the domain off under its task would run
        the task on a base it was not trained on).
        """
        with self._lock:
            state = self.states.get(stack)
            if state is None:
                raise UnknownStack(f"no stack {stack!r}: serving {sorted(self.states)}")
            version = next((v for v in state.versions or () if v.name == adapter), None)
            if version is None:
                raise Conflict(f"stack {stack!r} runs no {adapter!r} adapter (it runs {state.versions_text()})")
            if reason is not None:
                dependent = [
                    f"{v.name}@{v.version}"
                    for v in state.served
                    if v.manifest.parent is not None and v.manifest.parent.name == adapter
                ]
                if dependent:
                    raise Conflict(
                        f"{dependent[0]} was trained on {adapter!r}: switch it off first, or it would run without its parent"
                    )
                state.disabled[adapter] = reason
            else:
                parent = version.manifest.parent
                if parent is not None and parent.name in state.disabled:
                    raise Conflict(f"{adapter}@{version.version} needs {parent.name!r}, which is switched off")
                state.disabled.pop(adapter, None)
        return version

    # ----------------------------------------------------------------- decoding

    def _decode_batch(self, jobs: list[Job]) -> None:
        assert self.loaded is not None
        tok = self.loaded.tokenizer
        eos = tok.eos_token_id
        eos_ids = set(eos) if isinstance(eos, list) else {eos}
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.stack, []).append(job)
        started = time.monotonic()
        for name, group in groups.items():
            rows = _Rows(group, tok, eos_ids, self._release)
            try:
                self._decode(self.states[name], rows)
            except Exception as err:  # noqa: BLE001 - one failed batch answers 500 to its requests; serving goes on
                log.exception("stack %r: a batch of %d failed", name, len(group))
                for i, job in enumerate(group):
                    if not rows.done[i]:
                        rows.done[i] = True
                        job.deliver(("error", f"{type(err).__name__}: {err}"))
                        self._release()
            self.batches += 1
        self._last_batch_end = time.monotonic()
        self._last_batch_s = self._last_batch_end - started

    @torch.no_grad()
    def _decode(self, state: StackState, rows: _Rows) -> None:
        """Decode ``rows.jobs`` (all on ``state``) together: one greedy ``generate`` over left-padded rows."""
        loaded, stack, jobs = self.loaded, self.stack, rows.jobs
        assert loaded is not None and stack is not None
        with self._lock:
            served = state.served
        stack.use(*served)  # flags only: every version here was loaded and checked by sync
        ident = identity(loaded.base, _key(served))
        versions = [f"{v.name}@{v.version}" for v in served]
        for job in jobs:
            job.deliver(("start", ident, versions, len(jobs)))
        tok = loaded.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for r, job in enumerate(jobs):  # left padding, positions from the mask, as evaluate.generate lays rows out
            ids[r, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids, dtype=torch.long)
            mask[r, width - len(job.prompt_ids) :] = 1
        device = next(stack.model.parameters()).device
        stack.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max(j.max_tokens for j in jobs),
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
            stopping_criteria=StoppingCriteriaList([rows]),
            logits_processor=_bias_processor(jobs),
        )
        for i in range(len(jobs)):  # generate ran all of max_new_tokens with a row still open
            if not rows.done[i]:
                rows.finish(i, "length", rows.text(i))


def _bias_processor(jobs: Sequence[Job]):
    """Each row's ``logit_bias`` as one logits processor, or None when no job asks for one."""
    from transformers import LogitsProcessor, LogitsProcessorList

    if not any(j.logit_bias for j in jobs):
        return None

    class RowBias(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            bias = torch.zeros_like(scores)
            for r, job in enumerate(jobs):
                for token, value in job.logit_bias.items():
                    bias[r, token] = value
            return scores + bias

    return LogitsProcessorList([RowBias()])


class Conflict(ServeError):
    """An operator action that would leave a stack inconsistent (409)."""

    status = 409
    code = "conflict"
