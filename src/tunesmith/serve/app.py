"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/chat/completions (streaming or not),
/v1/completions, /v1/feedback, /health and Prometheus /metrics.

Safe by default: the CLI binds 127.0.0.1; with API keys set every route but /health needs
`Authorization: Bearer KEY` (401 otherwise); bodies over the limit get 413; a prompt plus max_tokens over
the context gets 400; n and stop sequences are capped; when `max_concurrency` requests are already admitted
the next gets 429 at once; each request has a deadline (504, or an error event in a stream); and a
request names a model the server loaded, never a path.

Hostile or careless clients: a chat body's turns and characters are capped before anything is encoded, and
the prompt is encoded after admission on a worker thread, so no request holds the event loop (/health
answers throughout); a client that goes away stops its generation, streaming or not; without an API key
only loopback `Host` names and `application/json` bodies are accepted (a web page cannot post to the
server cross-site or read it through DNS rebinding); sampling values outside what the decoder can compute
get 400; a 500 says nothing of the internals (the server log has the traceback).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunesmith.serve.engine import Cancelled, Engine, GenerationTimeout, Sampling, Served, TextStream
from tunesmith.serve.feedback import FeedbackStore, redactor
from tunesmith.serve.metrics import Metrics

log = logging.getLogger("tunesmith.serve")

# Parameters of the OpenAI API that change the answer and that this server does not implement: refusing
# them is better than silently answering something else.
UNSUPPORTED = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "echo",
    "suffix",
    "best_of",
)
# Implemented only at OpenAI's default value (anything else would be ignored, so it is refused).
NEUTRAL = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "response_format": ({"type": "text"},),
}
# Below this a temperature is greedy decoding (logits / T overflow float32 long before T reaches 0).
MIN_TEMPERATURE = 1e-4
SEED_MAX = 2**63 - 1
# Host header names accepted without an API key: the loopback names (DNS rebinding sends another name).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
INTERNAL_ERROR = "the server failed to generate an answer (the server log has the details)"


@dataclass
class Settings:
    api_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 1 << 20
    max_concurrency: int = 16
    timeout_s: float = 60.0
    max_n: int = 4
    max_stop: int = 4
    max_stop_chars: int = 64
    default_max_tokens: int = 256
    max_context: int | None = None  # below the model's own context, to bound memory and time per request
    max_messages: int = 256  # chat turns per request, checked before any encoding
    max_prompt_chars: int = 200_000  # characters of all turns together, checked before any encoding
    serve_dir: Path = Path("serve")


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    user: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    @field_validator("content")
    @classmethod
    def _text_only(cls, v: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(v, list) and any(part.get("type") != "text" for part in v):
            raise ValueError("only text content parts are supported")
        return v

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Request):
    prompt: str = Field(..., min_length=1)
    max_tokens: int | None = Field(16, ge=1)  # the OpenAI default for /v1/completions


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., description="The `id` of a chat completion or completion this server returned.")
    rating: Literal["up", "down"] | int = Field(..., description="up/down or 1-5.")
    correction: str | None = Field(None, max_length=20000, description="The answer it should have given.")
    choice: int = Field(0, ge=0)
    comment: str | None = Field(None, max_length=2000)

    @field_validator("rating")
    @classmethod
    def _scale(cls, v: str | int) -> str | int:
        if isinstance(v, int) and not 1 <= v <= 5:
            raise ValueError("a numeric rating is 1-5")
        return v


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> Any:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": None}}, status)


class Admission:
    """At most `limit` generation requests admitted at once; the next is refused (429), never queued."""

    def __init__(self, limit: int, metrics: Metrics):
        self.limit = limit
        self.metrics = metrics
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.metrics.in_flight >= self.limit:
                return False
            self.metrics.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.metrics.in_flight -= 1


