"""The tokenizer's own chat template ("native"): rendering, and where each assistant turn sits in it.

Which tokens a row supervises is decided by position, never by searching for a turn's text (a
short answer such as `A` or `end` also occurs in the markup around it). For assistant message k:

1. Render the conversation before it with the generation prompt, `prompt(k)`: what the model is
   given when it is asked for that turn. Render the conversation up to and including it: it must
   extend `prompt(k)`, and what follows, up to and including the first end-of-turn token, is the
   turn as the template writes it: reasoning block, answer, tool calls, end-of-turn.
2. The turn is supervised in a row whose rendering extends `prompt(k)` with exactly that text, so
   every turn is learnt in the context the model has when it writes it. One rendering of the whole
   conversation holds every turn for templates that are prefix-preserving (most are).
3. Templates that are not (Qwen3) write a turn differently once later messages follow: without
   its reasoning, and without the empty think block a no-think generation prompt ends with. Such a
   turn is trained in a row of its own, the conversation up to that turn; the summary of the
   tokenize step says how many rows that made.

A turn with reasoning is asked for with `enable_thinking=True`, a plain one with `False`, so a
hybrid model (Qwen3) trained on plain answers learns its no-think mode as its template writes it.
What a template cannot render (reasoning it drops, tools it ignores) is refused in one sentence.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from .cli import UserError
from .conversation import Conversation, EncodedSample, Span, message_texts, reasoning_of

NATIVE = "native"
# Probe texts: stand for an answer, a reasoning, a tool name... in renderings we make ourselves.
SENTINEL = "\ue000\ue001"
PROBE_ANSWER, PROBE_REASONING = "zqprobeanswer", "zqprobereasoning"
PROBE_FUNCTION, PROBE_ARGUMENT, PROBE_RESULT, PROBE_TOOL = "zqprobefn", "zqprobearg", "zqproberesult", "zqprobetool"


def unsplittable(reason: str) -> UserError:
    from .templates import TEMPLATES

    return UserError(f"the tokenizer's chat template cannot be split into prompts and answers ({reason}); "
                     f"pass --template with a registry template, one of: {', '.join(sorted(TEMPLATES))}")


def model_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or "this model"


def render(tokenizer, messages: list[dict], tools: list[dict] | None, *, generation_prompt: bool,
           thinking: bool = False) -> str:
    """`apply_chat_template` as text; a template's own refusal (roles must alternate, ...) is a UserError."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                             add_generation_prompt=generation_prompt, enable_thinking=thinking)
    except TemplateError as err:  # e.g. raise_exception('...roles must alternate...'), no system role
        raise unsplittable(f"it refuses the conversation: {err}") from None


def special_texts(tokenizer) -> tuple[str, ...]:
    """The special tokens as text: a message containing one would be read as that token."""
    texts = set(tokenizer.all_special_tokens)
    texts |= {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return tuple(sorted((t for t in texts if t), key=len, reverse=True))


def per_tokenizer(cache: dict, tokenizer, build):
    """`build(tokenizer)`, made once per tokenizer object and chat template (a rendering needs it
    for every row): `cache` maps id(tokenizer) to (tokenizer, template, value)."""
    template = getattr(tokenizer, "chat_template", None)
    hit = cache.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer or hit[1] != template:
        hit = cache[id(tokenizer)] = (tokenizer, template, build(tokenizer))
    return hit[2]


_SPECIAL_PATTERNS: dict = {}


def refuse_special_texts(tokenizer, conversation: Conversation) -> None:
    """A UserError naming the first message that contains a special token as text."""
    pattern = per_tokenizer(_SPECIAL_PATTERNS, tokenizer,
                            lambda t: re.compile("|".join(map(re.escape, special_texts(t))) or "(?!)"))
    for index, message in enumerate(conversation.messages):
        for text in message_texts(message):
            if (match := pattern.search(text)) is not None:
                raise UserError(f"message {index} contains the special token {match.group()!r} as text, which "
                                "would be read as that token; remove it from the data")


@dataclass(frozen=True)
class Traits:
    """What a chat template writes, found once per tokenizer by rendering probe conversations."""

    end_of_turn: str  # what ends an answer, e.g. `<|im_end|>`, `<|eot_id|>`
    stop_texts: tuple[str, ...]  # end_of_turn, then EOS
    renders_reasoning: bool
    renders_tool_calls: bool
    renders_tool_results: bool
    renders_tools: bool  # tool definitions (`tools=`)
    arguments_as_text: bool  # tool-call arguments as a JSON string (DeepSeek-V3) instead of an object
    tool_call_content: str | None  # the content of a tool-call message with no text: None or ""


def _try_render(tokenizer, messages, tools=None, generation_prompt=False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception:  # a probe the template cannot render: any error means "not supported"
        return ""


def _tool_call_message(content: str | None, as_text: bool) -> dict:
    arguments = {PROBE_ARGUMENT: 1}
    return {"role": "assistant", "content": content, "tool_calls": [{
        "id": "call_0", "type": "function",
        "function": {"name": PROBE_FUNCTION, "arguments": json.dumps(arguments) if as_text else arguments}}]}


def _writes_call(text: str) -> bool:
    return PROBE_FUNCTION in text and PROBE_ARGUMENT in text


def _end_of_turn(tokenizer, specials: tuple[str, ...]) -> str:
    text = render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}],
                  None, generation_prompt=False)
    if SENTINEL not in text:
        raise unsplittable("it does not write the assistant's answer as given")
    after = text[text.index(SENTINEL) + len(SENTINEL):]
    stripped = after.lstrip()
    token = next((s for s in specials if stripped.startswith(s)), None)
    if token is None:
        raise unsplittable("no special token ends an answer")
    return after[:len(after) - len(stripped)] + token


