"""Chat generation on top of the template registry: the prompt is exactly the training prompt.

One decoding loop serves the terminal chat, the web UI, the OpenAI-compatible server and eval.py:
`BatchDecoder` runs several prompts at once (left-padded, one KV cache), each row with its own
sampling settings, stop strings, stop token ids and seed, and yields text pieces as they are
decoded. `generate_reply` / `stream_reply` are the one-prompt conveniences on top of it.

    settings = GenerationSettings(max_new_tokens=128, temperature=0.7, top_p=0.9, stop=("\\n\\n",))
    for piece in stream_reply(model, tokenizer, template, "你好", settings=settings):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .cli import UserError
from .templates import Template, encode_prompt, stop_token_ids


@dataclass
class GenerationSettings:
    """How one reply is sampled. The defaults decode greedily."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # HF-style: divides the logits of every token already seen
    top_k: int = 0  # 0 means no top-k cut
    # OpenAI-style: subtract penalty * count (frequency) or penalty * [count > 0] (presence),
    # counting the tokens generated so far.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = ()  # the reply ends before the first of these strings
    stop_token_ids: tuple[int, ...] = ()  # besides the template's own stop tokens
    seed: int | None = None  # fixes the sampling of this reply, whatever else is in the batch

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UserError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        self.stop = tuple(s for s in self.stop if s)
        self.stop_token_ids = tuple(self.stop_token_ids)


@dataclass
class Delta:
    """What one row of a batch produced in one step: new text, and why it ended (if it did)."""

    row: int
    text: str
    finish_reason: str | None = None  # "stop" (stop token/string) or "length"
    completion_tokens: int = 0  # tokens generated so far, the final stop token included


# --- Text out of token ids, piece by piece ----------------------------------------------------


class ReplyText:
    """Incremental detokenization of one reply, cut at the first stop string.

    Text is released only when it is final: not the half of a multi-byte character (decoded as
    U+FFFD until its last byte arrives), and not a tail that could still grow into a stop string."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.released = 0
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a generated token; the newly final text (may be empty). Sets `stopped` on a stop string."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = text[:cut]
            return self._release(len(self.text))
        self.text = text
        if text.endswith("\ufffd"):
            return ""
        return self._release(len(text) - self._stop_prefix_length(text))

    def finish(self) -> str:
        """The text still held back, once the reply has ended."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        piece = self.text[self.released:end] if end > self.released else ""
        self.released = max(self.released, end)
        return piece

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of a stop string."""
        best = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:length]):
                    best = length
                    break
        return best


# --- Choosing the next token --------------------------------------------------------------------


def adjust_logits(logits: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor,
                  settings: Sequence[GenerationSettings]) -> torch.Tensor:
    """Apply each row's repetition / frequency / presence penalties to next-token logits [B, V].

    `seen` [B, V] marks tokens in the prompt or the reply (repetition penalty, as HF does it);
    `counts` [B, V] counts tokens of the reply only (OpenAI's penalties)."""
    logits = logits.float()
    rep = logits.new_tensor([s.repetition_penalty for s in settings])[:, None]
    if (rep != 1).any():
        penalised = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalised, logits)
    freq = logits.new_tensor([s.frequency_penalty for s in settings])[:, None]
    pres = logits.new_tensor([s.presence_penalty for s in settings])[:, None]
    if (freq != 0).any() or (pres != 0).any():
        logits = logits - freq * counts - pres * (counts > 0).float()
    return logits


def sample_token(logits: torch.Tensor, settings: GenerationSettings,
                 generator: torch.Generator | None) -> int:
    """One token from one row's logits [V]: greedy at temperature 0, else top-k/top-p sampling."""
    if settings.temperature == 0:
        return int(logits.argmax())
    logits = logits / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = probs.cumsum(-1) - probs >= settings.top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


# --- The decoding loop --------------------------------------------------------------------------