class Job:
    """One admitted generation request, run on its own thread (which reads its tokens from the engine's
    running batch); events reach the event loop through an asyncio queue. The thread always ends: at the last token, at the
    deadline, or when the client goes away (`cancel`)."""

    def __init__(
        self,
        engine: Engine,
        served: Served,
        prompt: list[int],
        sampling: Sampling,
        n: int,
        stops: list[str],
        deadline: float,
        on_done: Callable[[Job], None],
        stream: bool = True,
    ):
        """`stream`: send each piece of text to the event loop as it is generated; off (a non-streaming
        request), the loop hears only the end, so no wake-up per token competes with the decoding thread."""
        self.engine, self.served, self.prompt, self.sampling = engine, served, prompt, sampling
        self.stream = stream
        self.n, self.stops, self.deadline, self.on_done = n, stops, deadline, on_done
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.cancel = threading.Event()
        self.texts: list[str] = [""] * n
        self.finish: list[str] = ["length"] * n
        self.completion_tokens = 0
        self.error: BaseException | None = None
        threading.Thread(target=self._run, daemon=True, name="tunesmith-generate").start()

    def _put(self, *event: Any) -> None:
        if self.stream or event[0] == "end":
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def _run(self) -> None:
        try:
            for i in range(self.n):
                sampling = self.sampling
                if sampling.seed is not None and i:
                    sampling = dataclasses.replace(sampling, seed=sampling.seed + i)
                if self.served.classifier:
                    self._label(i, sampling)
                else:
                    self._choice(i, sampling)
        except (GenerationTimeout, Cancelled) as e:
            self.error = e
        except Exception as e:  # a 500 for the client (INTERNAL_ERROR); the details go to the server log
            log.exception("generation failed for %s", self.served.run_id)
            self.error = e
        finally:
            try:
                self.on_done(self)
            finally:
                self._put("end")

    def _choice(self, i: int, sampling: Sampling) -> None:
        """One generated answer, its text sent as it grows (the tokens come from the engine's running batch)."""
        stream = TextStream(self.served.tokenizer, self.stops)
        tokens = self.engine.decode(self.served, self.prompt, sampling, self.deadline, self.cancel)
        try:
            for tok_id in tokens:
                self.completion_tokens += 1
                if delta := stream.push(tok_id):
                    self._put("delta", i, delta)
                if stream.stopped:
                    break
        finally:
            tokens.close()  # a stop string ended the text: the row leaves the batch now
        if delta := stream.flush():
            self._put("delta", i, delta)
        self.texts[i] = stream.text
        hit_length = len(stream.ids) >= sampling.max_tokens and not stream.stopped
        self.finish[i] = "length" if hit_length else "stop"
        self._put("finish", i, self.finish[i])

    def _label(self, i: int, sampling: Sampling) -> None:
        """A classifier's answer: one label, whole (stop sequences do not apply to a label). Classifier
        requests take turns under the engine's lock, waiting for it no longer than their deadline."""
        if self.cancel.is_set():
            raise Cancelled()
        if time.monotonic() > self.deadline:
            raise GenerationTimeout()
        if not self.engine.lock.acquire(timeout=max(0.0, self.deadline - time.monotonic())):
            raise GenerationTimeout()
        try:
            label = self.engine.classify(self.served, self.prompt, sampling)
        finally:
            self.engine.lock.release()
        self.completion_tokens += len(self.served.tokenizer(label, add_special_tokens=False)["input_ids"])
        self.texts[i], self.finish[i] = label, "stop"
        self._put("delta", i, label)
        self._put("finish", i, "stop")

    async def events(self) -> AsyncIterator[tuple[Any, ...]]:
        while True:
            ev = await self.queue.get()
            if ev[0] == "end":
                return
            yield ev


ROUTES = frozenset(
    {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/feedback"}
)


class Guard:
    """ASGI middleware around every request: the API key check (all routes but /health) and the request
    metrics; as plain ASGI (not BaseHTTPMiddleware) it sees a stream through to its last event."""

    def __init__(self, app: Any, settings: Settings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.keys = [k.encode() for k in settings.api_keys]

    def _authorized(self, scope: dict[str, Any]) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        given = header[7:] if header[:7].lower() == b"bearer " else b""
        # compare_digest against every key: no early exit that would time which key matched.
        return any([hmac.compare_digest(given, k) for k in self.keys])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"  # bounded label values
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if not self.keys and (refusal := _unkeyed_refusal(scope)) is not None:
                await refusal(scope, receive, send_status)
                return
            if route != "/health" and self.keys and not self._authorized(scope):
                response = _error(
                    401,
                    "Incorrect or missing API key: send `Authorization: Bearer KEY`.",
                    "authentication_error",
                )
                await response(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(route, status[0], time.perf_counter() - start)


def _unkeyed_refusal(scope: dict[str, Any]) -> Any:
    """Without an API key the server trusts whoever reaches it, so only what a local program sends is
    accepted: a loopback `Host` (a DNS-rebinding page sends its own name) and JSON bodies (a cross-site form
    or `no-cors` fetch can only send text/plain, urlencoded or multipart without a preflight)."""
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1").lower()
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]", 1)[0] + "]"
    if name not in LOOPBACK_HOSTS:
        return _error(
            421,
            f"Host {host!r} is not served: without an API key this server answers loopback names only "
            "(localhost, 127.0.0.1, [::1]); set an API key to serve other names",
        )
    if scope.get("method") == "POST":
        kind = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            return _error(415, f"Content-Type {kind or '(none)'!r}: send application/json")
    return None


@dataclass(frozen=True)
class Reply:
    """What every response to one generation request says besides its text."""

    endpoint: Literal["chat", "text"]
    id: str
    created: int
    model: str  # as the request named it (an alias or a run id)
    run_id: str
    prompt_tokens: int
    timeout_s: float

    def usage(self, job: Job) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "total_tokens": self.prompt_tokens + job.completion_tokens,
        }

    def timeout_message(self) -> str:
        return f"generation did not finish within the request timeout of {self.timeout_s:g}s"


