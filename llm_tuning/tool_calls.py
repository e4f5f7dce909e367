"""Tool calls in a model's reply, read in the syntax its own chat template writes them.

Two syntaxes are known:
- `hermes` (Qwen2.5/Qwen3, Hermes, many others): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  one block per call, optionally after some text;
- `json` (Llama-3.1/3.2/3.3): the whole reply is `{"name": ..., "parameters": {...}}` (optionally after
  `<|python_tag|>`; several calls separated by `;`).
DeepSeek-V3's official template is not among them: it writes a tool call only for `content` None,
which transformers 5 drops before rendering, so it renders no call to read back.

Which one a model uses is never guessed from its name: `tool_call_format(tokenizer)` renders a probe
tool call with the tokenizer's own template and keeps the syntax whose parser reads that same call
back. The same rendering tells how a call opens (`call_opening`), so a server can start the reply
with a call to a named function.

A reply that does not parse is plain text, never an error: `parse` returns None when any part of
what looks like a call is malformed, so no text is ever dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .conversation import Conversation
from .native_template import PROBE_ARGUMENT, PROBE_FUNCTION, per_tokenizer, traits_of, written_turn


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object as text, as the OpenAI API returns it


def _call(name, arguments) -> ToolCall | None:
    """A ToolCall from parsed values; None unless the name is text and the arguments a JSON object
    (or a JSON object written as text)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return ToolCall(name, json.dumps(arguments, ensure_ascii=False))


class ToolCallFormat:
    """One syntax: where a call starts in a reply, and the reply read as (content, calls)."""

    name: str
    marker: str  # the text every call of this syntax begins with
    leading_only = False  # calls only as the whole reply, never after text

    def call_start(self, text: str) -> int | None:
        """Where the first call begins in `text`, if one does."""
        if self.leading_only:  # the call is the reply, from its first character on
            return len(text) - len(text.lstrip()) if _after_leading_space(text).startswith(self.marker) else None
        found = text.find(self.marker)
        return found if found >= 0 else None

    def undecided(self, text: str) -> int:
        """How many characters at the end of `text` may still turn into the start of a call (a
        streaming reply holds them back until that is decided)."""
        if self.leading_only:
            body = _after_leading_space(text)
            return len(text) if self.marker.startswith(body) else 0
        for length in range(min(len(self.marker) - 1, len(text)), 0, -1):
            if text.endswith(self.marker[:length]):
                return length
        return 0

    def parse(self, text: str) -> tuple[str, list[ToolCall]] | None:
        """(the text before the calls, the calls) when `text` holds well-formed calls and nothing
        else after them; None when it has none or any is malformed (then all of it is content)."""
        raise NotImplementedError


def _after_leading_space(text: str) -> str:
    return text.lstrip().removeprefix("<|python_tag|>").lstrip()


class HermesFormat(ToolCallFormat):
    name = "hermes"
    marker = "<tool_call>"
    closer = "</tool_call>"

    def parse(self, text):
        start = self.call_start(text)
        if start is None:
            return None
        calls, rest = [], text[start:]
        while rest.strip():
            rest = rest.lstrip()
            body, closed, after = rest[len(self.marker):].partition(self.closer)
            if not rest.startswith(self.marker) or not closed:
                return None
            try:
                value = json.loads(body)
            except ValueError:
                return None
            call = _call(value.get("name"), value.get("arguments", value.get("parameters"))) \
                if isinstance(value, dict) else None
            if call is None:
                return None
            calls.append(call)
            rest = after
        return text[:start], calls


class JsonFormat(ToolCallFormat):
    name = "json"
    marker = "{"
    leading_only = True

    def parse(self, text):
        body = _after_leading_space(text)
        if not body.startswith(self.marker):
            return None
        decoder, position, calls = json.JSONDecoder(), 0, []
        while position < len(body):
            try:
                value, position = decoder.raw_decode(body, position)
            except ValueError:
                return None
            call = _call(value.get("name"), value.get("parameters", value.get("arguments"))) \
                if isinstance(value, dict) else None
            if call is None:
                return None
            calls.append(call)
            rest = body[position:].lstrip()
            rest = rest[1:].lstrip() if rest.startswith(";") else rest
            position = len(body) - len(rest)
        return "", calls


FORMATS: tuple[ToolCallFormat, ...] = (HermesFormat(), JsonFormat())


# --- Which syntax a tokenizer's template writes, by round trip ------------------------------------

_PROBE_CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_0", "type": "function", "function": {"name": PROBE_FUNCTION, "arguments": {PROBE_ARGUMENT: 1}}}]}
_PROBE_TOOLS = [{"type": "function", "function": {
    "name": PROBE_FUNCTION, "description": "a probe",
    "parameters": {"type": "object", "properties": {PROBE_ARGUMENT: {"type": "integer"}}}}}]
_PROBED: dict = {}


def probe_call_turn(tokenizer, thinking: bool = False) -> str | None:
    """The assistant turn the tokenizer's own template writes for one probe call, from the end of
    the generation prompt to its end-of-turn; None when the template cannot write tool calls."""
    made = per_tokenizer(_PROBED, tokenizer, lambda _: {})  # thinking -> turn
    if thinking not in made:
        made[thinking] = _probe_call_turn(tokenizer, thinking)
    return made[thinking]


def _probe_call_turn(tokenizer, thinking: bool) -> str | None:
    try:
        traits = traits_of(tokenizer)
        if not traits.renders_tool_calls:
            return None
        conversation = Conversation([{"role": "user", "content": "Hi"}, _PROBE_CALL],
                                    _PROBE_TOOLS if traits.renders_tools else None)
        turn = written_turn(tokenizer, conversation, thinking)
    except Exception:  # any template that cannot render the probe writes no tool calls we can read
        return None
    return turn.removesuffix(next(stop for stop in traits.stop_texts if turn.endswith(stop)))


def tool_call_format(tokenizer) -> ToolCallFormat | None:
    """The syntax whose parser reads the template's own probe call back exactly; None when the
    template writes no tool calls, or writes them in a syntax none of FORMATS reads."""
    turn = probe_call_turn(tokenizer)
    if turn is None:
        return None
    expected = [ToolCall(PROBE_FUNCTION, json.dumps({PROBE_ARGUMENT: 1}))]
    for candidate in FORMATS:
        parsed = candidate.parse(turn)
        if parsed is not None and not parsed[0].strip() and parsed[1] == expected:
            return candidate
    return None


def call_opening(tokenizer, thinking: bool = False, name: str | None = None) -> str:
    """How the template opens an assistant turn that is a tool call: up to the function name (a model
    given it picks the function), or with `name`, up to the arguments (it calls `name`). Taken from
    the probe turn, so it is exactly what the model was trained to write."""
    turn = probe_call_turn(tokenizer, thinking)
    if turn is None or PROBE_FUNCTION not in turn or PROBE_ARGUMENT not in turn:
        raise ValueError("the chat template writes no tool calls")
    name_at = turn.index(PROBE_FUNCTION)
    if name is None:
        return turn[:name_at]
    arguments_at = turn.rfind("{", 0, turn.index(PROBE_ARGUMENT))
    return turn[:name_at] + name + turn[name_at + len(PROBE_FUNCTION):arguments_at]
