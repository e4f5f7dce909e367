"""How tokenized rows become training batches: sorted buckets, token budgets, length grouping, packing.

Padding is where small-GPU training loses its time (and where its OOMs come from): one long row
pads every other row of its batch to its length. The ways out, shared by every recipe
(`--batching`, chosen at start-up and printed; `auto` picks the fastest exact one):

- token budget (the default without a varlen attention kernel; `--batching tokens`, or
  `--max_tokens_per_batch N` for a budget of your own): rows are sorted by length (ties in a
  seeded random order) and cut into batches of at most N padded positions, so short rows come
  many to a batch and long ones few; the batches are shuffled. Memory is capped by N instead of
  by rows x the longest row. The automatic budget is the smallest N that gives no more batches
  than `--per_device_train_batch_size` rows would: an epoch takes as many optimizer steps, and
  padding stays low (0.975 real tokens on the bench's long tail). Under a budget of your own a
  batch also closes early rather than be more than 3 % padding (efficiency >= 0.97 by design;
  more steps where lengths are sparse).
- sorted (`--batching sorted`): the same sorted order cut into batches of exactly
  `--per_device_train_batch_size` rows, for when the rows per step must not vary.
- length grouping (`--batching group_by_length`, `--group_by_length true`, the same as
  `--train_sampling_strategy group_by_length`): transformers' sampler draws mega-batches of 50
  batches and sorts each by length. Lengths come from a `length` column read from the Arrow data.
- random (`--batching random`): random batches, each padded to its own longest row.
- packing (`--batching packing`, `--packing true`; the default on a GPU with flash-attention):
  rows are bin-packed (best-fit decreasing) into rows of at most `--packing_max_length` tokens.
  Each packed row carries `position_ids` that restart at 0 for every sample and no attention
  mask; from those, transformers builds a block-diagonal causal mask (sdpa, eager) or calls
  variable-length flash attention, so a sample never attends to another. The label of each
  sample's first token is masked: it would otherwise be predicted from the previous sample's last
  token. Per-sample losses equal the unpacked ones (tests/test_packing.py).

Right-padded batches carry no attention mask: under a causal mask a real token only sees earlier
positions, which are all real, so the mask changes nothing the loss reads, while leaving it out
lets sdpa use its fused causal kernel instead of materialising every attention matrix (measured
on CPU: half the time and ~300 MiB less for 8 rows of 1,000 tokens). Every mode computes the same
loss per supervised token (tests/test_batching.py).
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import seed_worker

from .cli import UserError
from .data import IGNORE_INDEX

LENGTH_COLUMN = "length"
GROUP_BY_LENGTH = "group_by_length"


def row_lengths(dataset, column: str = "input_ids") -> list[int]:
    """Token count of every row (of a list column), read from the Arrow column (no decoding of the rows)."""
    import pyarrow.compute as pc

    return pc.list_value_length(_arrow_column(dataset, column)).to_pylist()


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

    Left-padded rows get an attention mask hiding the padding; right-padded rows need none (see
    the module docstring) unless `attention_mask=True`. Packed rows (with `position_ids`) get no
    attention mask, their padding becomes one more sequence (positions 0, 1, …) that nothing
    attends to, and `use_cache=False`: a model that builds a KV cache skips packed-sequence
    detection and would let samples attend to each other (measured with transformers 5.24).
    Columns other than the model inputs (e.g. `length`) are dropped.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None,
                 max_length: int | None = None, attention_mask: bool = False):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length  # pad every batch to this length (the wasteful baseline)
        self.attention_mask = attention_mask or padding_side == "left"

    def target_length(self, longest: int) -> int:
        length = max(longest, self.max_length or 0)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return length

    def _pad(self, values: list[int], fill: list[int]) -> list[int]:
        return values + fill if self.padding_side == "right" else fill + values

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor | bool]:
        length = self.target_length(max(len(row["input_ids"]) for row in rows))
        packed = "position_ids" in rows[0]
        batch: dict[str, list] = {"input_ids": [], "labels": []}
        if packed:
            batch["position_ids"] = []
        elif self.attention_mask:
            batch["attention_mask"] = []
        for row in rows:
            ids = list(row["input_ids"])
            missing = length - len(ids)
            batch["input_ids"].append(self._pad(ids, [self.pad_token_id] * missing))
            batch["labels"].append(self._pad(list(row["labels"]), [IGNORE_INDEX] * missing))
            if packed:
                batch["position_ids"].append(self._pad(list(row["position_ids"]), list(range(missing))))
            elif self.attention_mask:
                batch["attention_mask"].append(self._pad([1] * len(ids), [0] * missing))
        out: dict[str, torch.Tensor | bool] = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        if packed:
            out["use_cache"] = False
        return out


MAX_PADDING = 0.03  # of a batch's positions, under a budget of the user's own


def batch_sizes(sorted_lengths: Sequence[int], batch_size: int | None = None, max_tokens: int | None = None,
                max_padding: float | None = None) -> list[int]:
    """Rows per batch when the sorted lengths are cut, from the shortest, into batches of
    `batch_size` rows, or of at most `max_tokens` padded positions (rows x longest row) that,
    with `max_padding`, close early rather than be more than that fraction padding."""
    sizes, rows, tokens = [], 0, 0
    for length in np.asarray(sorted_lengths).tolist():  # each row is the longest of its batch so far
        rows, tokens, padded = rows + 1, tokens + length, (rows + 1) * length
        if batch_size is not None:
            fits = rows <= batch_size
        else:
            fits = padded <= max_tokens and (max_padding is None or tokens >= padded * (1 - max_padding))
        if rows > 1 and not fits:
            sizes.append(rows - 1)
            rows, tokens = 1, length
    return sizes + ([rows] if rows else [])


class LengthSortedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches cut from the rows sorted by length, in a shuffled order: rows of (nearly) the same
    length share a batch, so almost no position is padding.

    Each batch holds `batch_size` rows (the last one fewer) or, with `max_tokens`, as many rows as
    fit in `max_tokens` padded positions (rows x longest row). With `max_padding` a token-budget
    batch also closes before a row that would make more than that fraction of its positions
    padding (where the long tail thins out, a shorter batch beats a padded one; `batch_sizes`).
    The number of batches depends on the lengths only.

    Ties in length are broken in a random order and the batches shuffled, both drawn from
    (seed, epoch): the same seed and epoch give the same batches, which is what lets a resumed run
    skip exactly the batches it has trained on. Every process builds the same list; accelerate
    hands each rank its share (`BatchSamplerShard`)."""

    def __init__(self, lengths: Sequence[int], batch_size: int | None = None, max_tokens: int | None = None,
                 seed: int = 0, max_padding: float | None = MAX_PADDING):
        if (batch_size is None) == (max_tokens is None):
            raise ValueError("give batch_size or max_tokens, not both")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.seed, self.epoch = seed, 0
        longest = int(self.lengths.max(initial=0))
        if max_tokens is not None and longest > max_tokens:
            raise UserError(f"a row has {longest} tokens, more than --max_tokens_per_batch {max_tokens}; "
                            f"raise --max_tokens_per_batch to at least {longest}")
        self._sizes = batch_sizes(np.sort(self.lengths), batch_size, max_tokens, max_padding)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches (row indices), in training order."""
        generator = np.random.default_rng([self.seed, self.epoch])
        order = np.lexsort((generator.permutation(len(self.lengths)), self.lengths))
        bounds = np.cumsum([0, *self._sizes])
        batches = [order[start:end].tolist() for start, end in zip(bounds[:-1], bounds[1:])]
        return [batches[i] for i in generator.permutation(len(batches))]

    def __iter__(self):
        yield from self.batches()

    def __len__(self) -> int:
        return len(self._sizes)


class BatchSamplerMixin:
    """For a `Trainer` (sub)class: draw the training batches from `self.batch_sampler`
    (a `LengthSortedBatchSampler`), or, while it is None, as the Trainer itself would.

    transformers' own samplers yield rows and leave batching to the DataLoader; a sampler that
    decides the batches goes in as the DataLoader's `batch_sampler`. `accelerator.prepare` then
    shards it across processes and `skip_first_batches` resumes it, as for any other DataLoader.
    Whoever sets the sampler also adds `EpochSeedCallback(sampler)`."""

    batch_sampler: LengthSortedBatchSampler | None = None

    def get_train_dataloader(self) -> DataLoader:
        if self.batch_sampler is None:
            return super().get_train_dataloader()
        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        loader = DataLoader(
            dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            multiprocessing_context=self.args.dataloader_multiprocessing_context,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            worker_init_fn=partial(seed_worker, num_workers=self.args.dataloader_num_workers,
                                   rank=self.args.process_index),
        )
        return self.accelerator.prepare(loader)


class BatchSamplerTrainer(BatchSamplerMixin, Trainer):
    """`Trainer` that draws its training batches from a batch sampler (`LengthSortedBatchSampler`)."""

    def __init__(self, *args, batch_sampler: LengthSortedBatchSampler, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_sampler = batch_sampler
        self.add_callback(EpochSeedCallback(batch_sampler))


class EpochSeedCallback(TrainerCallback):
    """Hand the epoch to the batch sampler. The Trainer does so itself, except when a resumed
    multi-process run wraps the sampler twice (skip, then shard) and the call no longer reaches it."""

    def __init__(self, batch_sampler: LengthSortedBatchSampler):
        self.batch_sampler = batch_sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.batch_sampler.set_epoch(math.floor(state.epoch or 0))


# --- choosing the batching mode -------------------------------------------------------------------

AUTO, SORTED, TOKENS, RANDOM, PACKING = "auto", "sorted", "tokens", "random", "packing"
BATCHING_MODES = (AUTO, TOKENS, SORTED, GROUP_BY_LENGTH, RANDOM, PACKING)


def varlen_attention_available() -> bool:
    """Whether packed rows can run on variable-length flash attention (a CUDA GPU with flash-attn):
    then packing computes no attention across samples, and nothing is faster."""
    from transformers.utils import is_flash_attn_2_available

    return torch.cuda.is_available() and is_flash_attn_2_available()


def resolve_batching(data_args, training_args) -> tuple[str, bool]:
    """The batching mode this run uses and whether it was chosen automatically, from `--batching`,
    `--max_tokens_per_batch` and the older switches `--packing`, `--group_by_length` and
    `--train_sampling_strategy` (whose other strategies, e.g. sequential, run as `random`: the
    Trainer's own sampler)."""
    if data_args.batching not in BATCHING_MODES:
        raise UserError(f"--batching {data_args.batching!r} is unknown; choose {', '.join(BATCHING_MODES)}")
    asked = {data_args.batching} - {AUTO}
    if getattr(data_args, "packing", False):  # the older switches, where the arguments have them
        asked.add(PACKING)
    if getattr(data_args, "group_by_length", False) or training_args.train_sampling_strategy == GROUP_BY_LENGTH:
        asked.add(GROUP_BY_LENGTH)
    elif training_args.train_sampling_strategy != "random":
        asked.add(RANDOM)
    if asked == {PACKING, GROUP_BY_LENGTH}:
        raise UserError("--packing and --group_by_length exclude each other: packed rows are all about "
                        "--packing_max_length long; pick one")
    if len(asked) > 1:
        raise UserError(f"batching flags disagree ({', '.join(sorted(asked))}); pass one --batching")
    if data_args.max_tokens_per_batch is not None:
        if asked - {SORTED, TOKENS}:
            raise UserError(f"--max_tokens_per_batch makes length-sorted batches; it does not combine with "
                            f"{asked.pop()} batching")
        if data_args.max_tokens_per_batch < 1:
            raise UserError("--max_tokens_per_batch must be a positive number of tokens")
        return TOKENS, False
    if asked:
        return asked.pop(), False
    return (PACKING if varlen_attention_available() else TOKENS), True


def automatic_token_budget(lengths: Sequence[int], rows_per_batch: int) -> int:
    """Tokens per batch when no `--max_tokens_per_batch` is given: the smallest budget whose
    batches (without a padding cap) are no more than `rows_per_batch`-row batches would be, so an
    epoch takes as many optimizer steps, and the learning-rate schedule means the same, as with
    fixed row batches, while a batch of long rows holds fewer of them: memory follows the mean
    row, not the longest. Found by bisection; at least the longest row."""
    sorted_lengths = np.sort(np.asarray(lengths, dtype=np.int64))
    if len(sorted_lengths) == 0:
        return 1
    steps = math.ceil(len(sorted_lengths) / rows_per_batch)
    low, high = int(sorted_lengths[-1]), rows_per_batch * int(sorted_lengths[-1])
    while low < high:
        middle = (low + high) // 2
        if len(batch_sizes(sorted_lengths, max_tokens=middle)) <= steps:  # rows x longest always fits
            high = middle
        else:
            low = middle + 1
    return low


def describe_batching(mode: str, automatic: bool, data_args, training_args,
                      batch_sampler: LengthSortedBatchSampler | None = None) -> str:
    rows = training_args.per_device_train_batch_size
    budget = ""
    if mode == TOKENS:
        budget = f"length-sorted batches of at most {batch_sampler.max_tokens} tokens, {len(batch_sampler)} an epoch"
        if data_args.max_tokens_per_batch is None:
            row_batches = math.ceil(len(batch_sampler.lengths) / rows)
            budget += f" ({rows}-row batches: {row_batches})"
    what = {
        SORTED: f"length-sorted batches of {rows} rows",
        TOKENS: budget,
        GROUP_BY_LENGTH: "length-grouped batches (transformers' sampler)",
        RANDOM: f"the Trainer's {training_args.train_sampling_strategy} sampler, batches padded to their longest row",
        PACKING: "packed rows with per-sample position ids",
    }[mode]
    if automatic:
        what += " (auto: flash-attention varlen on a GPU)" if mode == PACKING else " (auto: no varlen attention kernel)"
    return f"batching: {mode}, {what}; choose with --batching {'|'.join(BATCHING_MODES[1:])} or --max_tokens_per_batch N"


@dataclass
class Batching:
    """What `prepare_batching` hands to the Trainer."""

    mode: str
    dataset: object
    collator: PaddingCollator
    batch_sampler: LengthSortedBatchSampler | None = None
    # TrainingArguments fields this mode needs (e.g. the length-grouped sampler's); see `trainer`.
    trainer_settings: dict = field(default_factory=dict)

    def trainer(self, **kwargs) -> Trainer:
        """A Trainer over these batches; `kwargs` as for `transformers.Trainer`. Its `args` is a copy
        of the given one with `trainer_settings` applied; the caller's arguments stay unchanged."""
        if self.trainer_settings:
            kwargs["args"] = copy.copy(kwargs["args"])
            for name, value in self.trainer_settings.items():
                setattr(kwargs["args"], name, value)
        kwargs.update(train_dataset=self.dataset, data_collator=self.collator)
        if self.batch_sampler is None:
            return Trainer(**kwargs)
        return BatchSamplerTrainer(**kwargs, batch_sampler=self.batch_sampler)


def make_collator(tokenizer, pad_to_multiple_of: int | None = None, max_length: int | None = None) -> PaddingCollator:
    """Dynamic padding to the longest row of each batch (or to `max_length`): ids with the pad
    token, labels with IGNORE_INDEX, and an attention mask that hides the padding. Packed rows
    (with `position_ids`) are padded so samples never see each other."""
    return PaddingCollator(tokenizer.pad_token_id, tokenizer.padding_side, pad_to_multiple_of, max_length)


def prepare_batching(dataset, tokenizer, data_args, training_args, max_seq_length: int) -> Batching:
    """The dataset, collator and batch sampler a recipe hands to the Trainer, per `--batching`
    (`DataArguments`) and `--train_sampling_strategy` (`TrainingArguments`). `training_args` is
    left as given: what the mode needs changed in it is applied by `Batching.trainer`, on a copy."""
    mode, automatic = resolve_batching(data_args, training_args)
    batch_sampler, settings = None, {}
    if mode in (SORTED, TOKENS):
        lengths, rows = row_lengths(dataset), training_args.per_device_train_batch_size
        seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        if mode == SORTED:
            batch_sampler = LengthSortedBatchSampler(lengths, batch_size=rows, seed=seed)
        else:
            # A budget of the user's own caps padding too; the automatic one keeps the step count.
            budget, max_padding = data_args.max_tokens_per_batch, MAX_PADDING
            if budget is None:
                budget, max_padding = automatic_token_budget(lengths, rows), None
            batch_sampler = LengthSortedBatchSampler(lengths, max_tokens=budget, seed=seed, max_padding=max_padding)
    if training_args.process_index == 0:
        print(describe_batching(mode, automatic, data_args, training_args, batch_sampler))
    if mode == PACKING:
        samples, max_length = len(dataset), data_args.packing_max_length or max_seq_length
        dataset = pack_dataset(dataset, max_length)
        if training_args.process_index == 0:
            print(f"packing: {samples} samples into {len(dataset)} rows of at most {max_length} tokens")
    elif mode == GROUP_BY_LENGTH:
        dataset = add_length_column(dataset)
        # The Trainer drops columns the model does not take before building the sampler, and the
        # sampler would then measure every row itself; our collator ignores `length` anyway.
        settings = {"train_sampling_strategy": GROUP_BY_LENGTH, "remove_unused_columns": False}
    return Batching(mode, dataset, make_collator(tokenizer), batch_sampler, settings)
