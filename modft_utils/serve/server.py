"""The OpenAI-compatible HTTP API over the :class:`~modft_utils.serve.engine.Engine` (FastAPI).

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both with ``stream: true`` as
server-sent events, ``data: {chunk}`` ... ``data: [DONE]``), ``GET /v1/models``, ``GET /health``
(the process answers), ``GET /ready`` (the base is loaded and stacks serve; ``degraded`` says which
do not serve what the store names, and why) and, only when an admin token is configured,
``POST /admin/stacks/{name}/disable`` and ``/enable``.

Chat prompts are rendered by :func:`modft_utils.data.tasks.prompt_text` with the run's
:class:`~modft_utils.data.PromptFormat` (what training and scoring render), tokenized as
``evaluate.generate`` tokenizes (no special tokens added) and decoded greedily, so a served answer
is the notebooks' answer. Decoding is greedy only: parameters that ask for anything else
(``temperature`` above 0, ``top_p`` below 1, ``n`` above 1, penalties, logprobs, tools) are refused
naming the parameter, never silently ignored.

Every error, ours or the framework's (unknown route, validation), has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; nothing answers with a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from modft_utils.data.tasks import Conversation, prompt_text
from modft_utils.errors import ModftError
from modft_utils.serve.engine import Busy, Engine, Job, ServeError
from modft_utils.store import Registry

log = logging.getLogger("modft.serve")

STACK_HEADER = "x-modft-stack"
# OpenAI's roles, as the workbook's conversations name them ("developer" is OpenAI's newer "system").
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


@dataclass
class Settings:
    """What the HTTP layer enforces.

    Args:
        max_tokens: the most tokens one request may ask for (``max_tokens`` above it is refused).
        default_max_tokens: what a request without ``max_tokens`` gets.
        max_body_bytes: the largest request body (413 above it).
        request_log: the JSON-lines request log (None: no log).
        log_prompts: also write prompt text to the request log (off by default).
        admin_token: the bearer token of the admin routes (None: the routes do not exist).
        actor: who the audit log names for admin actions.
        request_timeout_s: the longest a request waits for its answer.
    """

    max_tokens: int = 256
    default_max_tokens: int = 64
    max_body_bytes: int = 1 << 20
    request_log: Path | None = None
    log_prompts: bool = False
    admin_token: str | None = None
    actor: str = "modft-serve"
    request_timeout_s: float = 600.0


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param, err.code), err.status, headers=err.headers)


# ----------------------------------------------------------------- request bodies


class _Body(BaseModel):
    # OpenAI clients send fields this server has no use for (user, seed, metadata): accepted, not used.
    model_config = ConfigDict(extra="allow")


class TextPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Any = None  # checked by the handler, which names the message
    content: str | list[TextPart] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None


class AdminAction(_Body):
    adapter: str
    reason: str = Field(min_length=1)


def _unsupported(body: _Sampling) -> None:
    """Refuse what greedy decoding of one answer cannot honour, naming the parameter."""
    checks: list[tuple[str, bool, str]] = [
        ("n", body.n not in (None, 1), "this server returns one choice per request: n must be 1"),
        (
            "temperature",
            body.temperature not in (None, 0),
            "this server decodes greedily (the notebooks' answers): temperature must be 0 or left out",
        ),
        ("top_p", body.top_p not in (None, 1), "this server decodes greedily: top_p must be 1 or left out"),
        ("presence_penalty", body.presence_penalty not in (None, 0), "penalties are not supported"),
        ("frequency_penalty", body.frequency_penalty not in (None, 0), "penalties are not supported"),
    ]
    if isinstance(body, ChatRequest):
        checks += [
            ("logprobs", bool(body.logprobs), "logprobs are not supported"),
            ("top_logprobs", body.top_logprobs is not None, "logprobs are not supported"),
            ("tools", bool(body.tools), "tools are not supported"),
            ("functions", bool(body.functions), "functions are not supported"),
            (
                "response_format",
                body.response_format is not None and body.response_format.get("type") != "text",
                "only text responses are supported",
            ),
        ]
    else:
        checks += [
            ("echo", bool(body.echo), "echo is not supported"),
            ("best_of", body.best_of not in (None, 1), "best_of must be 1"),
            ("logprobs", body.logprobs is not None, "logprobs are not supported"),
            ("suffix", body.suffix is not None, "suffix is not supported"),
        ]
    for param, bad, message in checks:
        if bad:
            raise ApiError(400, f"{param}: {message}", param=param, code="unsupported_parameter")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stop) > 4 or any(not s for s in stop):
        raise ApiError(400, "stop: up to 4 non-empty strings", param="stop")


def _logit_bias(body: _Sampling, vocab_size: int) -> dict[int, float]:
    """OpenAI's ``logit_bias``: token id (a string) -> a bias from -100 to 100 added to its logit each step."""
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.isdigit() or int(key) >= vocab_size:
            raise ApiError(
                400, f"logit_bias: {key!r} is not a token id of this model (0 to {vocab_size - 1})", param="logit_bias"
            )
        if not -100 <= value <= 100:
            raise ApiError(400, f"logit_bias[{key!r}]: {value} is outside -100 to 100", param="logit_bias")
        bias[int(key)] = float(value)
    return bias


