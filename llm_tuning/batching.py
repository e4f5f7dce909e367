"""How tokenized rows become training batches: dynamic padding, pad-to-max, length grouping, packing.

Padding is where small-GPU training loses its time (and where its OOMs come from): one long row
pads every other row of its batch to its length. Three ways out, all shared by every recipe:

- dynamic padding (the default): each batch is padded to its own longest row, not to
  `--max_seq_length`.
- length grouping (`--group_by_length true`, the same as `--train_sampling_strategy
  group_by_length`): the sampler draws mega-batches of 50 batches and sorts each by length, so a
  batch holds rows of similar length. Still random order, far less padding. Lengths come from a
  `length` column computed once from the Arrow data (no pass over the rows).
- packing (`--packing true`): rows are bin-packed (best-fit decreasing) into rows of at most
  `--packing_max_length` tokens. Each packed row carries `position_ids` that restart at 0 for
  every sample and no attention mask; from those, transformers builds a block-diagonal causal
  mask (sdpa, eager) or calls variable-length flash attention, so a sample never attends to
  another. The label of each sample's first token is masked: it would otherwise be predicted from
  the previous sample's last token. Per-sample losses equal the unpacked ones (tests/test_packing.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from .cli import UserError

IGNORE_INDEX = -100
LENGTH_COLUMN = "length"
GROUP_BY_LENGTH = "group_by_length"


def row_lengths(dataset) -> list[int]:
    """Token count of every row, read from the Arrow column (no decoding of the rows)."""
    import pyarrow.compute as pc

    return pc.list_value_length(_arrow_column(dataset, "input_ids")).to_pylist()


def _arrow_column(dataset, name: str):
    """A column as Arrow data, in the dataset's (possibly selected or shuffled) row order."""
    return dataset.with_format("arrow")[name]


def add_length_column(dataset):
    """The `length` column `LengthGroupedSampler` reads instead of measuring every row itself."""
    if LENGTH_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(LENGTH_COLUMN, row_lengths(dataset))


def pack_indices(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: rows (by index) grouped so each group's total length is at
    most `max_length`. Longest rows are placed first, each into the fullest group it still fits.
    Groups list their rows in dataset order and come ordered by their first row."""
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        raise UserError(
            f"row {too_long[0]} has {lengths[too_long[0]]} tokens, more than --packing_max_length {max_length}; "
            "raise --packing_max_length to at least the dataset's --max_seq_length"
        )
    shortest = min(lengths, default=0)
    groups: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens left, group index), sorted: bisect finds the best fit
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[index]
        slot = bisect.bisect_left(free, (need, -1))
        if slot == len(free):
            groups.append([index])
            group, left = len(groups) - 1, max_length - need
        else:
            left, group = free.pop(slot)
            groups[group].append(index)
            left -= need
        if left >= max(shortest, 1):  # a group no row fits into is full: keep the list short
            bisect.insort(free, (left, group))
    return sorted((sorted(group) for group in groups), key=lambda group: group[0])


def pack_dataset(dataset, max_length: int):
    """A dataset of packed rows (`input_ids`, `labels`, `position_ids`) holding every sample once."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    groups = pack_indices(row_lengths(dataset), max_length)
    all_ids = _arrow_column(dataset, "input_ids").to_pylist()
    all_labels = _arrow_column(dataset, "labels").to_pylist()
    packed: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    for group in tqdm(groups, desc="Packing", unit="row", disable=len(groups) < 1000):
        input_ids, labels, position_ids = [], [], []
        for index in group:
            sample_labels = list(all_labels[index])
            sample_labels[0] = IGNORE_INDEX  # its "previous token" is another sample's last token
            input_ids += all_ids[index]
            labels += sample_labels
            position_ids += range(len(all_ids[index]))
        packed["input_ids"].append(input_ids)
        packed["labels"].append(labels)
        packed["position_ids"].append(position_ids)
    return Dataset.from_dict(packed)


class PaddingCollator:
    """Pad a list of rows into a batch: ids with the pad token, labels with IGNORE_INDEX.

    Plain rows get an attention mask hiding the padding. Packed rows (with `position_ids`) get no
    attention mask, their padding becomes one more sequence (positions 0, 1, …) that nothing
    attends to, and `use_cache=False`: a model that builds a KV cache skips packed-sequence
    detection and would let samples attend to each other (measured with transformers 5.24).
    Columns other than the model inputs (e.g. `length`) are dropped.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None,
                 max_length: int | None = None):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length  # pad every batch to this length (the wasteful baseline)

    def target_length(self, longest: int) -> int:
        length = max(longest, self.max_length or 0)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return length

    def _pad(self, values: list[int], length: int, fill: list[int]) -> list[int]:
        return values + fill if self.padding_side == "right" else fill + values

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor | bool]:
        length = self.target_length(max(len(row["input_ids"]) for row in rows))
        packed = "position_ids" in rows[0]
        batch: dict[str, list] = {"input_ids": [], "labels": [], "position_ids" if packed else "attention_mask": []}
        for row in rows:
            ids = list(row["input_ids"])
            missing = length - len(ids)
            batch["input_ids"].append(self._pad(ids, length, [self.pad_token_id] * missing))
            batch["labels"].append(self._pad(list(row["labels"]), length, [IGNORE_INDEX] * missing))
            if packed:
                batch["position_ids"].append(self._pad(list(row["position_ids"]), length, list(range(missing))))
            else:
                batch["attention_mask"].append(self._pad([1] * len(ids), length, [0] * missing))
        out: dict[str, torch.Tensor | bool] = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        if packed:
            out["use_cache"] = False
        return out



def prepare_batching(dataset, tokenizer, data_args, training_args, max_seq_length: int):
    """The (dataset, collator) pair a recipe hands to the Trainer, per `--packing` /
    `--group_by_length` (`DataArguments`) and `--train_sampling_strategy` (`TrainingArguments`)."""
    from .data import make_collator

    if data_args.group_by_length:
        training_args.train_sampling_strategy = GROUP_BY_LENGTH
    grouping = training_args.train_sampling_strategy == GROUP_BY_LENGTH
    if data_args.packing and grouping:
        raise UserError("--packing and --group_by_length exclude each other: packed rows are all about "
                        "--packing_max_length long; pick one")
    if data_args.packing:
        samples, max_length = len(dataset), data_args.packing_max_length or max_seq_length
        dataset = pack_dataset(dataset, max_length)
        if training_args.process_index == 0:
            print(f"packing: {samples} samples into {len(dataset)} rows of at most {max_length} tokens")
    elif grouping:
        dataset = add_length_column(dataset)
        # The Trainer drops columns the model does not take before building the sampler, and the
        # sampler would then measure every row itself; our collator ignores `length` anyway.
        training_args.remove_unused_columns = False
    return dataset, make_collator(tokenizer)
