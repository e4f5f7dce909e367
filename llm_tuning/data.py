"""Instruction data: tokenize conversations with label masking, save to disk, load, collate.

The on-disk format (`data/tokenized_data/<name>/`) is a `datasets` dataset with `input_ids` and
`labels` columns plus `metadata.json`, which records the tokenizer's fingerprint and the template
so a recipe can refuse data made for another model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.compute

from .atomic import atomic_directory
from .cli import UserError
from .conversation import Conversation, EncodedSample, Span
from .records import RecordKeys, iter_located_conversations
from .templates import AnyTemplate, chat_template_hash, encode_conversation, get_template, template_source

IGNORE_INDEX = -100
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


@dataclass
class TokenizedRow:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    reasoning_cut: bool = False  # truncation cut into a turn that has reasoning
    own_row: bool = False  # made for an earlier turn the template writes otherwise as history


def tokenize_conversation(
    tokenizer,
    template: AnyTemplate,
    conversation: Conversation,
    max_seq_length: int,
    skip_overlength: bool = False,
    last_turn_only: bool = False,
) -> list[TokenizedRow]:
    """Training rows (input_ids, labels) of one conversation; rows longer than `max_seq_length`
    are dropped with `skip_overlength`, else truncated.

    Labels are IGNORE_INDEX everywhere but the assistant messages, each supervised with the
    end-of-turn token that ends it (with `last_turn_only`, the last message alone). Usually one row;
    an earlier turn the template writes otherwise once later messages follow (Qwen3: without its
    reasoning or its no-think block) gets a row of its own that ends with it. A row that does not
    fit loses its oldest exchanges first, then the middle of its prompt, then its end.
    """
    targets = conversation.assistant_indices()[-1:] if last_turn_only else None
    samples = encode_conversation(tokenizer, template, conversation, targets)
    rows = []
    for number, sample in enumerate(samples):
        own_row = number < len(samples) - 1
        if len(sample.input_ids) <= max_seq_length:
            rows.append(_labelled(sample.input_ids, sample.spans, own_row=own_row))
        elif not skip_overlength:
            rows.append(_fit(tokenizer, template, sample, max_seq_length, own_row))
    return rows


def _labelled(input_ids: list[int], spans: list[Span], **flags) -> TokenizedRow:
    labels = [IGNORE_INDEX] * len(input_ids)
    for span in spans:
        labels[span.start:span.stop] = input_ids[span.start:span.stop]
    return TokenizedRow(input_ids=input_ids, labels=labels, **flags)


def _fit(tokenizer, template: AnyTemplate, sample: EncodedSample, max_len: int, own_row: bool) -> TokenizedRow:
    """`sample` cut to `max_len` tokens: whole oldest exchanges first (re-rendered without them), then
    the middle of the prompt before the first answer (its first tokens, the template's header, stay;
    the prompt keeps at least half the budget), then the end."""
    while len(sample.input_ids) > max_len:
        smaller = sample.conversation.without_oldest_exchange(sample.targets)
        if smaller is None or not smaller[1]:
            break
        encoded = encode_conversation(tokenizer, template, *smaller)
        if len(encoded) != 1:
            break
        sample = encoded[0]
    ids, spans = list(sample.input_ids), [replace(span) for span in sample.spans]
    overflow = len(ids) - max_len
    prompt_length = spans[0].start
    cut = min(overflow, prompt_length - min(prompt_length, max_len // 2))
    if cut > 0:
        head = min(template.prompt_head_length(tokenizer, sample.conversation.system), prompt_length - cut)
        del ids[head:head + cut]
        for span in spans:
            span.start, span.stop = span.start - cut, span.stop - cut
    ids = ids[:max_len]
    reasoning_cut = any(span.reasoning and span.stop > max_len for span in spans)
    spans = [replace(span, stop=min(span.stop, max_len)) for span in spans if span.start < max_len]
    return _labelled(ids, spans, truncated=True, reasoning_cut=reasoning_cut, own_row=own_row)


ROW_COLUMNS = ("input_ids", "labels", "truncated", "reasoning_cut", "own_row", "skipped")


def _tokenize_batch(batch, *, tokenizer, template_name, max_seq_length, skip_overlength, last_turn_only):
    """Rows of a batch of records (JSON conversations); an overlong one skipped leaves a `skipped` row."""
    template = get_template(template_name)
    out = {column: [] for column in ROW_COLUMNS}
    for where, record in zip(batch["where"], batch["conversation"]):
        try:
            rows = tokenize_conversation(tokenizer, template, Conversation(**json.loads(record)), max_seq_length,
                                         skip_overlength, last_turn_only)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        if not rows:
            rows = [TokenizedRow([], [])]
        for row in rows:
            for column in ROW_COLUMNS[:-1]:
                out[column].append(getattr(row, column))
            out["skipped"].append(not row.input_ids)
    return out


def _record_rows(path: str, keys: RecordKeys, limit: int | None):
    for where, conversation in iter_located_conversations(path, keys, limit):
        yield {"where": where,
               "conversation": json.dumps({"messages": conversation.messages, "tools": conversation.tools},
                                          ensure_ascii=False)}


@contextlib.contextmanager
def no_progress_bars():
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    already = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not already:
            enable_progress_bars()


def default_num_proc(records: int) -> int:
    """Processes for `records` records: one per core, but only when each gets enough work to repay
    starting it (a process loads the tokenizer and imports the stack: seconds)."""
    return max(1, min(len(os.sched_getaffinity(0)), records // RECORDS_PER_PROCESS))


RECORDS_PER_PROCESS = 20_000
_SCRATCH: list[tempfile.TemporaryDirectory] = []


def scratch_dir() -> str:
    """A folder for the Arrow files of one tokenize run, deleted when the process ends."""
    _SCRATCH.append(tempfile.TemporaryDirectory(prefix="llm_tuning_tokenize_"))
    return _SCRATCH[-1].name


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides token ids: the vocabulary and the special tokens."""
    payload = json.dumps(
        {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map},
        ensure_ascii=False, sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    with Path(path).open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@dataclass
class TokenizeConfig:
    tokenizer_path: str
    template: str
    max_seq_length: int
    skip_overlength: bool
    last_turn_only: bool
    keys: RecordKeys = field(default_factory=RecordKeys)
    num_proc: int | None = None  # None: one per core for large files (default_num_proc)
    max_samples: int | None = None


def tokenize_file(input_file: str | Path, tokenizer, config: TokenizeConfig):
    """Read, validate and tokenize a json/jsonl file; returns (dataset, metadata).

    Memory does not grow with the file: records are read one at a time into an Arrow file, then
    tokenized in batches (in `config.num_proc` processes) into another; the dataset returned is
    memory-mapped from a scratch folder that lives until the process ends."""
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    scratch = scratch_dir()
    try:
        with no_progress_bars():  # reading is quick; a bad record's message stays the one line printed
            records = Dataset.from_generator(
                _record_rows, gen_kwargs={"path": str(input_file), "keys": config.keys, "limit": config.max_samples},
                cache_dir=scratch)
    except DatasetGenerationError as err:  # a bad record: its own one-line message
        cause = err.__cause__ or err.__context__
        raise (cause if isinstance(cause, UserError) else err) from None
    tokenize = functools.partial(
        _tokenize_batch, tokenizer=tokenizer, template_name=config.template,
        max_seq_length=config.max_seq_length, skip_overlength=config.skip_overlength,
        last_turn_only=config.last_turn_only,
    )
    num_proc = config.num_proc or default_num_proc(len(records))
    dataset = records.map(
        tokenize, batched=True, batch_size=256, num_proc=num_proc if num_proc > 1 else None,
        remove_columns=records.column_names, desc="Tokenizing",
    )
    counts = {column: pyarrow.compute.sum(dataset.data.column(column)).as_py() or 0 for column in ROW_COLUMNS[2:]}
    if counts["skipped"]:
        dataset = dataset.filter(lambda skipped: not skipped, input_columns="skipped")
    dataset = dataset.remove_columns(list(ROW_COLUMNS[2:]))
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
        "rows": {"read": len(records), "kept": len(dataset), "skipped": counts["skipped"],
                 "truncated": counts["truncated"], "turn_rows": counts["own_row"],
                 "reasoning_cut": counts["reasoning_cut"]},
        "source": {"path": str(input_file), "sha256": file_sha256(input_file)},
    }
    return dataset, metadata


# --- Saving and loading --------------------------------------------------------------------------


def save_tokenized(dataset, metadata: dict, out_dir: str | Path) -> Path:
    """Save dataset + metadata.json; an interrupted run leaves nothing behind (see atomic_directory)."""
    with atomic_directory(out_dir) as tmp_dir:
        dataset.save_to_disk(str(tmp_dir))
        (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, ensure_ascii=False, indent=2) + "\n",
                                             encoding="utf-8")
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