def _stops(body: _Sampling) -> tuple[str, ...]:
    return (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())


# ----------------------------------------------------------------- the request log


class RequestLog:
    """One JSON line per request: time, route, stack, versions, rows decoded together (batch), token counts,
    latency, status.

    Prompt text only when ``log_prompts``; headers (and so any token) never.
    """

    def __init__(self, path: Path | None, log_prompts: bool = False) -> None:
        self.path = path
        self.log_prompts = log_prompts
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any], prompt: str | None = None) -> None:
        if self.path is None:
            return
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        if self.log_prompts and prompt is not None:
            entry["prompt"] = prompt
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError as err:  # a full disk must not fail the answer
            log.warning("request log %s: %s", self.path, err)


# ----------------------------------------------------------------- body size


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is answered 413, whether announced or streamed."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = error_response(self._error())
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # An HTTPException is what FastAPI's body reader passes on (others become a 400).
                    raise StarletteHTTPException(413, self._error().message)
            return message

        await self.app(scope, limited, send)

    def _error(self) -> ApiError:
        return ApiError(413, f"the request body is over this server's limit of {self.limit} bytes")


# ----------------------------------------------------------------- the app


def create_app(engine: Engine, settings: Settings, registry: Registry | None = None) -> FastAPI:
    """The FastAPI app serving ``engine``; admin routes only when ``settings.admin_token`` is set.

    Args:
        engine: the started (or starting) model worker.
        settings: limits, the request log and the admin token.
        registry: the store admin actions are audited in (the engine's store when None).
    """
    app = FastAPI(title="modft serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    requests_log = RequestLog(settings.request_log, settings.log_prompts)
    store = registry or engine.registry
    started = int(time.time())

    def log_error(request: Request, status: int, message: str) -> None:
        requests_log.write({"route": request.url.path, "status": status, "error": message[:300]})

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        log_error(request, err.status, err.message)
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = (err.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = "".join(f"[{p}]" if p.isdigit() else (f".{p}" if i else p) for i, p in enumerate(loc)) or None
        if first.get("type") == "json_invalid":
            message, param, code = "the request body is not valid JSON", None, "invalid_json"
        elif first.get("type") == "missing" and not loc:
            message, code = "the request needs a JSON body", "missing_body"
        else:
            message, code = f"{param or 'body'}: {first.get('msg', 'invalid value')}", "invalid_value"
        log_error(request, 400, message)
        return JSONResponse(error_body(400, message, param, code), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = err.detail if isinstance(err.detail, str) else "request refused"
        if err.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        log_error(request, err.status_code, message)
        return JSONResponse(error_body(err.status_code, message), err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        log_error(request, 500, type(err).__name__)
        return JSONResponse(error_body(500, f"internal error ({type(err).__name__}); see the server log"), 500)

    # ------------------------------------------------------------- health

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if engine.status != "ready":
            body = {"status": engine.status, "reason": engine.failure or "the base is loading"}
            return JSONResponse(body, 503)
        stacks = engine.snapshot()
        serving = {n: s for n, s in stacks.items() if s["status"] != "unavailable"}
        # degraded: a stack serves its last good versions, not the ones the store names now; a stack that
        # could never be served (no such alias yet) is listed apart and degrades nothing
        problems = [f"{n}: {s['problem']}" for n, s in serving.items() if s["problem"]]
        unavailable = {n: s["problem"] for n, s in stacks.items() if n not in serving}
        status = "ready" if not problems else "degraded"
        body = {
            "status": status,
            "problems": problems,
            "unavailable": unavailable,
            "stacks": stacks,
            "queued": engine.queued,
        }
        return JSONResponse(body, 200 if serving else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        stacks = engine.snapshot() if engine.status == "ready" else {}
        data = [
            {
                "id": name,
                "object": "model",
                "created": started,
                "owned_by": "modft",
                "stack": s["stack"],
                "versions": s["versions"],
                "refs": s["refs"],
                "status": s["status"],
                "problem": s["problem"],
                "disabled": s["disabled"],
            }
            for name, s in stacks.items()
            if s["status"] != "unavailable"
        ]
        unavailable = [
            {"id": n, "refs": s["refs"], "reason": s["problem"]}
            for n, s in stacks.items()
            if n not in {d["id"] for d in data}
        ]
        return {"object": "list", "data": data, "unavailable": unavailable}

    # ------------------------------------------------------------- completions

    def prepare(body: _Sampling, prompt: str) -> tuple[list[int], int, dict[int, float]]:
        """Token ids of ``prompt``, the max_tokens granted and the logit bias, or the ApiError that refuses it."""
        _unsupported(body)
        assert engine.loaded is not None
        bias = _logit_bias(body, len(engine.loaded.tokenizer))
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        if asked is not None and asked > settings.max_tokens:
            raise ApiError(400, f"{param}: {asked} is above this server's limit of {settings.max_tokens}", param=param)
        max_tokens = asked or min(settings.default_max_tokens, settings.max_tokens)
        ids = engine.loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ApiError(
                400, "the prompt is empty", param="prompt" if isinstance(body, CompletionRequest) else "messages"
            )
        window = engine.loaded.window
        if len(ids) + max_tokens > window:
            raise ApiError(
                400,
                f"this model's window is {window} tokens; the prompt has {len(ids)} and {param} asks for "
                f"{max_tokens} ({len(ids) + max_tokens} in all). Shorten the prompt or ask for fewer tokens.",
                param="messages" if isinstance(body, ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        return ids, max_tokens, bias

    def chat_prompt(body: ChatRequest) -> str:
        turns: list[tuple[str, str]] = []
        for i, message in enumerate(body.messages):
            role = message.role
            if not isinstance(role, str) or role not in ROLES:
                raise ApiError(
                    400,
                    f"messages[{i}].role: unknown role {str(role)[:40]!r} (expected one of {sorted(ROLES)})",
                    param=f"messages[{i}].role",
                )
            content = message.content
            if isinstance(content, list):
                if any(p.type != "text" or p.text is None for p in content):
                    raise ApiError(400, f"messages[{i}].content: only text parts", param=f"messages[{i}].content")
                content = "".join(p.text or "" for p in content)
            if content is None:
                raise ApiError(400, f"messages[{i}].content: missing", param=f"messages[{i}].content")
            turns.append((ROLES[role], content.strip()))  # stripped, as training reads turns
        if turns[-1][0] != "user":
            raise ApiError(400, "messages: the last message must be the user's", param="messages")
        assert engine.loaded is not None
        try:
            return prompt_text(
                Conversation("request", (*turns, ("assistant", ""))), engine.loaded.tokenizer, engine.loaded.fmt
            )
        except ModftError as err:  # a plain-format profile given a system turn, a template that refuses
            raise ApiError(400, f"messages: {err}", param="messages") from None

    async def run_job(request: Request, kind: Literal["chat", "text"], body: _Sampling, prompt: str):
        """Queue the job and answer: one JSON body, or server-sent events with ``stream``."""
        ids, max_tokens, bias = prepare(body, prompt)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def deliver(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone (shutting down)
                pass

        job = Job(body.model, ids, max_tokens, deliver, _stops(body), stream=bool(body.stream), logit_bias=bias)
        t0 = time.monotonic()
        try:
            engine.submit(job)
        except Busy as err:
            raise ApiError(429, str(err), code=err.code, headers={"Retry-After": "1"}) from None
        except ServeError as err:
            raise ApiError(err.status, str(err), param="model" if err.status == 404 else None, code=err.code) from None
        record: dict[str, Any] = {
            "route": request.url.path,
            "model": body.model,
            "stream": body.stream,
            "prompt_tokens": len(ids),
        }

        async def next_event() -> tuple:
            try:
                return await asyncio.wait_for(events.get(), settings.request_timeout_s)
            except TimeoutError:
                job.cancel()
                return ("error", f"no answer within {settings.request_timeout_s:g} s")

        first = await next_event()
        if first[0] == "error":
            requests_log.write({**record, "status": 500, "error": first[1][:300]}, prompt)
            raise ApiError(500, first[1])
        _, ident, versions, rows = first
        record.update(stack=ident, versions=versions, batch=rows)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        headers = {STACK_HEADER: ident}

        def usage(n: int) -> dict[str, int]:
            return {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}

        def finish(status: int, **more: Any) -> None:
            requests_log.write(
                {**record, **more, "status": status, "latency_ms": round(1000 * (time.monotonic() - t0), 1)}, prompt
            )

        if not body.stream:
            event = await next_event()
            while event[0] == "delta":
                event = await next_event()
            if event[0] == "error":
                finish(500, error=event[1][:300])
                raise ApiError(500, event[1])
            _, text, reason, n = event
            finish(200, completion_tokens=n, finish_reason=reason)
            choice = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                    "logprobs": None,
                }
                if kind == "chat"
                else {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
            )
            out = {
                "id": rid,
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": created,
                "model": body.model,
                "system_fingerprint": ident,
                "choices": [choice],
                "usage": usage(n),
            }
            return JSONResponse(out, headers=headers)

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: str | None, reason: str | None = None, *, role: bool = False) -> str:
            if kind == "chat":
                d: dict[str, Any] = (
                    {"role": "assistant", "content": ""} if role else ({"content": delta} if delta is not None else {})
                )
                choice = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
                obj = "text_completion"
            c = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": body.model,
                "system_fingerprint": ident,
                "choices": [choice],
            }
            if include_usage:
                c["usage"] = None
            return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"

        async def stream() -> AsyncIterator[str]:
            done = False
            try:
                if kind == "chat":
                    yield chunk(None, role=True)
                while True:
                    event = await next_event()
                    if event[0] == "delta":
                        yield chunk(event[1])
                        continue
                    if event[0] == "error":
                        done = True
                        finish(500, error=event[1][:300])
                        yield f"data: {json.dumps(error_body(500, event[1]))}\n\n"
                        return
                    _, _text, reason, n = event
                    done = True
                    finish(200, completion_tokens=n, finish_reason=reason)
                    yield chunk(None, reason)
                    if include_usage:
                        tail = {
                            "id": rid,
                            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                            "created": created,
                            "model": body.model,
                            "system_fingerprint": ident,
                            "choices": [],
                            "usage": usage(n),
                        }
                        yield f"data: {json.dumps(tail)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
            finally:
                if not done:  # the client went away: free its slot at the next decode step
                    job.cancel()
                    finish(499, error="client disconnected")

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
        )

    def check(body: _Sampling) -> None:
        """The server is ready and ``model`` names a stack: what every completion checks first."""
        if engine.status != "ready" or engine.loaded is None:
            raise ApiError(
                503, engine.failure or "the base is still loading: retry once /ready says ready", code="not_ready"
            )
        if body.model not in engine.states:
            raise ApiError(
                404,
                f"the model {body.model!r} does not exist: this server serves {sorted(engine.states)}",
                param="model",
                code="model_not_found",
            )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest):
        check(body)
        return await run_job(request, "chat", body, chat_prompt(body))

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        check(body)
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "prompt: one prompt per request", param="prompt")
            prompt = prompt[0]
        return await run_job(request, "text", body, prompt)

    # ------------------------------------------------------------- operators

    if settings.admin_token:
        token = settings.admin_token.encode()

        def authorize(request: Request) -> None:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
                raise ApiError(401, "a valid admin bearer token is required", code="invalid_api_key")

        async def admin(request: Request, name: str, body: AdminAction, disable: bool) -> dict[str, Any]:
            if engine.status != "ready":
                raise ApiError(503, "the base is still loading", code="not_ready")
            try:
                version = engine.set_disabled(name, body.adapter, body.reason if disable else None)
            except ServeError as err:
                raise ApiError(err.status, str(err), code=err.code) from None
            event = "serve-disable" if disable else "serve-enable"
            try:
                audit: Any = store.note(
                    body.adapter, event, reason=body.reason, actor=settings.actor, stack=name, version=version.version
                )
            except (ModftError, OSError) as err:  # the switch is made; a store that refuses the note is reported
                log.error("%s of %s on stack %r not audited: %s", event, version.ref, name, err)
                audit = f"not recorded: {err}"
            log.warning("%s %s@%d on stack %r: %s", event, version.name, version.version, name, body.reason)
            requests_log.write(
                {
                    "route": request.url.path,
                    "status": 200,
                    "action": event,
                    "stack": name,
                    "adapter": f"{version.name}@{version.version}",
                }
            )
            return {
                "stack": name,
                "adapter": f"{version.name}@{version.version}",
                "disabled": disable,
                "now": engine.snapshot()[name],
                "audit": audit,
            }

        # A dependency runs before the body is validated: without the token nothing about the body is told.
        @app.post("/admin/stacks/{name}/disable", dependencies=[Depends(authorize)])
        async def disable(request: Request, name: str, body: AdminAction) -> dict[str, Any]:
            return await admin(request, name, body, True)

        @app.post("/admin/stacks/{name}/enable", dependencies=[Depends(authorize)])
        async def enable(request: Request, name: str, body: AdminAction) -> dict[str, Any]:
            return await admin(request, name, body, False)

    return app
