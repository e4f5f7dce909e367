"""One training or chat sample as chat messages, and the token spans a template supervises in it.

A `Conversation` is OpenAI-style: an optional system message, then user, assistant and tool
messages, plus the `tools` (JSON-schema function list) the assistant may call. An assistant
message may carry `reasoning_content` (the DeepSeek / vLLM convention) or a reply that begins
with `<think>…</think>`, and `tool_calls` (`{"type": "function", "function": {"name", "arguments"}}`).
`records.py` reads files into this shape; the templates encode it (`templates.encode_conversation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .cli import UserError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class Conversation:
    messages: list[dict]
    tools: list[dict] | None = None

    @classmethod
    def from_turns(cls, turns: Sequence[tuple[str, str | None]], system: str | None = None) -> Conversation:
        """(question, answer) turns as messages; a None answer (the question still to answer) is left out."""
        messages = [{"role": "system", "content": system}] if system else []
        for query, answer in turns:
            messages.append({"role": "user", "content": query})
            if answer is not None:
                messages.append({"role": "assistant", "content": answer})
        return cls(messages)

    @property
    def system(self) -> str | None:
        first = self.messages[0] if self.messages else None
        return first["content"] if first is not None and first["role"] == "system" else None

    @property
    def turns(self) -> list[tuple[str, str]]:
        """(question, answer) pairs of a plain conversation; a UserError for tools or a missing answer."""
        plain = [m for m in self.messages if m["role"] != "system"]
        roles = [m["role"] for m in plain]
        if self.tools or roles != ["user", "assistant"] * (len(plain) // 2) or any(m.get("tool_calls") for m in plain):
            raise UserError("this needs plain question/answer turns (user, assistant, user, ...), "
                            "without tool calls; the record has " + ", ".join(roles))
        return [(plain[i]["content"], plain[i + 1]["content"]) for i in range(0, len(plain), 2)]

    def assistant_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]

    def has_tool_messages(self) -> bool:
        return any(m["role"] == "tool" or m.get("tool_calls") for m in self.messages)

    def exchanges(self) -> list[int]:
        """Where each exchange starts: every user message (tool results belong to the exchange they answer)."""
        return [i for i, m in enumerate(self.messages) if m["role"] == "user"]

    def without_oldest_exchange(self, targets: Sequence[int]) -> tuple[Conversation, list[int]] | None:
        """The conversation less its first exchange (the system message stays), with `targets`
        (message indices) renumbered; None when one exchange is all there is."""
        starts = self.exchanges()
        if len(starts) < 2:
            return None
        head = self.messages[:starts[0]]
        removed = starts[1] - starts[0]
        kept = [t - removed for t in targets if t >= starts[1]]
        return Conversation(head + self.messages[starts[1]:], self.tools), kept


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a reply that begins with `<think>…</think>` (or whose prompt opened the
    block, so the reply holds only its end); (None, text) for a reply without one. An empty block
    (a no-think answer) has no reasoning; an unclosed one is all reasoning."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        stripped = stripped[len(THINK_OPEN):]
    elif THINK_CLOSE not in stripped:
        return None, text
    reasoning, closed, answer = stripped.partition(THINK_CLOSE)
    if not closed:
        return reasoning.strip("\n") or None, ""
    return reasoning.strip("\n") or None, answer.lstrip("\n")


def reasoning_of(message: dict) -> str | None:
    """The reasoning of an assistant message: `reasoning_content`, else a leading `<think>…</think>`."""
    return message.get("reasoning_content") or split_reasoning(message.get("content") or "")[0]


def answer_of(message: dict) -> str:
    """The content of an assistant message without a leading `<think>…</think>` block."""
    content = message.get("content") or ""
    return content if message.get("reasoning_content") else split_reasoning(content)[1]


def message_texts(message: dict) -> list[str]:
    """Every text a message carries (content, reasoning, tool names and arguments), for checks on its characters."""
    texts = [message.get("content") or "", message.get("reasoning_content") or ""]
    for call in message.get("tool_calls") or []:
        function = call.get("function", {})
        texts += [function.get("name", ""), str(function.get("arguments", ""))]
    return [t for t in texts if t]


@dataclass
class Span:
    """Tokens [start, stop) of one assistant message (index `message`) as the template writes it,
    its end-of-turn token included."""

    start: int
    stop: int
    message: int
    reasoning: bool = False


@dataclass
class EncodedSample:
    """One training row: token ids and the supervised spans in them. `conversation` is what was
    rendered (a prefix of the record when an earlier reasoning turn needs a row of its own)."""

    input_ids: list[int]
    spans: list[Span]
    conversation: Conversation = field(repr=False)

    @property
    def targets(self) -> list[int]:
        return [span.message for span in self.spans]
