"""A model's reply, split as it streams into its reasoning, its answer and its tool calls.

A reasoning model writes `<think>…</think>` before its answer (or its prompt opens the block and
the reply holds only its end); the answer may end in tool calls written in the template's own
syntax (`tool_calls.py`). `ReplyParser` takes the reply piece by piece and releases each part as
soon as it is final: reasoning, then answer text. Text that may still turn out to be markup (half
a `</think>`, the start of a call) is held back until that is decided, and calls come out whole
at the end. Joining what a stream released gives exactly what reading the whole reply gives, so
the server's streaming and non-streaming answers agree, and chat.py, the web UI and the server
split a reply the same way. Reasoning and answer are split as `conversation.split_reasoning` does:
the newlines around the reasoning and at the start of the answer are the template's, not the model's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .conversation import THINK_CLOSE, THINK_OPEN
from .generation import BatchDecoder, GenerationSettings
from .templates import AnyTemplate, encode_prompt, stop_token_ids
from .tool_calls import ToolCall, ToolCallFormat

REASONING, CONTENT = "reasoning", "content"


@dataclass(frozen=True)
class ReplyPiece:
    kind: str  # REASONING or CONTENT
    text: str


def prompt_opens_reasoning(tokenizer, prompt_ids: Sequence[int]) -> bool:
    """Whether a prompt ends inside an open think block, so the reply starts with reasoning."""
    return tokenizer.decode(list(prompt_ids[-8:])).rstrip().endswith(THINK_OPEN)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is the start of `marker`."""
    return next((n for n in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:n])), 0)


class ReplyParser:
    """Feed the pieces of one reply; `finish` once it has ended. With `tool_format`, calls in that
    syntax are read out of the answer (those naming a function outside `tool_names`, when given,
    leave the whole answer plain text); `in_reasoning`: the prompt opened the think block."""

    def __init__(self, tool_format: ToolCallFormat | None = None, tool_names: Sequence[str] | None = None,
                 in_reasoning: bool = False):
        self.format = tool_format
        self.tool_names = None if tool_names is None else frozenset(tool_names)
        self.in_reasoning = in_reasoning
        self.text = ""
        self.released = {REASONING: "", CONTENT: ""}  # the text of each part released so far

    def feed(self, piece: str) -> list[ReplyPiece]:
        """Add text to the reply; the parts that became final."""
        self.text += piece
        reasoning, answer = self._split(final=False)
        return self._release(reasoning, self._answer_so_far(answer))

    def finish(self) -> tuple[list[ReplyPiece], list[ToolCall]]:
        """The parts still held back, and the tool calls the reply ends with."""
        reasoning, answer = self._split(final=True)
        content, calls = answer, []
        parsed = self.format.parse(answer) if self.format is not None else None
        if parsed is not None and (self.tool_names is None or all(c.name in self.tool_names for c in parsed[1])):
            content, calls = parsed[0].rstrip(), parsed[1]
        return self._release(reasoning, content), calls

    def _split(self, final: bool) -> tuple[str, str]:
        """(reasoning, answer) as far as they are decided; while streaming, the reasoning without a
        tail that may be newlines before `</think>` or the start of it."""
        text, start = self.text, 0
        if not self.in_reasoning:
            stripped = text.lstrip()
            if stripped.startswith(THINK_OPEN):
                start = len(text) - len(stripped) + len(THINK_OPEN)
            elif THINK_OPEN.startswith(stripped) and not final:
                return "", ""  # may still become `<think>`
            else:
                return "", text
        region = text[start:]
        end = region.find(THINK_CLOSE)
        if end >= 0:
            return region[:end].strip("\n"), region[end + len(THINK_CLOSE):].lstrip("\n")
        if final:  # an unclosed block is all reasoning
            return region.strip("\n"), ""
        region = region[:len(region) - _partial_suffix(region, THINK_CLOSE)]
        return region.strip("\n"), ""

    def _answer_so_far(self, answer: str) -> str:
        """The answer text that is final while the reply still streams: everything before a call
        (or what may become one), less the space before it."""
        if self.format is None:
            return answer
        start = self.format.call_start(answer)
        if start is None:
            held = self.format.undecided(answer)
            if held == 0 and self.format.leading_only:
                return answer  # the reply began with text: it holds no call
            answer = answer[:len(answer) - held]
        else:
            answer = answer[:start]
        return answer.rstrip()

    def _release(self, reasoning: str, content: str) -> list[ReplyPiece]:
        pieces = []
        for kind, text in ((REASONING, reasoning), (CONTENT, content)):
            if len(text) > len(self.released[kind]):
                pieces.append(ReplyPiece(kind, text[len(self.released[kind]):]))
                self.released[kind] = text
        return pieces


def read_reply(text: str, tool_format: ToolCallFormat | None = None, tool_names: Sequence[str] | None = None,
               in_reasoning: bool = False) -> tuple[str | None, str, list[ToolCall]]:
    """(reasoning or None, answer, tool calls) of a whole reply."""
    parser = ReplyParser(tool_format, tool_names, in_reasoning)
    pieces = parser.feed(text)
    rest, calls = parser.finish()
    reasoning = "".join(p.text for p in pieces + rest if p.kind == REASONING)
    return reasoning or None, "".join(p.text for p in pieces + rest if p.kind == CONTENT), calls


def stream_reply_parts(model, tokenizer, template: AnyTemplate, query: str,
                       history: Sequence[tuple[str, str]] = (), system: str | None = None,
                       settings: GenerationSettings | None = None) -> Iterator[ReplyPiece]:
    """Like `generation.stream_reply`, with each piece marked as reasoning or answer."""
    settings = settings or GenerationSettings()
    prompt = encode_prompt(tokenizer, template, query, history, system)
    parser = ReplyParser(in_reasoning=prompt_opens_reasoning(tokenizer, prompt))
    for deltas in BatchDecoder(model, tokenizer, [prompt], [settings], stop_token_ids(tokenizer, template)):
        for delta in deltas:
            yield from parser.feed(delta.text)
    yield from parser.finish()[0]