def whole_reply(reply: Reply, job: Job) -> dict[str, Any]:
    """A finished job's response body, or its error as an APIError."""
    if isinstance(job.error, Cancelled):
        raise APIError(499, "the client closed the request", "cancelled")
    if isinstance(job.error, GenerationTimeout):
        raise APIError(504, reply.timeout_message(), "timeout_error")
    if job.error is not None:
        raise APIError(500, INTERNAL_ERROR, "server_error") from job.error
    if reply.endpoint == "chat":
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "finish_reason": job.finish[i],
                "logprobs": None,
            }
            for i, t in enumerate(job.texts)
        ]
    else:
        choices = [
            {"index": i, "text": t, "finish_reason": job.finish[i], "logprobs": None}
            for i, t in enumerate(job.texts)
        ]
    return {
        "id": reply.id,
        "object": "chat.completion" if reply.endpoint == "chat" else "text_completion",
        "created": reply.created,
        "model": reply.model,
        "choices": choices,
        "usage": reply.usage(job),
        "system_fingerprint": reply.run_id,
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def streamed_reply(reply: Reply, job: Job, n: int, include_usage: bool) -> AsyncIterator[str]:
    """The job's server-sent events as it generates: the role, text deltas, finish reasons, then an error
    event or the usage (when asked), then [DONE]. Ending early (the client went away) stops the job."""
    chat = reply.endpoint == "chat"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return _sse(
            {
                "id": reply.id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": reply.created,
                "model": reply.model,
                "choices": choices,
                "system_fingerprint": reply.run_id,
                **extra,
            }
        )

    try:
        if chat:
            for i in range(n):
                yield chunk(
                    [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                )
        async for ev in job.events():
            if ev[0] == "delta":
                _, i, text = ev
                c = {"index": i, "delta": {"content": text}} if chat else {"index": i, "text": text}
                yield chunk([{**c, "finish_reason": None, "logprobs": None}])
            elif ev[0] == "finish":
                _, i, reason = ev
                c = {"index": i, "delta": {}} if chat else {"index": i, "text": ""}
                yield chunk([{**c, "finish_reason": reason, "logprobs": None}])
        if job.error is not None:
            timeout = isinstance(job.error, GenerationTimeout)
            message = reply.timeout_message() if timeout else INTERNAL_ERROR
            yield _sse(
                {"error": {"message": message, "type": "timeout_error" if timeout else "server_error"}}
            )
        elif include_usage:
            yield chunk([], usage=reply.usage(job))
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()  # the client went away, or the stream ended: the thread stops either way


async def read_json(request: Request, model: type[BaseModel], max_body_bytes: int) -> Any:
    """The body parsed as `model`, read no further than `max_body_bytes` (413 beyond); 400 names the field."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        raise APIError(413, f"request body of {length} bytes is over the limit of {max_body_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise APIError(413, f"request body is over the limit of {max_body_bytes} bytes")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise APIError(
            400, f"{where}: {first['msg']}" if where else first["msg"], param=where or None
        ) from None


def check_request(req: _Request, engine: Engine, settings: Settings) -> tuple[Served, list[str]]:
    """The served run a request names and its stop strings; a 400 or 404 for what this server refuses."""
    extra = req.model_extra or {}
    bad = [k for k in UNSUPPORTED if extra.get(k) not in (None, False, [], {})]
    bad += [k for k, ok in NEUTRAL.items() if extra.get(k) is not None and extra[k] not in ok]
    if bad:
        raise APIError(
            400,
            f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not supported by this server",
            param=bad[0],
        )
    served = engine.lookup(req.model)
    if served is None:
        raise APIError(
            404,
            f"The model `{req.model}` does not exist; served: {', '.join(sorted(engine.names))}",
            param="model",
        )
    if req.n > settings.max_n:
        raise APIError(400, f"n={req.n} is over this server's limit of {settings.max_n}", param="n")
    if req.n > 1 and not (req.temperature or 0.0) >= MIN_TEMPERATURE:
        raise APIError(
            400,
            f"n={req.n} without a temperature would return {req.n} identical answers: this server decodes "
            "greedily unless `temperature` is set (OpenAI's default is 1)",
            param="n",
        )
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > settings.max_stop or any(len(s) > settings.max_stop_chars for s in stops):
        raise APIError(
            400,
            f"at most {settings.max_stop} stop sequences of up to {settings.max_stop_chars} characters",
            param="stop",
        )
    return served, stops


def token_budget(prompt_len: int, requested: int | None, context: int, default: int) -> int:
    """The completion tokens a prompt may have: as requested, or `default` within the context."""
    if requested is not None and prompt_len + requested > context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} in the completion). "
            "Please reduce the length of the prompt or of max_tokens.",
            param="max_tokens",
        )
    if prompt_len >= context:
        raise APIError(
            400,
            f"the prompt is {prompt_len} tokens; this model's maximum context length is {context}",
            param="messages",
        )
    return requested if requested is not None else min(default, context - prompt_len)


def record_answer(
    store: FeedbackStore,
    metrics: Metrics,
    reply: Reply,
    served: Served,
    log_request: dict[str, Any],
    job: Job,
) -> None:
    """The answer in the feedback store, PII-redacted by the run's rules; a failed write is logged and counted
    (the answer itself was generated: the client still gets it, and feedback on its id will say it is
    unknown)."""
    try:
        redact = redactor(served.clean)
        store.record_response(
            reply.id,
            reply.endpoint,
            reply.model,
            served.run_id,
            {
                k: redact(v) if isinstance(v, str) else [{**m, "content": redact(m["content"])} for m in v]
                for k, v in log_request.items()
            },
            [redact(t) for t in job.texts],
        )
    except Exception:
        metrics.feedback_write_failed()
        log.exception("could not record response %s in %s", reply.id, store.path)


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics()
    admission = Admission(settings.max_concurrency, metrics)
    store = FeedbackStore(settings.serve_dir)
    context = min(engine.context, settings.max_context or engine.context)
    app.state.engine, app.state.metrics, app.state.store = engine, metrics, store

    app.add_middleware(Guard, settings=settings, metrics=metrics)

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> Any:
        return _error(e.status, e.message, e.type, e.param)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        if settings.api_keys:  # /health needs no key, so it names nothing then
            return {"status": "ok"}
        return {"status": "ok", "models": sorted(engine.names), "in_flight": metrics.in_flight}

    @app.get("/metrics")
    async def prometheus() -> Any:
        batch = engine.batcher.stats() if engine.batcher is not None else None
        return PlainTextResponse(metrics.render(batch), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [
            {
                "id": name,
                "object": "model",
                "created": engine.created,
                "owned_by": "tunesmith",
                "root": run_id,
            }
            for name, run_id in sorted(engine.names.items())
        ]
        return {"object": "list", "data": data}

    async def run(
        endpoint: Literal["chat", "text"],
        request: Request,
        req: _Request,
        served: Served,
        encode: Callable[[], list[int]],
        requested: int | None,
        stops: list[str],
        log_request: dict[str, Any],
    ) -> Any:
        """Admit the request, encode its prompt on a worker thread (never on the event loop: a long chat
        must not stall /health or anyone else), check it against the context, then generate."""
        if not admission.try_enter():
            raise APIError(
                429,
                f"the server is at its limit of {settings.max_concurrency} concurrent requests; retry shortly",
                "rate_limit_error",
            )
        try:
            prompt = await asyncio.to_thread(encode)
            max_tokens = token_budget(len(prompt), requested, context, settings.default_max_tokens)
        except BaseException:
            admission.leave()
            raise
        rid = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        temperature = req.temperature if req.temperature and req.temperature >= MIN_TEMPERATURE else 0.0
        sampling = Sampling(max_tokens, temperature, req.top_p or 1.0, req.seed, constrain=endpoint == "chat")

        reply = Reply(endpoint, rid, created, req.model, served.run_id, len(prompt), settings.timeout_s)

        def done(job: Job) -> None:
            admission.leave()
            metrics.count_tokens(req.model, len(prompt) * req.n, job.completion_tokens)
            if job.error is None:
                record_answer(store, metrics, reply, served, log_request, job)

        deadline = time.monotonic() + settings.timeout_s
        job = Job(engine, served, prompt, sampling, req.n, stops, deadline, done, stream=bool(req.stream))
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                streamed_reply(reply, job, req.n, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        # uvicorn does not cancel a handler whose client went away (Kludex/uvicorn#501): watch for it.
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job.cancel))
        try:
            async for _ in job.events():
                pass
        except asyncio.CancelledError:
            job.cancel.set()
            raise
        finally:
            watcher.cancel()
        return whole_reply(reply, job)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req = await read_json(request, ChatRequest, settings.max_body_bytes)
        served, stops = check_request(req, engine, settings)
        # Bounded before anything is encoded: rendering a chat costs time in the number of turns.
        if len(req.messages) > settings.max_messages:
            raise APIError(
                400,
                f"{len(req.messages)} messages: this server takes at most {settings.max_messages} per request",
                param="messages",
            )
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
        ]
        chars = sum(len(m["content"]) for m in messages)
        if chars > settings.max_prompt_chars:
            raise APIError(
                400,
                f"the messages hold {chars:,} characters: this server takes at most {settings.max_prompt_chars:,}",
                param="messages",
            )
        if messages[-1]["role"] != "user":
            raise APIError(400, "the last message must be a user message", param="messages")
        if messages[0]["role"] != "system" and served.system_prompt:
            # Training put the run's system prompt before every example; serving does the same.
            messages.insert(0, {"role": "system", "content": served.system_prompt})
        # A classifier answers one label whatever max_tokens says; its prompt must still fit.
        requested = None if served.classifier else req.max_completion_tokens or req.max_tokens
        return await run(
            "chat",
            request,
            req,
            served,
            lambda: _encode_chat(served, messages),
            requested,
            stops,
            {"messages": messages},
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await read_json(request, CompletionRequest, settings.max_body_bytes)
        served, stops = check_request(req, engine, settings)
        if served.classifier:
            raise APIError(
                400,
                f"`{req.model}` is a classifier (train.objective classify): it answers chat completions with one "
                f"of its {len(served.labels)} labels; raw-text completions are not served",
                param="model",
            )
        if len(req.prompt) > settings.max_prompt_chars:
            raise APIError(
                400,
                f"the prompt holds {len(req.prompt):,} characters: this server takes at most "
                f"{settings.max_prompt_chars:,}",
                param="prompt",
            )

        def encode() -> list[int]:
            return list(served.tokenizer(req.prompt)["input_ids"])

        return await run("text", request, req, served, encode, req.max_tokens, stops, {"prompt": req.prompt})

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Any:
        req = await read_json(request, FeedbackRequest, settings.max_body_bytes)
        stored = await asyncio.to_thread(store.response, req.id)
        if stored is None:
            raise APIError(404, f"no response with id {req.id!r} on this server", param="id")
        if req.choice >= len(json.loads(stored["choices"])):
            raise APIError(400, f"response {req.id} has no choice {req.choice}", param="choice")
        served = engine.served.get(stored["run_id"])
        redact = redactor(served.clean) if served else redactor(_default_clean())
        seq = await asyncio.to_thread(
            store.add_feedback,
            req.id,
            req.choice,
            req.rating,
            redact(req.correction) if req.correction else None,
            redact(req.comment) if req.comment else None,
        )
        return {"id": f"fb-{seq}", "object": "feedback", "response_id": req.id, "status": "stored"}

    return app


def _encode_chat(served: Served, messages: list[dict[str, str]]) -> list[int]:
    """The prompt as training encoded it: the chat template, or plain text for an encoder. A template that
    refuses the messages (`raise_exception`, or roles it does not take) is the client's 400."""
    from jinja2.exceptions import TemplateError as JinjaError

    from tunesmith.data.tokenize import TemplateError, encode_plain, encode_prompt

    encode = encode_plain if served.plain_text else encode_prompt
    try:
        return encode(served.tokenizer, messages)  # type: ignore[arg-type]
    except (TemplateError, JinjaError, ValueError) as e:
        raise APIError(
            400, f"messages cannot be rendered with the chat template: {e}", param="messages"
        ) from e


async def _cancel_on_disconnect(request: Request, cancel: threading.Event, every_s: float = 0.2) -> None:
    """Set `cancel` when the client disconnects (polled: the request body has been read already)."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(every_s)


def _default_clean() -> Any:
    from tunesmith.config import CleanConfig

    return CleanConfig()
