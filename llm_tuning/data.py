"""Instruction data: tokenize conversations with label masking, save to disk, load, collate.

The on-disk format (`data/tokenized_data/<name>/`) is a `datasets` dataset with `input_ids` and
`labels` columns plus `metadata.json`, which records the tokenizer's fingerprint and the template
so a recipe can refuse data made for another model.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_directory
from .cli import UserError
from .records import Conversation, RecordKeys, load_conversations
from .templates import NativeTemplate, Template, chat_template_hash, encode_turns, get_template, template_source

IGNORE_INDEX = -100
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


@dataclass
class TokenizedRow:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def _fit_prompt_and_answer(
    prompt_ids: list[int], answer_ids: list[int], max_len: int, keep_head: int
) -> tuple[list[int], list[int]]:
    """Shrink the prompt first by cutting the question's middle: its first `keep_head` tokens (the
    template's header) and its end (the question's end and the answer cue) stay. The prompt keeps at
    least half the budget; then the answer's end is cut."""
    overflow = len(prompt_ids) + len(answer_ids) - max_len
    prompt_floor = min(len(prompt_ids), max_len // 2)
    cut = min(overflow, len(prompt_ids) - prompt_floor)
    if cut > 0:
        head = min(keep_head, len(prompt_ids) - cut)
        prompt_ids = prompt_ids[:head] + prompt_ids[head + cut:]
    return prompt_ids, answer_ids[: max_len - len(prompt_ids)]


def tokenize_conversation(
    tokenizer,
    template: Template | NativeTemplate,
    conversation: Conversation,
    max_seq_length: int,
    skip_overlength: bool = False,
    last_turn_only: bool = False,
) -> TokenizedRow | None:
    """input_ids and labels for one conversation; None if it is too long and `skip_overlength`.

    Labels are IGNORE_INDEX on every prompt token; each assistant answer (or only the last one,
    with `last_turn_only`) is supervised together with the stop token that ends it. A conversation
    that does not fit loses its oldest turns first, then its last prompt is shortened, then the
    end of its answer.
    """
    turns = list(conversation.turns)
    encoded = encode_turns(tokenizer, template, turns, conversation.system)
    total = sum(len(p) + len(a) for p, a in encoded)
    if total > max_seq_length and skip_overlength:
        return None
    truncated = total > max_seq_length
    while len(turns) > 1 and sum(len(p) + len(a) for p, a in encoded) > max_seq_length:
        turns = turns[1:]
        encoded = encode_turns(tokenizer, template, turns, conversation.system)
    if len(encoded) == 1 and len(encoded[0][0]) + len(encoded[0][1]) > max_seq_length:
        keep_head = template.prompt_head_length(tokenizer, conversation.system)
        encoded = [_fit_prompt_and_answer(*encoded[0], max_seq_length, keep_head)]

    input_ids: list[int] = []
    labels: list[int] = []
    for index, (prompt_ids, answer_ids) in enumerate(encoded):
        supervised = not last_turn_only or index == len(encoded) - 1
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + (answer_ids if supervised else [IGNORE_INDEX] * len(answer_ids))
    return TokenizedRow(input_ids=input_ids, labels=labels, truncated=truncated)


def _tokenize_batch(batch, *, tokenizer, template_name, max_seq_length, skip_overlength, last_turn_only):
    template = get_template(template_name)
    out = {"input_ids": [], "labels": [], "truncated": []}
    for turns, system in zip(batch["turns"], batch["system"]):
        conversation = Conversation(turns=[tuple(t) for t in turns], system=system)
        row = tokenize_conversation(tokenizer, template, conversation, max_seq_length, skip_overlength, last_turn_only)
        if row is not None:
            out["input_ids"].append(row.input_ids)
            out["labels"].append(row.labels)
            out["truncated"].append(row.truncated)
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides token ids: the vocabulary and the special tokens."""
    payload = json.dumps(
        {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map},
        ensure_ascii=False, sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class TokenizeConfig:
    tokenizer_path: str
    template: str
    max_seq_length: int
    skip_overlength: bool
    last_turn_only: bool
    keys: RecordKeys = field(default_factory=RecordKeys)
    num_proc: int = 1
    max_samples: int | None = None


def tokenize_file(input_file: str | Path, tokenizer, config: TokenizeConfig):
    """Read, validate and tokenize a json/jsonl file; returns (dataset, metadata)."""
    from datasets import Dataset

    conversations = load_conversations(input_file, config.keys)[: config.max_samples]
    raw = Dataset.from_dict({
        "turns": [[list(turn) for turn in c.turns] for c in conversations],
        "system": [c.system for c in conversations],
    })
    tokenize = functools.partial(
        _tokenize_batch, tokenizer=tokenizer, template_name=config.template,
        max_seq_length=config.max_seq_length, skip_overlength=config.skip_overlength,
        last_turn_only=config.last_turn_only,
    )
    dataset = raw.map(
        tokenize, batched=True, batch_size=256, num_proc=config.num_proc if config.num_proc > 1 else None,
        remove_columns=raw.column_names, desc="Tokenizing",
    )
    truncated = sum(dataset["truncated"])
    dataset = dataset.remove_columns("truncated")
    if len(dataset) == 0:
        raise UserError(
            f"{input_file}: every row is longer than --max_seq_length {config.max_seq_length}; "
            "raise it or pass --skip_overlength false to truncate"
        )
    metadata = {
        "format_version": FORMAT_VERSION,
        "tokenizer": config.tokenizer_path,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "template": config.template,
        "template_source": template_source(tokenizer, config.template),
        "max_seq_length": config.max_seq_length,
        "skip_overlength": config.skip_overlength,
        "last_turn_only": config.last_turn_only,
        "keys": {"format": config.keys.format, "prompt": config.keys.prompt, "target": config.keys.target,
                 "history": config.keys.history, "system": config.keys.system},
        "max_samples": config.max_samples,
        "rows": {"read": len(conversations), "kept": len(dataset),
                 "skipped": len(conversations) - len(dataset), "truncated": truncated},
        "source": {"path": str(input_file), "sha256": file_sha256(input_file)},
    }
    return dataset, metadata


# --- Saving and loading --------------------------------------------------------------------------


def save_tokenized(dataset, metadata: dict, out_dir: str | Path) -> Path:
    """Save dataset + metadata.json; an interrupted run leaves nothing behind (see atomic_directory)."""
    with atomic_directory(out_dir) as tmp_dir:
        dataset.save_to_disk(str(tmp_dir))
        (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def load_tokenized(path: str | Path):
    """(dataset, metadata) saved by `tokenize_dataset_rows.py`."""
    from datasets import load_from_disk

    path = Path(path)
    metadata_path = path / METADATA_FILE
    if not metadata_path.is_file():
        raise UserError(
            f"{path}: no tokenized dataset here; make one with tokenize_dataset_rows.py (sh tokenize.sh)"
        )
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    if metadata.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: made by another version of tokenize_dataset_rows.py; tokenize the data again")
    return load_from_disk(str(path)), metadata


def check_tokenizer_matches(metadata: dict, tokenizer, tokenizer_path: str, dataset_path: str | Path) -> None:
    """Refuse to train on ids made by a different tokenizer: they would mean other tokens."""
    if metadata["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise UserError(
            f"{dataset_path} was tokenized with {metadata['tokenizer']}, whose tokenizer differs from "
            f"{tokenizer_path}'s; tokenize the data again with --model_checkpoint {tokenizer_path}"
        )


def check_template_matches(metadata: dict, tokenizer, tokenizer_path: str, dataset_path: str | Path) -> None:
    """Refuse data rendered with a chat template other than the one the tokenizer carries now."""
    recorded = metadata.get("template_source", {}).get("chat_template_sha256")
    if metadata["template"] == "native" and recorded != chat_template_hash(tokenizer):
        raise UserError(
            f"{dataset_path} was rendered with a chat template (sha256 {recorded}) that differs from the one "
            f"{tokenizer_path}'s tokenizer carries now ({chat_template_hash(tokenizer)}); tokenize the data again"
        )


# --- Inspection ---------------------------------------------------------------------


def supervised_ids(labels: Sequence[int]) -> list[int]:
    return [token for token in labels if token != IGNORE_INDEX]


def print_data_example(row: dict, tokenizer) -> None:
    """Show one row as the model sees it, so a wrong template or mask is caught before training."""
    print("input_ids:", row["input_ids"])
    print("input:", repr(tokenizer.decode(row["input_ids"])))
    print("labels (supervised part):", repr(tokenizer.decode(supervised_ids(row["labels"]))))