_TRAITS: dict = {}


def traits_of(tokenizer) -> Traits:
    """The tokenizer's template `Traits`, probed once (the probes are a few renderings)."""
    if not getattr(tokenizer, "chat_template", None):
        from .templates import TEMPLATES

        raise UserError("--template native needs a tokenizer with a chat_template, and this one has "
                        f"none; pass --template with one of: {', '.join(sorted(TEMPLATES))}")
    if not getattr(tokenizer, "is_fast", False):
        raise unsplittable("a slow tokenizer gives no character offsets to locate the answers")
    return per_tokenizer(_TRAITS, tokenizer, _probe_traits)


def _probe_traits(tokenizer) -> Traits:
    end_of_turn = _end_of_turn(tokenizer, special_texts(tokenizer))
    stops = tuple(dict.fromkeys(t for t in (end_of_turn.strip(), tokenizer.eos_token) if t))
    user = {"role": "user", "content": "Hi"}
    reasoning = _try_render(tokenizer, [user, {"role": "assistant", "content": PROBE_ANSWER,
                                               "reasoning_content": PROBE_REASONING}])
    call_form = next((form for form in ((None, False), ("", False), (None, True), ("", True))
                      if _writes_call(_try_render(tokenizer, [user, _tool_call_message(*form)]))), None)
    call = _tool_call_message(*(call_form or (None, False)))
    results = _try_render(tokenizer, [user, call, {"role": "tool", "tool_call_id": "call_0", "content": PROBE_RESULT}])
    tools = _try_render(tokenizer, [user], [{"type": "function", "function": {
        "name": PROBE_TOOL, "description": "a probe", "parameters": {"type": "object", "properties": {}}}}],
        generation_prompt=True)
    return Traits(
        end_of_turn=end_of_turn, stop_texts=stops, renders_reasoning=PROBE_REASONING in reasoning,
        renders_tool_calls=call_form is not None, renders_tool_results=call_form is not None and PROBE_RESULT in results,
        renders_tools=PROBE_TOOL in tools, arguments_as_text=bool(call_form and call_form[1]),
        tool_call_content=call_form[0] if call_form else None,
    )


