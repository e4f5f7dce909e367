"""The OpenAI chat-completions API over an engine from `engines.py` (FastAPI).

    GET  /v1/models              the one model served
    POST /v1/chat/completions    messages, stream (SSE), n, temperature, top_p, max_tokens, stop,
                                 stop_token_ids, frequency_penalty, presence_penalty, seed, usage
    GET  /health                 200 when the server is up (no key needed)

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
request, 401 for a missing or wrong `Authorization: Bearer <key>`, 404 for an unknown model,
413 for a body over `max_request_bytes`, 429 (with `Retry-After`) when `max_queued_requests` are
already admitted, 503 while the server drains for shutdown.
The prompt is built by the family template (`templates.encode_prompt`), exactly as in training.

One slow request must not stall the others: the event loop only parses and routes. Building and
tokenizing the prompt runs in a worker thread, and a conversation that cannot fit the context is
refused before it is tokenized at all (`ServedModel.max_token_chars` bounds the characters one
token can cover, so more than `context_length * max_token_chars` characters can never fit). A body
too large to hold even that many characters is refused on arrival, before it is read or parsed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..cli import UserError
from ..generation import GenerationSettings, split_messages
from ..templates import Template, encode_prompt, stop_token_ids


# --- Request schema (unknown fields are ignored, as OpenAI clients send extras) -----------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)  # extension (as in vLLM)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)  # extension (as in vLLM)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    repetition_penalty: float = Field(default=1.0, gt=0)  # extension (as in vLLM)
    seed: int | None = None


# --- Errors in OpenAI's shape ---------------------------------------------------------------------


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, headers=self.headers, content={"error": {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code}})


def context_length_error(context_length: int, prompt_tokens: int, completion_tokens: int,
                         at_least: bool = False) -> APIError:
    measured = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
    return APIError(400, f"This model's maximum context length is {context_length} tokens. However, you "
                         f"requested {'at least ' if at_least else ''}{prompt_tokens + completion_tokens} tokens "
                         f"({measured} in the messages, {completion_tokens} in the completion). Please reduce "
                         "the length of the messages or completion.", param="messages", code="context_length_exceeded")


# --- Admission: a bounded queue, a body limit, and draining for shutdown ----------------------------


DEFAULT_MAX_REQUEST_BYTES = 8 * 2**20
JSON_BYTES_PER_CHAR = 12
NON_MESSAGE_BYTES = 64 * 2**10
RETRY_AFTER_S = 1


class Admission:
    """Counts the chat requests admitted and not yet answered (queued or decoding). Past `limit`, or
    once `drain()` was called, a new request is refused at once instead of waiting without bound.
    Used from the event loop only, so the counter needs no lock."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.active = 0
        self.draining = False

    def drain(self) -> None:
        self.draining = True

    def enter(self) -> Callable[[], None]:
        """Admit one request or raise 429/503; returns the (idempotent) release for when it is answered."""
        if self.draining:
            raise APIError(503, "The server is shutting down and takes no new requests; retry on another "
                                "instance.", type_="server_error", code="shutting_down",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        if self.limit is not None and self.active >= self.limit:
            raise APIError(429, f"The server is busy: {self.limit} requests are already queued "
                                f"(--max_queued_requests); retry after {RETRY_AFTER_S} s.",
                           type_="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return release


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is read to its end without being kept, then
    answered 413 (reading it lets the client see the answer instead of a reset connection)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size <= self.max_bytes:
                chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if size > self.max_bytes:
            refusal = APIError(413, f"The request body is {size} bytes; this server accepts at most "
                                    f"{self.max_bytes} (--max_request_bytes).", code="request_too_large")
            return await refusal.response()(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _validation_error(exc: RequestValidationError | ValidationError) -> APIError:
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "invalid request")
    return APIError(400, f"{param}: {message}" if param else message, param=param)


# --- The app ----------------------------------------------------------------------------------


@dataclass
class ServedModel:
    """What the API needs besides the engine: the name clients ask for, the tokenizer and template."""

    name: str
    tokenizer: object
    template: Template
    context_length: int
    default_max_tokens: int = 512
    system: str | None = None  # default system prompt (None: the template's)
    max_token_chars: int | None = None  # most characters one token covers (None: measured from the vocab)

    def __post_init__(self):
        if self.max_token_chars is None:
            self.max_token_chars = longest_token_chars(self.tokenizer)

    @property
    def max_prompt_chars(self) -> int:
        """More characters in the messages than this can never fit the context."""
        return self.context_length * self.max_token_chars

    def check_body_can_fit(self, size: int) -> None:
        """Refuse, before reading or parsing it, a body of `size` bytes too large to hold a prompt
        that fits: in JSON one character takes at most 12 bytes (an escaped surrogate pair), and the
        fields besides the messages' text get a generous allowance."""
        if size > JSON_BYTES_PER_CHAR * self.max_prompt_chars + NON_MESSAGE_BYTES:
            raise context_length_error(self.context_length, self.context_length + 1, 1, at_least=True)


def longest_token_chars(tokenizer) -> int:
    """The most characters a single token of `tokenizer` can stand for. A vocabulary entry is never
    shorter than the text it decodes to (byte-level BPE spells each byte as one character,
    sentencepiece spells a space as `▁`), special tokens included, so its longest entry bounds it."""
    return max(map(len, tokenizer.get_vocab()), default=1)


def create_app(engine, served: ServedModel, api_key: str | None = None, *,
               max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
               admission: Admission | None = None) -> FastAPI:
    """A FastAPI app serving `served` through `engine`; with `api_key`, every /v1 call needs it.
    `admission` bounds the requests in flight (and drains for shutdown); `app.state.admission` is it."""
    app = FastAPI(title="LLM-Tuning OpenAI-compatible API")
    created = int(time.time())
    admission = admission or Admission()
    app.state.admission = admission
    if max_request_bytes is not None:
        app.add_middleware(BodyLimit, max_bytes=max_request_bytes)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    @app.middleware("http")
    async def _check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return APIError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer <key>'.",
                                code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [
            {"id": served.name, "object": "model", "created": created, "owned_by": "llm-tuning"}]}

    @app.post("/v1/chat/completions", openapi_extra={"requestBody": {"content": {"application/json": {
        "schema": ChatCompletionRequest.model_json_schema()}}, "required": True}})
    async def chat_completions(request: Request):
        release = admission.enter()
        try:
            # Parsing, validating and tokenizing cost time in proportion to the body: a worker
            # thread does them, so the event loop keeps answering everyone else meanwhile.
            # A cheap refusal on the event loop: by the announced size before reading, by the size read after.
            served.check_body_can_fit(int(request.headers.get("content-length") or 0))
            raw = await request.body()
            served.check_body_can_fit(len(raw))
            body, prompt_ids, settings = await asyncio.to_thread(_read_request, raw, served)
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            deltas = engine.generate(prompt_ids, settings, body.n)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                events = _sse(deltas, completion_id, served.name, body.n, len(prompt_ids), include_usage)
                return StreamingResponse(_released_after(events, release), media_type="text/event-stream")
        except BaseException:
            release()
            raise
        try:
            return await _complete(deltas, completion_id, served.name, body.n, len(prompt_ids))
        finally:
            release()

    return app


class DrainingServer:
    """uvicorn, but the first SIGTERM (or Ctrl-C) drains: new requests get 503 while those in flight
    finish, for up to `grace_s` seconds; then the server stops. A second signal stops it at once."""

    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float, log_level: str = "info"):
        import uvicorn

        admission: Admission = app.state.admission

        class _Server(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:
                if admission.draining:
                    return super().handle_exit(sig, frame)
                admission.drain()
                threading.Thread(target=self.stop_when_idle, name="drain", daemon=True).start()

            def stop_when_idle(self) -> None:
                deadline = time.monotonic() + grace_s
                while admission.active and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.should_exit = True

        self.server = _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                             timeout_graceful_shutdown=1))

    def run(self) -> None:
        self.server.run()


