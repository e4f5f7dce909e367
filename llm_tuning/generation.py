"""Chat generation on top of the template registry: the prompt is exactly the training prompt.

One decoding loop serves the terminal chat, the web UI, the OpenAI-compatible server and eval.py:
`BatchDecoder` runs several prompts at once (left-padded, one KV cache), each row with its own
sampling settings, stop strings, stop token ids and seed, and yields text pieces as they are
decoded. `generate_reply` / `stream_reply` are the one-prompt conveniences on top of it, and
`generate_in_batches` answers many prompts in batches of similar length (eval, the projects).

    settings = GenerationSettings(max_new_tokens=128, temperature=0.7, top_p=0.9, stop=("\\n\\n",))
    for piece in stream_reply(model, tokenizer, template, "你好", settings=settings):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

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


def text_decoder(tokenizer) -> Callable[[list[int]], str]:
    """`tokenizer.decode(ids, skip_special_tokens=True)`, called once per token per row while
    decoding. For a fast tokenizer without clean-up this is its Rust tokenizer's `decode` called
    directly: the same text, without transformers' ~20 µs of Python checks per call."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (backend is not None and type(tokenizer)._decode is TokenizersBackend._decode
            and not getattr(tokenizer, "clean_up_tokenization_spaces", False)):
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