def prepared_messages(tokenizer, traits: Traits, conversation: Conversation) -> list[dict]:
    """The messages in the form the template renders (tool-call arguments as an object or a JSON
    string, empty tool-call content as None or ""), after checking it can render all of them."""
    name = model_name(tokenizer)
    if conversation.tools and not traits.renders_tools:
        raise UserError(f"the chat template of {name} does not render tool definitions (`tools`); "
                        "use a model whose chat template supports tools, or describe the tools in the system message")
    refuse_special_texts(tokenizer, conversation)
    prepared = []
    for message in conversation.messages:
        if message.get("reasoning_content") and not traits.renders_reasoning:
            raise UserError(f"the chat template of {name} does not render `reasoning_content`, so the reasoning "
                            "would be lost; drop the field or write the reasoning into the reply as <think>…</think>")
        if message["role"] == "tool" and not traits.renders_tool_results:
            raise UserError(f"the chat template of {name} cannot render tool results (`tool` messages); "
                            "use a model whose chat template supports tools")
        if message.get("tool_calls"):
            if not traits.renders_tool_calls:
                raise UserError(f"the chat template of {name} cannot render tool calls (`tool_calls`); "
                                "use a model whose chat template supports tools")
            message = dict(message, tool_calls=[_call_form(call, traits) for call in message["tool_calls"]])
            if not message.get("content"):
                message["content"] = traits.tool_call_content
        prepared.append(message)
    return prepared


def _call_form(call: dict, traits: Traits) -> dict:
    function = call["function"]
    arguments = function["arguments"]
    if traits.arguments_as_text and not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    elif not traits.arguments_as_text and isinstance(arguments, str):
        arguments = json.loads(arguments)
    return {**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}}


class _Renderings:
    """Renderings of the prefixes of one conversation, each made at most once."""

    def __init__(self, tokenizer, messages: list[dict], tools: list[dict] | None):
        self.tokenizer, self.messages, self.tools = tokenizer, messages, tools
        self.made: dict[tuple, str] = {}

    def __call__(self, count: int, generation_prompt: bool, thinking: bool) -> str:
        key = (count, generation_prompt, thinking)
        if key not in self.made:
            self.made[key] = render(self.tokenizer, self.messages[:count], self.tools,
                                    generation_prompt=generation_prompt, thinking=thinking)
        return self.made[key]


def _written_turn(renderings: _Renderings, traits: Traits, index: int, thinking: bool) -> tuple[str, str]:
    """(generation prompt for assistant message `index`, the turn as the template writes it after
    that prompt, up to and including its first end-of-turn token)."""
    prompt = renderings(index, True, thinking)
    rendered = renderings(index + 1, False, thinking)
    if not rendered.startswith(prompt):
        raise unsplittable(f"assistant message {index} is not written where its generation prompt ends")
    end = _first_stop_end(rendered, len(prompt), traits.stop_texts)
    if end is None:
        raise UserError(f"the chat template of {model_name(renderings.tokenizer)} writes no end-of-turn token "
                        f"({' or '.join(map(repr, traits.stop_texts))}) after assistant message {index}, so a "
                        "model trained on it would not learn to stop there")
    return prompt, rendered[len(prompt):end]


def written_turn(tokenizer, conversation: Conversation, thinking: bool = False) -> str:
    """How the tokenizer's own template writes the last message of `conversation` (an assistant
    message) after its generation prompt, end-of-turn token included."""
    traits = traits_of(tokenizer)
    renderings = _Renderings(tokenizer, prepared_messages(tokenizer, traits, conversation), conversation.tools)
    return _written_turn(renderings, traits, len(conversation.messages) - 1, thinking)[1]


def _first_stop_end(text: str, start: int, stops: tuple[str, ...]) -> int | None:
    found = [(position, len(stop)) for stop in stops if (position := text.find(stop, start)) >= 0]
    return min(position + length for position, length in found) if found else None