def _read_request(raw: bytes, served: ServedModel) -> tuple[ChatCompletionRequest, list[int], GenerationSettings]:
    """(request, prompt ids, sampling settings) from a raw body, or an APIError saying what is wrong."""
    try:
        body = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as err:
        raise _validation_error(err) from None
    if body.model != served.name:
        raise APIError(404, f"The model '{body.model}' does not exist; this server serves '{served.name}'.",
                       param="model", code="model_not_found")
    return body, *_prepare(body, served)


def _prepare(body: ChatCompletionRequest, served: ServedModel) -> tuple[list[int], GenerationSettings]:
    """Prompt ids and sampling settings of a request, or an APIError saying what is wrong with it."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        system, history, query = split_messages(messages)
    except UserError as err:
        raise APIError(400, str(err), param="messages") from None
    requested = body.max_completion_tokens or body.max_tokens
    characters = sum(len(m["content"]) for m in messages)
    if characters > served.max_prompt_chars:  # cannot fit: refuse before tokenizing
        raise context_length_error(served.context_length, math.ceil(characters / served.max_token_chars),
                                   requested or 1, at_least=True)
    prompt_ids = encode_prompt(served.tokenizer, served.template, query, history,
                               system if system is not None else served.system)
    room = served.context_length - len(prompt_ids)
    if room < 1 or (requested is not None and requested > room):
        raise context_length_error(served.context_length, len(prompt_ids), requested or 1)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise APIError(400, "stop: at most 4 stop sequences", param="stop")
    vocab = len(served.tokenizer)
    if any(not 0 <= i < vocab for i in body.stop_token_ids):
        raise APIError(400, f"stop_token_ids: every id must be in [0, {vocab})", param="stop_token_ids")
    settings = GenerationSettings(
        max_new_tokens=requested or min(room, served.default_max_tokens),
        temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        repetition_penalty=body.repetition_penalty, frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty, stop=tuple(stop),
        stop_token_ids=tuple(stop_token_ids(served.tokenizer, served.template)) + tuple(body.stop_token_ids),
        seed=body.seed,
    )
    return prompt_ids, settings


async def _released_after(events: AsyncIterator[str], release: Callable[[], None]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield event
    finally:
        release()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _complete(deltas: AsyncIterator, completion_id: str, model: str, n: int, prompt_tokens: int) -> dict:
    texts, reasons, tokens = [""] * n, [None] * n, [0] * n
    async for delta in deltas:
        texts[delta.row] += delta.text
        tokens[delta.row] = delta.completion_tokens
        reasons[delta.row] = delta.finish_reason or reasons[delta.row]
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                     "logprobs": None, "finish_reason": reasons[i]} for i in range(n)],
        "usage": _usage(prompt_tokens, sum(tokens)),
    }


async def _sse(deltas: AsyncIterator, completion_id: str, model: str, n: int, prompt_tokens: int,
               include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them: a role chunk per choice, content chunks, the finish
    chunks, an optional usage chunk, then `data: [DONE]`."""
    created = int(time.time())

    def event(choices: list[dict], usage: dict | None = None) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    for i in range(n):
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
    tokens = [0] * n
    try:
        async for delta in deltas:
            tokens[delta.row] = delta.completion_tokens
            if delta.text:
                yield event([{"index": delta.row, "delta": {"content": delta.text}, "logprobs": None,
                              "finish_reason": None}])
            if delta.finish_reason:
                yield event([{"index": delta.row, "delta": {}, "logprobs": None,
                              "finish_reason": delta.finish_reason}])
    except Exception as err:  # headers are sent: report in the stream, as OpenAI does
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
        return
    if include_usage:
        yield event([], _usage(prompt_tokens, sum(tokens)))
    yield "data: [DONE]\n\n"
