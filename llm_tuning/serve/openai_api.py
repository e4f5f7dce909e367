"""The OpenAI chat-completions API over an engine from `engines.py` (FastAPI).

    GET  /v1/models              the one model served
    POST /v1/chat/completions    messages, stream (SSE), n, temperature, top_p, max_tokens, stop,
                                 stop_token_ids, frequency_penalty, presence_penalty, seed, usage,
                                 tools, tool_choice, chat_template_kwargs.enable_thinking
    GET  /health                 200 when the server is up (no key needed)

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
request, 401 for a missing or wrong `Authorization: Bearer <key>`, 404 for an unknown model,
413 for a body over `max_request_bytes`, 429 (with `Retry-After`) when `max_queued_requests` are
already admitted, 503 while the server drains for shutdown.
The prompt is built by the chat template (`templates.encode_chat`), exactly as in training.

Reasoning and tools (`reply_parts.py`, `tool_calls.py`):
- A reply that begins with `<think>…</think>` (or whose prompt opened the block) comes back with
  the reasoning in `message.reasoning_content` and the answer in `content`; streamed, as
  `delta.reasoning_content` then `delta.content`. Assistant messages sent back may carry
  `reasoning_content`; the template decides whether it shows them (Qwen3 drops earlier turns'
  reasoning), and for a template that renders no reasoning at all the server drops it.
  `chat_template_kwargs: {"enable_thinking": bool}` (as in vLLM) overrides --enable_thinking per request.
- `tools` are rendered by the model's own chat template; a template that cannot render them is a
  400 saying so. Calls in the reply, in the syntax the template writes them, come back as
  `message.tool_calls` (arguments as JSON text) with `finish_reason: "tool_calls"`; streamed, each
  call whole in two `delta.tool_calls` chunks (id and name, then arguments) once the reply ends.
  A call that does not parse, or names a function not in `tools`, leaves the reply plain content.
- `tool_choice`: "auto" (the default with tools) lets the model choose; "none" renders the prompt
  without the tool definitions and reads no calls; "required" starts the reply with the template's
  call opening, so the model must call one of the tools; `{"type": "function", "function":
  {"name": N}}` starts it with a call to N, so the model writes only the arguments. Both openings
  come from the template's own rendering of a call, and a forced call comes without reasoning
  before it, as the template writes a call turn.
- The client sends calls back as assistant messages with `tool_calls`, and each result as a
  `tool` message with its `tool_call_id`.

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
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..cli import UserError
from ..conversation import message_texts
from ..generation import GenerationSettings, check_messages
from ..native_template import NativeTemplate, model_name, traits_of
from ..reply_parts import CONTENT, REASONING, ReplyParser, prompt_opens_reasoning
from ..templates import AnyTemplate, encode_chat, prompt_text, stop_token_ids
from ..tool_calls import ToolCallFormat, call_opening, tool_call_format

# --- Request schema (unknown fields are ignored, as OpenAI clients send extras) -----------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict  # OpenAI sends a JSON object as text; an object is accepted too


class ToolCallIn(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None  # an assistant's reasoning, sent back (DeepSeek / vLLM)
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(p.text for p in self.content)


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
    description: str | None = None
    parameters: dict | None = None


class ToolDefinition(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


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
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # extension (as in vLLM): enable_thinking only


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


# A tool every template that renders tools can render: to ask a template whether it can.
PROBE_TOOL = {"type": "function", "function": {"name": "probe", "description": "a probe",
                                               "parameters": {"type": "object", "properties": {}}}}


# --- The app ----------------------------------------------------------------------------------


@dataclass
class ServedModel:
    """What the API needs besides the engine: the name clients ask for, the tokenizer and template."""

    name: str
    tokenizer: object
    template: AnyTemplate
    context_length: int
    default_max_tokens: int = 512
    system: str | None = None  # default system prompt (None: the template's)
    max_token_chars: int | None = None  # most characters one token covers (None: measured from the vocab)
    _tools_refusal: str | None = field(default=None, init=False, repr=False)

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

    def tool_call_format(self) -> ToolCallFormat | None:
        """The syntax the model writes tool calls in (None: none this server reads)."""
        return tool_call_format(self.tokenizer) if isinstance(self.template, NativeTemplate) else None

    def tools_refusal(self) -> str | None:
        """Why this model cannot be offered tools, in one sentence; None when it can. The template
        says it when it cannot render them (as in training), else the calls must be readable."""
        if self._tools_refusal is None:
            try:
                encode_chat(self.tokenizer, self.template, [{"role": "user", "content": "Hi"}], [PROBE_TOOL])
                refusal = "" if self.tool_call_format() is not None else (
                    f"the chat template of {model_name(self.tokenizer)} writes tool calls in a syntax this server "
                    "cannot read back (it reads <tool_call> blocks and Llama-3.1 JSON calls)")
            except UserError as err:
                refusal = str(err)
            self._tools_refusal = refusal
        return self._tools_refusal or None

    def renders_reasoning(self) -> bool:
        """Whether the template writes an assistant message's reasoning (else it is dropped from the history)."""
        if isinstance(self.template, NativeTemplate):
            return traits_of(self.tokenizer).renders_reasoning
        return self.template.reasoning_format is not None


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
            body, prompt_ids, settings, reading = await asyncio.to_thread(_read_request, raw, served)
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            deltas = engine.generate(prompt_ids, settings, body.n)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                events = _sse(deltas, completion_id, served.name, body.n, len(prompt_ids), include_usage, reading)
                return StreamingResponse(_released_after(events, release), media_type="text/event-stream")
        except BaseException:
            release()
            raise
        try:
            return await _complete(deltas, completion_id, served.name, body.n, len(prompt_ids), reading)
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


