"""Instruction data: read and validate json/jsonl, tokenize with label masking, save to disk, collate.

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
from .templates import Template, encode_turns, get_template

IGNORE_INDEX = -100
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


@dataclass
class Conversation:
    """One training sample: (question, answer) turns in order, and an optional system prompt."""

    turns: list[tuple[str, str]]
    system: str | None = None


RECORD_FORMATS = ("auto", "qa", "alpaca", "messages", "sharegpt")


@dataclass
class RecordKeys:
    """How records are laid out. `qa` uses the keys below; the other formats have fixed keys:
    alpaca `instruction/input/output` (+ `history` pairs, `system`), messages (OpenAI `messages`
    with system/user/assistant roles), sharegpt (`conversations` of `from`/`value`, + `system`).
    `auto` picks the format from the first record's keys."""

    prompt: str = "q"
    target: str = "a"
    history: str | None = None
    system: str | None = None
    format: str = "qa"


# --- Reading -------------------------------------------------------------------------------------


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a .jsonl (one object a line) or .json (a list of objects) file, each with its
    location for error messages (`file:line` or `file: record N`)."""
    path = Path(path)
    if path.suffix not in {".json", ".jsonl"}:
        raise UserError(f"{path}: expected a .json or .jsonl file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty")

    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(records, list):
            raise UserError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
        located = [(f"{path}: record {i}", record) for i, record in enumerate(records, start=1)]
    else:
        located = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not located:
        raise UserError(f"{path}: no records in the file")
    for where, record in located:
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return located


def _text_field(record: dict, key: str, where: str, what: str, flag: str) -> str:
    if key not in record:
        found = ", ".join(record) or "no keys"
        raise UserError(f"{where}: no key {key!r} (found: {found}); pass {flag} <key>")
    value = record[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if what == "answer" and not value.strip():
        raise UserError(f"{where}: empty answer in {key!r}")
    return value


def _history_pairs(record: dict, key: str, where: str) -> list[tuple[str, str]]:
    history = record.get(key) or []
    if not isinstance(history, list) or not all(
        isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
        for pair in history
    ):
        raise UserError(f"{where}: {key!r} must be a list of [question, answer] string pairs")
    for _, past_answer in history:
        if not past_answer.strip():
            raise UserError(f"{where}: empty answer in {key!r}")
    return [tuple(pair) for pair in history]


def _optional_system(record: dict, key: str | None, where: str) -> str | None:
    if key is None or record.get(key) is None:
        return None
    return _text_field(record, key, where, "system", "--system_key")


def _qa_conversation(record: dict, keys: RecordKeys, where: str) -> Conversation:
    query = _text_field(record, keys.prompt, where, "question", "--prompt_key")
    answer = _text_field(record, keys.target, where, "answer", "--target_key")
    history = _history_pairs(record, keys.history, where) if keys.history is not None else []
    return Conversation(turns=[*history, (query, answer)], system=_optional_system(record, keys.system, where))


def _alpaca_conversation(record: dict, keys: RecordKeys, where: str) -> Conversation:
    instruction = _text_field(record, "instruction", where, "question", "--format")
    extra_input = record.get("input") or ""
    if not isinstance(extra_input, str):
        raise UserError(f"{where}: 'input' must be a string, got {type(extra_input).__name__}")
    answer = _text_field(record, "output", where, "answer", "--format")
    query = f"{instruction}\n{extra_input}" if extra_input.strip() else instruction
    history = _history_pairs(record, keys.history or "history", where)
    return Conversation(turns=[*history, (query, answer)], system=_optional_system(record, keys.system or "system", where))


def _role_conversation(messages, where: str, field: str, role_key: str, text_key: str,
                       roles: dict[str, str], system: str | None) -> Conversation:
    """Turns from a list of role-tagged messages: an optional system message first, then
    alternating user/assistant messages that end with the assistant."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: {field!r} must be a non-empty list of messages")
    turns: list[tuple[str, str]] = []
    expected = "user"
    pending_query = None
    for index, message in enumerate(messages):
        here = f"{where}: {field}[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get(role_key), str):
            raise UserError(f"{here} must be an object with a {role_key!r} string")
        role = roles.get(message[role_key])
        if role is None:
            raise UserError(f"{here} has unknown {role_key} {message[role_key]!r}; expected one of: {', '.join(roles)}")
        text = message.get(text_key)
        if not isinstance(text, str):
            raise UserError(f"{here} {text_key!r} must be a string")
        if role == "system":
            if index != 0:
                raise UserError(f"{here}: a system message may only come first")
            system = text
            continue
        if role != expected:
            raise UserError(f"{here} has role {role!r} where {expected!r} was expected (turns alternate user, assistant)")
        if role == "user":
            pending_query, expected = text, "assistant"
        else:
            if not text.strip():
                raise UserError(f"{here}: empty assistant message")
            turns.append((pending_query, text))
            expected = "user"
    if expected == "assistant" or not turns:
        raise UserError(f"{where}: {field!r} must end with an assistant message")
    return Conversation(turns=turns, system=system)


OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def detect_format(record: dict) -> str:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return "qa"


def record_to_conversation(record: dict, keys: RecordKeys, where: str) -> Conversation:
    """Validate one record in the format `keys.format` and return its turns."""
    record_format = detect_format(record) if keys.format == "auto" else keys.format
    if record_format == "qa":
        return _qa_conversation(record, keys, where)
    if record_format == "alpaca":
        return _alpaca_conversation(record, keys, where)
    if record_format == "messages":
        return _role_conversation(record.get("messages"), where, "messages", "role", "content", OPENAI_ROLES,
                                  _optional_system(record, keys.system, where))
    if record_format == "sharegpt":
        return _role_conversation(record.get("conversations"), where, "conversations", "from", "value",
                                  SHAREGPT_ROLES, _optional_system(record, keys.system or "system", where))
    raise UserError(f"unknown --format {keys.format!r}; choose one of: {', '.join(RECORD_FORMATS)}")


def load_conversations(path: str | Path, keys: RecordKeys) -> list[Conversation]:
    records = read_records(path)
    if keys.format == "auto":  # one format per file, chosen by its first record
        keys = RecordKeys(keys.prompt, keys.target, keys.history, keys.system, detect_format(records[0][1]))
    return [record_to_conversation(record, keys, where) for where, record in records]


# --- Tokenizing ----------------------------------------------------------------------------------


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


def _prompt_head_length(tokenizer, template: Template, system: str | None) -> int:
    """Tokens before the question in a first-turn prompt (BOS, prefix, system block, user header)."""
    sentinel = "\x00"
    head_text = template.render_turns([(sentinel, None)], system)[0][0].split(sentinel)[0]
    bos = int(template.add_bos and tokenizer.bos_token_id is not None)
    return bos + len(tokenizer.encode(head_text, add_special_tokens=False))


def tokenize_conversation(
    tokenizer,
    template: Template,
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
        keep_head = _prompt_head_length(tokenizer, template, conversation.system)
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


# --- Batching and inspection ---------------------------------------------------------------------


def make_collator(tokenizer, pad_to_multiple_of: int | None = None, max_length: int | None = None):
    """Dynamic padding to the longest row of each batch (or to `max_length`): ids with the pad
    token, labels with IGNORE_INDEX, and an attention mask that hides the padding. Packed rows
    (with `position_ids`, see llm_tuning/batching.py) are padded so samples never see each other."""
    from .batching import PaddingCollator

    return PaddingCollator(tokenizer.pad_token_id, tokenizer.padding_side, pad_to_multiple_of, max_length)


def supervised_ids(labels: Sequence[int]) -> list[int]:
    return [token for token in labels if token != IGNORE_INDEX]


def print_data_example(row: dict, tokenizer) -> None:
    """Show one row as the model sees it, so a wrong template or mask is caught before training."""
    print("input_ids:", row["input_ids"])
    print("input:", repr(tokenizer.decode(row["input_ids"])))
    print("labels (supervised part):", repr(tokenizer.decode(supervised_ids(row["labels"]))))