class BatchDecoder:
    """Decode several prompts together; iterate to get each step's `Delta`s.

    Rows are left-padded into one batch with one KV cache. A row ends on one of its stop token
    ids, a stop string, its max_new_tokens, or `cancel(row)`; the batch ends when every row has.
    """

    def __init__(self, model, tokenizer, prompts: Sequence[Sequence[int]],
                 settings: Sequence[GenerationSettings], stop_ids: Sequence[int] = ()):
        if len(prompts) != len(settings) or not prompts:
            raise ValueError("one GenerationSettings per prompt, and at least one prompt")
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = [list(p) for p in prompts]
        self.settings = list(settings)
        self.stop_ids = [set(stop_ids) | set(s.stop_token_ids) for s in settings]
        self.texts = [ReplyText(tokenizer, s.stop) for s in settings]
        self.done = [False] * len(prompts)
        self.generated = [0] * len(prompts)

    def cancel(self, row: int) -> None:
        """Stop generating for `row` (its client went away); the others go on."""
        self.done[row] = True

    def _generators(self, device) -> list[torch.Generator | None]:
        generators = []
        for s in self.settings:
            if s.seed is None or s.temperature == 0:
                generators.append(None)
            else:
                generators.append(torch.Generator(device=device).manual_seed(s.seed))
        return generators

    @torch.no_grad()
    def __iter__(self) -> Iterator[list[Delta]]:
        device = self.model.device
        batch, vocab = len(self.prompts), self.model.get_output_embeddings().weight.shape[0]
        width = max(len(p) for p in self.prompts)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
        attention_mask = torch.zeros((batch, width), dtype=torch.long, device=device)
        seen = torch.zeros((batch, vocab), dtype=torch.bool, device=device)
        for row, prompt in enumerate(self.prompts):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, device=device)
            attention_mask[row, width - len(prompt):] = 1
            seen[row, input_ids[row, width - len(prompt):]] = True
        counts = torch.zeros((batch, vocab), device=device)
        generators = self._generators(device)
        # Left padding: positions count real tokens only, so a padded row sees what it would alone.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache_kwarg = _cache_argument_name(self.model)
        # peft prompt/prefix/p-tuning prepend virtual tokens on every forward and ignore position
        # ids: for them, re-run the whole sequence each step (exact for one row; rows of a padded
        # batch see shifted positions).
        incremental = not _is_prompt_learning(self.model)
        out = self._forward(input_ids, attention_mask, position_ids, incremental)
        while True:
            logits = adjust_logits(out.logits[:, -1, :vocab], seen, counts, self.settings)
            next_ids = torch.full((batch,), pad_id, dtype=torch.long, device=device)
            deltas = []
            for row in range(batch):
                if self.done[row]:
                    continue
                token = sample_token(logits[row], self.settings[row], generators[row])
                next_ids[row] = token
                deltas.append(self._advance(row, token))
            if deltas:
                yield deltas
            if all(self.done):
                return
            seen[torch.arange(batch), next_ids] = True
            counts[torch.arange(batch), next_ids] += 1
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
            if incremental:
                position_ids = position_ids[:, -1:] + 1
                cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                out = self.model(input_ids=next_ids[:, None], attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=True, **{cache_kwarg: cache})
            else:
                input_ids = torch.cat([input_ids, next_ids[:, None]], dim=1)
                out = self._forward(input_ids, attention_mask, None, incremental)

    def _forward(self, input_ids, attention_mask, position_ids, incremental: bool):
        if incremental:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=True)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    def _advance(self, row: int, token: int) -> Delta:
        self.generated[row] += 1
        text = self.texts[row]
        if token in self.stop_ids[row]:
            self.done[row] = True
            return Delta(row, text.finish(), "stop", self.generated[row])
        piece = text.push(token)
        if text.stopped:
            self.done[row] = True
            return Delta(row, piece, "stop", self.generated[row])
        if self.generated[row] >= self.settings[row].max_new_tokens:
            self.done[row] = True
            return Delta(row, piece + text.finish(), "length", self.generated[row])
        return Delta(row, piece, None, self.generated[row])


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _cache_argument_name(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; remote-code models keep the old name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def generate_batch(model, tokenizer, prompts: Sequence[Sequence[int]],
                   settings: Sequence[GenerationSettings], stop_ids: Sequence[int] = ()) -> list[str]:
    """Whole replies to several prompts, decoded together."""
    replies = [""] * len(prompts)
    for deltas in BatchDecoder(model, tokenizer, prompts, settings, stop_ids):
        for delta in deltas:
            replies[delta.row] += delta.text
    return replies


# --- Chat: a query after a history, with the family template --------------------------------


def generate_reply(
    model, tokenizer, template: Template, query: str,
    history: Sequence[tuple[str, str]] = (), system: str | None = None,
    settings: GenerationSettings | None = None,
) -> str:
    """The model's whole reply to `query` after `history`, without the stop token."""
    return "".join(stream_reply(model, tokenizer, template, query, history, system, settings))


def stream_reply(
    model, tokenizer, template: Template, query: str,
    history: Sequence[tuple[str, str]] = (), system: str | None = None,
    settings: GenerationSettings | None = None,
) -> Iterator[str]:
    """Yield the reply piece by piece as it is generated."""
    settings = settings or GenerationSettings()
    prompt = encode_prompt(tokenizer, template, query, history, system)
    decoder = BatchDecoder(model, tokenizer, [prompt], [settings], stop_token_ids(tokenizer, template))
    for deltas in decoder:
        for delta in deltas:
            if delta.text:
                yield delta.text


def context_length(model, default: int = 2048) -> int:
    """How many tokens the model attends to (its max_position_embeddings / seq_length)."""
    config = model.config
    for key in ("max_position_embeddings", "seq_length", "max_sequence_length", "n_positions"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return default


def fit_history(
    tokenizer, template: Template, query: str, history: Sequence[tuple[str, str]],
    system: str | None, max_prompt_tokens: int,
) -> list[tuple[str, str]]:
    """The most recent turns of `history` that fit, with `query`, in `max_prompt_tokens`.

    Oldest turns go first, as a person forgets the start of a long conversation; a query too long
    on its own is a UserError (the caller decides to shorten or refuse)."""
    history = list(history)
    while len(encode_prompt(tokenizer, template, query, history, system)) > max_prompt_tokens:
        if not history:
            raise UserError(
                f"the message alone is longer than the {max_prompt_tokens} prompt tokens the model "
                "has room for; shorten it or lower max_new_tokens"
            )
        history = history[1:]
    return history


_ROLE_NAMES = {"system": "a system message", "user": "a user message", "assistant": "an assistant answer",
               "calls": "an assistant's tool calls", "tool": "a tool result"}


def check_messages(messages: Sequence[dict]) -> None:
    """A UserError unless OpenAI-style messages are in an order a chat template can render.

    System messages may only lead; then a user message. An assistant message answers a user message
    or tool results; one with `tool_calls` is followed by a `tool` message per call (each naming
    one of the calls' ids, when they have ids); a plain one by the next user message. The last
    message is the user's, or a tool result the assistant is to read."""
    follows = {None: ("system", "user"), "system": ("system", "user"), "user": ("assistant",),
               "calls": ("tool",), "assistant": ("user",), "tool": ("tool", "assistant", "user")}
    previous, call_ids = None, set()
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in follows[previous]:
            where = f"after {_ROLE_NAMES[previous]}" if previous else "first"
            raise UserError(f"messages[{index}] has role {role!r}, but {where} comes "
                            f"{' or '.join(map(repr, follows[previous]))}: system messages lead, then user and "
                            "assistant messages alternate, with tool results after an assistant's tool calls")
        if role == "tool" and call_ids and message.get("tool_call_id") not in call_ids:
            raise UserError(f"messages[{index}] answers tool call {message.get('tool_call_id')!r}, but the "
                            f"assistant's calls before it have the ids {', '.join(sorted(call_ids))}")
        if role == "assistant" and message.get("tool_calls"):
            previous = "calls"
            call_ids = {call["id"] for call in message["tool_calls"] if call.get("id")}
        else:
            previous = role
    if previous not in ("user", "tool"):
        raise UserError("messages must contain a user message" if previous in (None, "system")
                        else "the last message must be a user message or a tool result")


__all__ = [
    "BatchDecoder", "Delta", "GenerationSettings", "ReplyText", "adjust_logits", "context_length",
    "check_messages", "fit_history", "generate_batch", "generate_reply", "sample_token", "stream_reply",
]