@dataclass(frozen=True)
class ReplyReading:
    """How the replies to one request are read: the tool-call syntax looked for (None: no calls),
    the functions offered, and what the prompt already holds of the reply."""

    tool_format: ToolCallFormat | None = None
    tool_names: tuple[str, ...] = ()
    prefill: str = ""  # the start of the reply written into the prompt (a forced call's opening)
    in_reasoning: bool = False  # the prompt opened a think block

    def start(self) -> tuple[ReplyParser, list]:
        """A parser for one choice, and the pieces the prefill already makes final."""
        parser = ReplyParser(self.tool_format, self.tool_names, self.in_reasoning)
        return parser, parser.feed(self.prefill)


def _read_request(raw: bytes, served: ServedModel) -> tuple[ChatCompletionRequest, list[int], GenerationSettings,
                                                            ReplyReading]:
    """(request, prompt ids, sampling settings, reply reading) from a raw body, or an APIError."""
    try:
        body = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as err:
        raise _validation_error(err) from None
    if body.model != served.name:
        raise APIError(404, f"The model '{body.model}' does not exist; this server serves '{served.name}'.",
                       param="model", code="model_not_found")
    return body, *_prepare(body, served)


def _template(body: ChatCompletionRequest, served: ServedModel) -> AnyTemplate:
    """The served template, thinking or not as `chat_template_kwargs.enable_thinking` asks."""
    kwargs = body.chat_template_kwargs or {}
    if set(kwargs) - {"enable_thinking"}:
        raise APIError(400, "chat_template_kwargs: this server passes only enable_thinking to the template, not "
                            f"{', '.join(sorted(set(kwargs) - {'enable_thinking'}))}", param="chat_template_kwargs")
    thinking = kwargs.get("enable_thinking")
    if thinking is None:
        return served.template
    if not isinstance(thinking, bool):
        raise APIError(400, "chat_template_kwargs.enable_thinking: must be true or false",
                       param="chat_template_kwargs.enable_thinking")
    return served.template.with_thinking(thinking)