@dataclass(frozen=True)
class NativeTemplate:
    """The tokenizer's own `chat_template` (see the module docstring)."""

    name: str = NATIVE
    # Inference only: let a hybrid reasoner (Qwen3) think before answering. Training decides per turn.
    enable_thinking: bool = False

    def with_thinking(self, enable_thinking: bool) -> NativeTemplate:
        return replace(self, enable_thinking=enable_thinking)

    # --- Training rows ---------------------------------------------------------------------------

    def encode_conversation(self, tokenizer, conversation: Conversation,
                            targets: list[int] | None = None) -> list[EncodedSample]:
        """Rows whose spans supervise the assistant messages `targets` (default: all of them)."""
        traits = traits_of(tokenizer)
        messages = prepared_messages(tokenizer, traits, conversation)
        targets = conversation.assistant_indices() if targets is None else targets
        renderings = _Renderings(tokenizer, messages, conversation.tools)
        last = len(messages)
        full = renderings(last, False, reasoning_of(messages[-1]) is not None)
        in_full, own_rows = [], []
        for index in targets:
            span = self._locate(renderings, traits, index, full)
            if span is not None:
                in_full.append((*span, index))
            else:
                own_rows.append(index)
        samples = []
        for index in own_rows:  # turns the full rendering writes otherwise than at inference
            text = renderings(index + 1, False, reasoning_of(messages[index]) is not None)
            span = self._locate(renderings, traits, index, text)
            if span is None:
                raise unsplittable(f"assistant message {index} is not written where its generation prompt ends")
            samples.append(self._sample(tokenizer, text, [(*span, index)], Conversation(
                conversation.messages[:index + 1], conversation.tools)))
        if in_full:
            samples.append(self._sample(tokenizer, full, in_full, conversation))
        return samples

    def _locate(self, renderings: _Renderings, traits: Traits, index: int, row: str) -> tuple[int, int] | None:
        """Character span of assistant message `index` in the rendering `row`, or None when `row`
        does not write it as at inference (after its generation prompt, as the template writes it
        there): it then needs a row of its own."""
        prompt, turn = _written_turn(renderings, traits, index, reasoning_of(renderings.messages[index]) is not None)
        if row.startswith(prompt) and row.startswith(turn, len(prompt)):
            return len(prompt), len(prompt) + len(turn)
        return None

    def _sample(self, tokenizer, text: str, spans: list[tuple[int, int, int]],
                conversation: Conversation) -> EncodedSample:
        """Tokenize `text` up to the last span (what follows, a newline or an unasked generation
        prompt, is left out) and turn character spans into token spans."""
        text = text[:max(end for _, end, _ in spans)]
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        token_spans = []
        for start, end, index in sorted(spans):
            first, stop = token_span(text, offsets, start, end)
            token_spans.append(Span(first, stop, index, reasoning_of(conversation.messages[index]) is not None))
        return EncodedSample(list(encoding["input_ids"]), token_spans, conversation)

    # --- Inference -------------------------------------------------------------------------------

    def prompt_text(self, tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The text a model is given to write the next assistant message."""
        prepared = prepared_messages(tokenizer, traits_of(tokenizer), Conversation(messages, tools))
        return render(tokenizer, prepared, tools, generation_prompt=True, thinking=self.enable_thinking)

    def encode_chat(self, tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The ids a model is given to write the next assistant message."""
        return tokenizer(self.prompt_text(tokenizer, messages, tools), add_special_tokens=False)["input_ids"]

    def end_of_turn(self, tokenizer) -> str:
        """The text the template writes after an answer (e.g. `<|im_end|>`)."""
        return traits_of(tokenizer).end_of_turn

    def stop_token_ids(self, tokenizer) -> list[int]:
        """The end-of-turn special token, then EOS (a model may still end on either)."""
        return list(dict.fromkeys(tokenizer.convert_tokens_to_ids(t) for t in traits_of(tokenizer).stop_texts))

    def prompt_head_length(self, tokenizer, system: str | None) -> int:
        """Tokens before the question in a first-turn prompt."""
        messages = Conversation.from_turns([(SENTINEL, None)], system).messages
        text = render(tokenizer, messages, None, generation_prompt=True, thinking=self.enable_thinking)
        cut = text.index(SENTINEL)
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return sum(1 for _, end in offsets if end <= cut)

    def source(self, tokenizer) -> dict:
        return {"kind": "native", "chat_template_sha256": chat_template_hash(tokenizer)}


def chat_template_hash(tokenizer) -> str | None:
    """A short hash of the tokenizer's chat_template text (None without one)."""
    import hashlib

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def token_span(text: str, offsets, start: int, end: int) -> tuple[int, int]:
    """[first, stop) token indices covering characters [start, end); refused when a token straddles
    an edge with text other than whitespace outside the span."""
    first = next(i for i, (_, token_end) in enumerate(offsets) if token_end > start)
    stop = next((i for i, (token_start, _) in enumerate(offsets) if token_start >= end), len(offsets))
    if text[offsets[first][0]:start].strip() or offsets[stop - 1][1] != end:
        raise unsplittable(f"a token crosses the edge of the answer {short(text[start:end])}")
    return first, stop


def short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
