"""Preference pairs (a prompt, a chosen and a rejected reply): read, validate, encode, render.

Accepted record formats (json list or jsonl), with optional `history` ([[question, answer], ...])
and `system` keys in each:
- `{"prompt": ..., "chosen": ..., "rejected": ...}`             (TRL / Anthropic-HH style)
- `{"prompt": ..., "selected": ..., "rejected": ...}`           (the original tutorial's files)
- `{"instruction": ..., "input": ..., "output": [chosen, rejected]}`  (alpaca-style comparisons;
  the prompt is the instruction, then a newline and the input when the input is not empty)

A record that breaks a rule stops the run with `file:line: what is wrong`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import UserError
from ..records import read_records
from ..conversation import Conversation
from ..templates import Template, encode_turns, prompt_text

FORMATS_HELP = ("prompt/chosen/rejected, prompt/selected/rejected, "
                "or instruction/input/output with output = [chosen, rejected]")


@dataclass
class PreferenceDataArguments:
    """The pairs of a reward-model, DPO, ORPO or PPO run (PPO takes only their prompts)."""

    train_file: str = field(metadata={"help": "Preference pairs (.json/.jsonl) in any accepted format."})
    eval_file: str | None = field(default=None, metadata={"help": "Held-out pairs the figures are measured on."})


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    history: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None


def _string(record: dict, key: str, where: str, allow_empty: bool = False) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise UserError(f"{where}: {key!r} is empty")
    return value


def _prompt_and_replies(record: dict, where: str) -> tuple[str, str, str]:
    if "instruction" in record and "output" in record:
        output = record["output"]
        if not (isinstance(output, list) and len(output) == 2):
            raise UserError(f"{where}: 'output' must be a list [chosen, rejected] of two strings")
        replies = {"output[0] (chosen)": output[0], "output[1] (rejected)": output[1]}
        chosen, rejected = (_string(replies, key, where) for key in replies)
        prompt = _string(record, "instruction", where)
        extra = _string(record, "input", where, allow_empty=True) if record.get("input") is not None else ""
        return (f"{prompt}\n{extra}" if extra.strip() else prompt), chosen, rejected
    chosen_key = "chosen" if "chosen" in record else "selected"
    missing = [key for key in ("prompt", chosen_key, "rejected") if key not in record]
    if missing:
        found = ", ".join(record) or "no keys"
        raise UserError(f"{where}: no key {missing[0]!r} (found: {found}); expected {FORMATS_HELP}")
    return (_string(record, "prompt", where), _string(record, chosen_key, where),
            _string(record, "rejected", where))


def record_to_pair(record: dict, where: str) -> PreferencePair:
    """Validate one record in any accepted format and return it as a PreferencePair."""
    prompt, chosen, rejected = _prompt_and_replies(record, where)
    if chosen.strip() == rejected.strip():
        raise UserError(f"{where}: the chosen and the rejected reply are the same; a pair must differ")
    history = record.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        for turn in history
    ):
        raise UserError(f"{where}: 'history' must be a list of [question, answer] string pairs")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{where}: 'system' must be a string, got {type(system).__name__}")
    return PreferencePair(prompt, chosen, rejected, [tuple(turn) for turn in history], system)


def load_preference_pairs(path: str | Path) -> list[PreferencePair]:
    return [record_to_pair(record, where) for where, record in read_records(path)]


@dataclass
class EncodedPair:
    """Token ids of a pair rendered with a chat template; each reply ends with its stop token."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def encode_pair(tokenizer, template: Template, pair: PreferencePair) -> EncodedPair:
    """The ids a model trained with `template` sees for this pair: the prompt (with history) and
    each reply, encoded exactly as the SFT data and the chat prompt are."""
    turns = [*pair.history, (pair.prompt, pair.chosen)]
    encoded = encode_turns(tokenizer, template, turns, pair.system)
    prompt_ids = [token for p, a in encoded[:-1] for token in p + a] + encoded[-1][0]
    rejected_ids = encode_turns(tokenizer, template, [*pair.history, (pair.prompt, pair.rejected)],
                                pair.system)[-1][1]
    return EncodedPair(prompt_ids, encoded[-1][1], rejected_ids)


def encode_pairs(tokenizer, template: Template, pairs: Sequence[PreferencePair],
                 max_length: int | None) -> list[EncodedPair]:
    """Encode every pair; drop (and count) those longer than max_length, refuse if none is left."""
    encoded = [encode_pair(tokenizer, template, pair) for pair in pairs]
    if max_length is None:
        return encoded
    kept = [e for e in encoded if len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= max_length]
    if not kept:
        raise UserError(f"every preference pair is longer than --max_length {max_length}; raise it")
    if len(kept) < len(encoded):
        print(f"dropped {len(encoded) - len(kept)} of {len(encoded)} pairs longer than {max_length} tokens")
    return kept


def render_prompt(tokenizer, template: Template, history: Sequence[tuple[str, str]], query: str,
                  system: str | None = None) -> str:
    """The prompt (history, then the query, up to where the reply starts) as text, for trainers
    that tokenize themselves (DPOTrainer, GRPOTrainer): the text of `encode_prompt`'s ids."""
    return prompt_text(tokenizer, template, Conversation.from_turns([*history, (query, None)], system).messages)


def render_pair(tokenizer, template: Template, pair: PreferencePair) -> dict[str, str]:
    """The pair as text for trainers that tokenize themselves (TRL's DPOTrainer): the prompt with
    its history, and each reply with the template's stop token, as `encode_pair` encodes them."""
    prompt = render_prompt(tokenizer, template, pair.history, pair.prompt, pair.system)
    reply = template.end_of_turn(tokenizer)
    return {"prompt": prompt, "chosen": pair.chosen + reply, "rejected": pair.rejected + reply}