def _call_message(call: ToolCallIn, where: str) -> dict:
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        raise APIError(400, f"{where}.function.arguments: must be a JSON object", param=f"{where}.function.arguments")
    message = {"type": "function", "function": {"name": call.function.name, "arguments": arguments}}
    return {"id": call.id, **message} if call.id else message


def _messages(body: ChatCompletionRequest, served: ServedModel) -> list[dict]:
    """The request's messages as the templates take them (`conversation.Conversation`'s form):
    developer is system, leading system messages are one, tool-call arguments are objects."""
    messages, keep_reasoning = [], served.renders_reasoning()
    for index, given in enumerate(body.messages):
        role = "system" if given.role == "developer" else given.role
        message = {"role": role, "content": given.text()}
        if given.content is None and not (role == "assistant" and given.tool_calls):
            raise APIError(400, f"messages[{index}].content: a {given.role} message needs content",
                           param=f"messages.{index}.content")
        if role == "assistant":
            if given.reasoning_content and keep_reasoning:  # else dropped, as a model
                # without a reasoning form never sees it
                message["reasoning_content"] = given.reasoning_content
            if given.tool_calls:
                message["tool_calls"] = [_call_message(call, f"messages.{index}.tool_calls.{k}")
                                         for k, call in enumerate(given.tool_calls)]
        if role == "tool":
            if not given.tool_call_id:
                raise APIError(400, f"messages[{index}].tool_call_id: a tool message needs the id of the call "
                                    "it answers", param=f"messages.{index}.tool_call_id")
            message["tool_call_id"] = given.tool_call_id
        messages.append(message)
    leading = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    system = "\n".join(m["content"] for m in messages[:leading]) if leading else served.system
    messages = ([{"role": "system", "content": system}] if system else []) + messages[leading:]
    try:
        check_messages(messages)
    except UserError as err:
        raise APIError(400, str(err), param="messages") from None
    return messages


def _tool_choice(body: ChatCompletionRequest, served: ServedModel) -> tuple[list[dict] | None, str | None, bool]:
    """(the tools to render, the function a reply must call, whether it must call one), checked."""
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
    choice = body.tool_choice or ("auto" if tools else "none")
    if choice != "none" and not tools:
        raise APIError(400, "tool_choice: a tool can be chosen only when the request gives `tools`",
                       param="tool_choice")
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if named is not None and named not in {tool["function"]["name"] for tool in tools}:
        raise APIError(400, f"tool_choice: the function {named!r} is not among the `tools`", param="tool_choice")
    if choice == "none":
        return None, None, False
    if (refusal := served.tools_refusal()) is not None:
        raise APIError(400, refusal, param="tools")
    return tools, named, choice != "auto"


def _prepare(body: ChatCompletionRequest, served: ServedModel) -> tuple[list[int], GenerationSettings, ReplyReading]:
    """Prompt ids, sampling settings and how to read the replies, or an APIError saying what is wrong."""
    template = _template(body, served)
    messages = _messages(body, served)
    tools, named, forced = _tool_choice(body, served)
    requested = body.max_completion_tokens or body.max_tokens
    characters = sum(len(text) for m in messages for text in message_texts(m)) + len(json.dumps(tools or []))
    if characters > served.max_prompt_chars:  # cannot fit: refuse before tokenizing
        raise context_length_error(served.context_length, math.ceil(characters / served.max_token_chars),
                                   requested or 1, at_least=True)
    try:
        prompt_ids = encode_chat(served.tokenizer, template, messages, tools)
    except UserError as err:
        raise APIError(400, str(err), param="messages") from None
    reading = ReplyReading(in_reasoning=prompt_opens_reasoning(served.tokenizer, prompt_ids))
    if tools:
        prefill = call_opening(served.tokenizer, template.enable_thinking, named) if forced else ""
        if prefill:  # tokenized with the prompt, as in training: the reply goes on from the call's opening
            prompt_ids = served.tokenizer(prompt_text(served.tokenizer, template, messages, tools) + prefill,
                                          add_special_tokens=False)["input_ids"]
        reading = ReplyReading(served.tool_call_format(), tuple(t["function"]["name"] for t in tools), prefill,
                               reading.in_reasoning)
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
        stop_token_ids=tuple(stop_token_ids(served.tokenizer, template)) + tuple(body.stop_token_ids),
        seed=body.seed,
    )
    return prompt_ids, settings, reading