class ReplyText:
    """Incremental detokenization of one reply, cut at the first stop string.

    Text is released only when it is final: not the half of a multi-byte character (decoded as
    U+FFFD until its last byte arrives), and not a tail that could still grow into a stop string.

    Each token costs one decode of a short window, not of the whole reply: the window ids[head:]
    starts with CONTEXT ids whose text is known, and dropping the text those ids decode to on
    their own leaves what the new ids add, as decoding everything would (sentencepiece's stripped
    leading space included)."""

    WINDOW = 16  # ids decoded again at most; past it the window moves up, keeping CONTEXT ids
    CONTEXT = 4

    def __init__(self, tokenizer, stop: Sequence[str] = (), decode: Callable[[list[int]], str] | None = None):
        self.tokenizer = tokenizer
        self.decode = decode or text_decoder(tokenizer)
        self.stop = tuple(stop)
        self._longest_stop = max(map(len, self.stop), default=0)
        self.ids: list[int] = []
        self.released = 0
        self.text = ""  # the reply so far, cut at a stop string once one appears
        self.stopped = False
        self._head = 0  # the window ids[_head:] is decoded on every push
        self._context = 0  # characters of the window's text already in `_before`
        self._before = ""  # the reply's text up to the window's new part

    def push(self, token_id: int) -> str:
        """Add a generated token; the newly final text (may be empty). Sets `stopped` on a stop string."""
        self.ids.append(token_id)
        window = self.decode(self.ids[self._head:])
        text = self._before + window[self._context:]
        searched_from = max(0, len(self._before) - self._longest_stop)
        cut = min((i for i in (text.find(s, searched_from) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = text[:cut]
            return self._release(len(self.text))
        self.text = text
        if text.endswith("\ufffd"):
            return ""
        if len(self.ids) - self._head > self.WINDOW:
            self._head = len(self.ids) - self.CONTEXT
            self._before = text
            self._context = len(self.decode(self.ids[self._head:]))
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


def _has_penalty(settings: GenerationSettings) -> bool:
    return (settings.repetition_penalty != 1 or settings.frequency_penalty != 0
            or settings.presence_penalty != 0)


def adjust_logits(logits: torch.Tensor, seen: torch.Tensor | None, counts: torch.Tensor | None,
                  settings: Sequence[GenerationSettings]) -> torch.Tensor:
    """Apply each row's repetition / frequency / presence penalties to next-token logits [B, V].

    `seen` [B, V] marks tokens in the prompt or the reply (repetition penalty, as HF does it);
    `counts` [B, V] counts tokens of the reply only (OpenAI's penalties). Both may be None when
    no row has a penalty."""
    logits = logits.float()
    if any(s.repetition_penalty != 1 for s in settings):
        rep = logits.new_tensor([s.repetition_penalty for s in settings])[:, None]
        penalised = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalised, logits)
    if any(s.frequency_penalty != 0 or s.presence_penalty != 0 for s in settings):
        freq = logits.new_tensor([s.frequency_penalty for s in settings])[:, None]
        pres = logits.new_tensor([s.presence_penalty for s in settings])[:, None]
        logits = logits - freq * counts - pres * (counts > 0).float()
    return logits


CANDIDATES = 256  # a top-k/top-p row draws from its best 256 tokens when its cut falls among them


def sample_tokens(logits: torch.Tensor, settings: Sequence[GenerationSettings],
                  generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row of logits [B, V], each row by its own settings: greedy at temperature 0,
    else top-k/top-p sampling with its own generator (None: torch's global one).

    A sampled row takes one uniform number from its generator and picks the token where it falls
    in the cumulative distribution (as multinomial sampling does), so its draw depends on its
    logits and its seed only, never on its batch-mates. The filtering runs on all rows at once,
    and a top-k/top-p row sorts only its best CANDIDATES tokens when its cut falls among them
    (`topk` of 256 is ~20x cheaper than sorting a 50k vocabulary; both pick the same tokens)."""
    tokens = logits.argmax(-1)
    sampled = [i for i, s in enumerate(settings) if s.temperature > 0]
    if not sampled:
        return tokens
    device = logits.device
    rules = [settings[i] for i in sampled]
    uniforms = torch.stack([torch.rand((), device=device, generator=generators[i]) for i in sampled])
    scores = logits[sampled] / logits.new_tensor([s.temperature for s in rules])[:, None]
    vocab = scores.shape[-1]
    picks = torch.empty(len(sampled), dtype=torch.long, device=device)
    plain = [j for j, s in enumerate(rules) if not _cuts(s, vocab)]
    if plain:
        picks[plain] = _inverse_cdf(scores[plain].softmax(-1), uniforms[plain])
    cut = [j for j, s in enumerate(rules) if _cuts(s, vocab)]
    if cut:
        values, ids, log_total = _best_tokens(scores[cut], [rules[j] for j in cut])
        kept = _top_k_top_p(values, log_total, [rules[j] for j in cut])
        picks[cut] = ids.gather(-1, _inverse_cdf(kept.softmax(-1), uniforms[cut])[:, None]).squeeze(-1)
    tokens[sampled] = picks
    return tokens


def _cuts(settings: GenerationSettings, vocab: int) -> bool:
    return 0 < settings.top_k < vocab or settings.top_p < 1


def _best_tokens(scores: torch.Tensor, rules: Sequence[GenerationSettings]):
    """(values, token ids) of each row's best tokens, best first, and the log of each row's total
    mass: the top CANDIDATES where the row's top-k or top-p cut falls among them, else all (a sort)."""
    log_total = scores.logsumexp(-1)
    vocab = scores.shape[-1]
    if vocab <= 8 * CANDIDATES:  # a small vocabulary: sorting it costs about what topk would
        return *torch.sort(scores, descending=True), log_total
    values, ids = scores.topk(CANDIDATES, dim=-1)
    mass = (values - log_total[:, None]).exp().sum(-1).tolist()
    beyond = [j for j, s in enumerate(rules) if not (
        0 < s.top_k <= CANDIDATES or (not 0 < s.top_k < vocab and s.top_p < 1 and mass[j] >= s.top_p))]
    if not beyond:
        return values, ids, log_total
    if len(beyond) == len(rules):
        return *torch.sort(scores, descending=True), log_total
    # Rows whose cut lies further down (a flat distribution, a large top-k) sort everything.
    all_values = torch.cat([values, values.new_full((len(rules), vocab - CANDIDATES), float("-inf"))], dim=-1)
    all_ids = torch.cat([ids, ids.new_zeros((len(rules), vocab - CANDIDATES))], dim=-1)
    all_values[beyond], all_ids[beyond] = torch.sort(scores[beyond], descending=True)
    return all_values, all_ids, log_total


def _top_k_top_p(values: torch.Tensor, log_total: torch.Tensor, rules: Sequence[GenerationSettings]) -> torch.Tensor:
    """Sorted scores [R, W] with what each row's top-k, then top-p, drops set to -inf."""
    width = values.shape[-1]
    top_k = torch.tensor([s.top_k if 0 < s.top_k < width else 0 for s in rules], device=values.device)
    if any(0 < s.top_k < width for s in rules):
        # The k-th best score; ties with it stay in.
        kth = values.gather(-1, (top_k.clamp(min=1) - 1)[:, None]).masked_fill(top_k[:, None] == 0, float("-inf"))
        values = values.masked_fill(values < kth, float("-inf"))
        # The top-p mass is counted within the top-k tokens, where a row has top-k.
        log_total = torch.where(top_k > 0, values.logsumexp(-1), log_total)
    if any(s.top_p < 1 for s in rules):
        probs = (values - log_total[:, None]).exp()
        top_p = values.new_tensor([s.top_p for s in rules])[:, None]
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = (probs.cumsum(-1) - probs >= top_p) & (top_p < 1)
        values = values.masked_fill(drop, float("-inf"))
    return values


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """For each row of probs [R, W], the index where its uniform number falls in the cumulative
    sum: index i with probability probs[i]; a zero-probability index is never picked."""
    cdf = probs.cumsum(-1)
    picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(-1)
    # Rounding can put u * total on the total itself: take the last index with mass instead.
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)
    return torch.minimum(picks, last)


def sample_token(logits: torch.Tensor, settings: GenerationSettings,
                 generator: torch.Generator | None) -> int:
    """One token from one row's logits [V]: greedy at temperature 0, else top-k/top-p sampling."""
    return int(sample_tokens(logits[None], [settings], [generator])[0])


# --- The decoding loop --------------------------------------------------------------------------


class BatchDecoder:
    """Decode several prompts together; iterate to get each step's `Delta`s.

    Rows are left-padded into one batch with one KV cache. A row ends on one of its stop token
    ids, a stop string, its max_new_tokens, or `cancel(row)`; the batch ends when every row has.
    A row that ended leaves the batch (its KV cache rows are dropped), so the rows still decoding
    do not pay for it.
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
        decode = text_decoder(tokenizer)
        self.texts = [ReplyText(tokenizer, s.stop, decode) for s in settings]
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
        for row, prompt in enumerate(self.prompts):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, device=device)
            attention_mask[row, width - len(prompt):] = 1
        # The batch holds the rows still decoding: `rows` maps its rows to the caller's.
        rows, settings, generators = list(range(batch)), list(self.settings), self._generators(device)
        seen = counts = None
        if any(_has_penalty(s) for s in settings):
            seen = torch.zeros((batch, vocab), dtype=torch.bool, device=device)
            for row, prompt in enumerate(self.prompts):
                seen[row, torch.tensor(prompt, device=device)] = True
            counts = torch.zeros((batch, vocab), device=device)
        forward = _Forward(self.model)
        # Left padding: positions count real tokens only, so a padded row sees what it would alone.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        padded = any(len(p) < width for p in self.prompts)
        out = forward.prompt(input_ids, attention_mask, position_ids)
        while True:
            logits = adjust_logits(out.logits[:, -1, :vocab], seen, counts, settings)
            next_ids = sample_tokens(logits, settings, generators)
            deltas = [self._advance(row, token) for row, token in zip(rows, next_ids.tolist())
                      if not self.done[row]]
            if deltas:
                yield deltas
            keep = [i for i, row in enumerate(rows) if not self.done[row]]  # after the caller's cancel()s
            if not keep:
                return
            if seen is not None:
                seen[torch.arange(len(rows)), next_ids] = True
                counts[torch.arange(len(rows)), next_ids] += 1
            if len(keep) < len(rows) and forward.can_drop_rows(out):
                index = torch.tensor(keep, device=device)
                forward.drop_rows(out, index)
                next_ids, attention_mask, position_ids = next_ids[index], attention_mask[index], position_ids[index]
                if not forward.incremental:
                    input_ids = input_ids[index]
                if seen is not None:
                    seen, counts = seen[index], counts[index]
                rows, settings, generators = ([items[i] for i in keep] for items in (rows, settings, generators))
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
            if forward.incremental:
                out = forward.step(next_ids[:, None], attention_mask if padded else None, position_ids, out)
            else:
                input_ids = torch.cat([input_ids, next_ids[:, None]], dim=1)
                out = forward.prompt(input_ids, attention_mask, None)

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


class _Forward:
    """The model calls of one decode: the prompt, then one token per row per step on the KV cache.

    peft prompt/prefix/p-tuning prepend virtual tokens on every forward and ignore position ids:
    for them every step re-runs the whole sequence (exact for one row; rows of a padded batch see
    shifted positions)."""

    def __init__(self, model):
        self.model = model
        self.incremental = not _is_prompt_learning(model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        parameters = inspect.signature(base.forward).parameters
        # transformers 5.24 renamed `past_key_values` to `cache`; remote-code models keep the old name.
        self.cache_name = "cache" if "cache" in parameters else "past_key_values"
        # Only the last position's logits are used: skip the vocabulary projection of the others.
        self.last_logits = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def prompt(self, input_ids, attention_mask, position_ids):
        if self.incremental:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=True, **self.last_logits)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **self.last_logits)

    def step(self, next_ids, attention_mask, position_ids, previous):
        return self.model(input_ids=next_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, **{self.cache_name: _cache_of(previous)}, **self.last_logits)

    def can_drop_rows(self, out) -> bool:
        """Whether finished rows can leave the batch: always without a cache; with one, only for
        transformers' plain key/value layers (a remote-code tuple cache may keep batch elsewhere
        than dim 0, and linear-attention states are not selected by `batch_select_indices`)."""
        if not self.incremental:
            return True
        from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

        cache = _cache_of(out)
        return isinstance(cache, DynamicCache) and all(
            type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers)

    def drop_rows(self, out, index: torch.Tensor) -> None:
        if self.incremental:
            _cache_of(out).batch_select_indices(index)


def _cache_of(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def generate_batch(model, tokenizer, prompts: Sequence[Sequence[int]],
                   settings: Sequence[GenerationSettings], stop_ids: Sequence[int] = ()) -> list[str]:
    """Whole replies to several prompts, decoded together."""
    replies = [""] * len(prompts)
    for deltas in BatchDecoder(model, tokenizer, prompts, settings, stop_ids):
        for delta in deltas:
            replies[delta.row] += delta.text
    return replies


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of `lengths` in batches of at most `batch_size`, longest first, so that prompts of
    similar length share a batch and little of it is padding."""
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def generate_in_batches(model, tokenizer, prompts: Sequence[Sequence[int]],
                        settings: Sequence[GenerationSettings], stop_ids: Sequence[int] = (),
                        batch_size: int = 16, sort_by_length: bool = True, desc: str | None = None) -> list[str]:
    """Whole replies to many prompts, `batch_size` at a time, in the order of `prompts`.

    With `sort_by_length` (the default) each batch holds prompts of similar length; `desc` shows
    a progress bar under that name."""
    if sort_by_length:
        batches = length_sorted_batches([len(p) for p in prompts], batch_size)
    else:
        batches = [list(range(start, min(start + batch_size, len(prompts))))
                   for start in range(0, len(prompts), batch_size)]
    replies = [""] * len(prompts)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
        texts = generate_batch(model, tokenizer, [prompts[i] for i in batch], [settings[i] for i in batch], stop_ids)
        for i, text in zip(batch, texts):
            replies[i] = text
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
    "check_messages", "fit_history", "generate_batch", "generate_in_batches", "generate_reply",
    "length_sorted_batches", "sample_token", "sample_tokens", "stream_reply",
]