async def _released_after(events: AsyncIterator[str], release: Callable[[], None]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield event
    finally:
        release()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _tool_call_items(calls: list) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}} for call in calls]


def _finish_reason(engine_reason: str | None, calls: list) -> str | None:
    return "tool_calls" if calls else engine_reason


async def _complete(deltas: AsyncIterator, completion_id: str, model: str, n: int, prompt_tokens: int,
                    reading: ReplyReading) -> dict:
    parsers, reasons, tokens = [reading.start()[0] for _ in range(n)], [None] * n, [0] * n
    async for delta in deltas:
        parsers[delta.row].feed(delta.text)
        tokens[delta.row] = delta.completion_tokens
        reasons[delta.row] = delta.finish_reason or reasons[delta.row]
    choices = []
    for i, parser in enumerate(parsers):
        _, calls = parser.finish()  # what it released, all of it now, is in parser.released
        content, reasoning = parser.released[CONTENT], parser.released[REASONING]
        message = {"role": "assistant", "content": content or (None if calls else ""),
                   "reasoning_content": reasoning or None}
        if calls:
            message["tool_calls"] = _tool_call_items(calls)
        choices.append({"index": i, "message": message, "logprobs": None,
                        "finish_reason": _finish_reason(reasons[i], calls)})
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": _usage(prompt_tokens, sum(tokens))}


async def _sse(deltas: AsyncIterator, completion_id: str, model: str, n: int, prompt_tokens: int,
               include_usage: bool, reading: ReplyReading) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them: a role chunk per choice, reasoning and content
    chunks, each tool call in two chunks (id and name, then arguments), the finish chunks, an
    optional usage chunk, then `data: [DONE]`."""
    created = int(time.time())

    def event(choices: list[dict], usage: dict | None = None) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def delta_event(row: int, delta: dict, finish_reason: str | None = None) -> str:
        return event([{"index": row, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def piece_events(row: int, pieces: list) -> list[str]:
        return [delta_event(row, {"reasoning_content" if p.kind == REASONING else "content": p.text}) for p in pieces]

    parsers = []
    for i in range(n):
        yield delta_event(i, {"role": "assistant", "content": ""})
        parser, pieces = reading.start()
        parsers.append(parser)
        for chunk in piece_events(i, pieces):
            yield chunk
    tokens = [0] * n
    try:
        async for delta in deltas:
            tokens[delta.row] = delta.completion_tokens
            for chunk in piece_events(delta.row, parsers[delta.row].feed(delta.text)):
                yield chunk
            if delta.finish_reason:
                pieces, calls = parsers[delta.row].finish()
                for chunk in piece_events(delta.row, pieces):
                    yield chunk
                for k, call in enumerate(_tool_call_items(calls)):
                    yield delta_event(delta.row, {"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                                                  "function": {"name": call["function"]["name"],
                                                                               "arguments": ""}}]})
                    yield delta_event(delta.row, {"tool_calls": [{"index": k, "function": {
                        "arguments": call["function"]["arguments"]}}]})
                yield delta_event(delta.row, {}, _finish_reason(delta.finish_reason, calls))
    except Exception as err:  # headers are sent: report in the stream, as OpenAI does
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
        return
    if include_usage:
        yield event([], _usage(prompt_tokens, sum(tokens)))
    yield "data: [DONE]\n\n"
