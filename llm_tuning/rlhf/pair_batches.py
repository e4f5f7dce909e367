"""Preference pairs on token budgets: how DPO, ORPO and reward-model training batch their pairs.

TRL's pair trainers put the chosen and the rejected sequence (prompt + reply) of every pair of a
batch into one tensor, padded to the longest of them, and draw the pairs in a random order: on
long-tailed data most of what they compute is padding. Here, as for SFT (`llm_tuning/batching.py`,
whose samplers and budget this reuses), the pairs are sorted by length and cut into batches:

- tokens (the default, `--batching auto`; `--max_tokens_per_batch N` for a budget of your own):
  batches of at most N padded positions, the chosen and the rejected sequences counted together
  (a pair costs 2 x its longer sequence). The automatic budget is the smallest that gives no more
  batches than `--per_device_train_batch_size` pairs would: an epoch takes as many steps.
- sorted: the same order cut into batches of exactly `--per_device_train_batch_size` pairs.
- random: the trainer's own order and batches.
Pairs are never packed (the trainers pad chosen and rejected together), and transformers' length
grouping does not read pairs: `--batching packing|group_by_length` is refused.

Exact, like SFT: every micro-batch's loss counts by its share of the optimizer step's pairs (and
ORPO's NLL term by its share of the step's chosen tokens, the mean it takes), so gradient
accumulation over micro-batches of different sizes gives the gradient of one batch of all their
pairs, and a first step's loss equals one padded batch's (tests/test_pair_batches.py). This holds for
every loss that is a mean over pairs: all of TRL's except DPO's `aot` and `aot_unpaired`, which
compare the pairs of a batch with each other, and `sft`, a mean over a batch's tokens. With those,
auto keeps the trainer's own batches.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch

from ..batching import (
    AUTO, MAX_PADDING, PACKING, RANDOM, SORTED, TOKENS, BatchSamplerMixin, EpochSeedCallback,
    LengthSortedBatchSampler, automatic_token_budget, resolve_batching, row_lengths,
)
from ..cli import UserError

PAIR_MODES = (AUTO, TOKENS, SORTED, RANDOM)
# DPO losses that are not a mean over the pairs of a batch: a batch's make-up changes them.
BATCH_COUPLED_LOSSES = ("aot", "aot_unpaired", "sft")


@dataclass
class PairBatchingArguments:
    """How a DPO, ORPO or reward-model run batches its pairs: the flags SFT has, for pairs."""

    batching: str = field(
        default=AUTO,
        metadata={"help": "auto (tokens; random for DPO's aot, aot_unpaired and sft losses), tokens (length-sorted "
                          "batches of a token budget, chosen and rejected counted together), sorted (length-sorted "
                          "batches of --per_device_train_batch_size pairs) or random (the trainer's own)."},
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={"help": "Token budget of a length-sorted batch: padded positions of its chosen and rejected "
                          "sequences. Default: the smallest giving no more batches than "
                          "--per_device_train_batch_size pairs would."},
    )


def pair_lengths(dataset, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Tokens of every pair's chosen and rejected sequence (prompt + reply) in a pair trainer's
    tokenized dataset, at most `max_length` (where the collator cuts them): DPOTrainer keeps
    `prompt_ids`, `chosen_ids`, `rejected_ids`; RewardTrainer whole `chosen_ids`, `rejected_ids`;
    ORPOTrainer whole `chosen_input_ids`, `rejected_input_ids`."""
    columns = dataset.column_names
    if "chosen_input_ids" in columns:
        chosen, rejected = row_lengths(dataset, "chosen_input_ids"), row_lengths(dataset, "rejected_input_ids")
    else:
        chosen, rejected = row_lengths(dataset, "chosen_ids"), row_lengths(dataset, "rejected_ids")
        if "prompt_ids" in columns:
            prompt = row_lengths(dataset, "prompt_ids")
            chosen = [p + c for p, c in zip(prompt, chosen)]
            rejected = [p + r for p, r in zip(prompt, rejected)]
    if max_length:
        chosen, rejected = [min(n, max_length) for n in chosen], [min(n, max_length) for n in rejected]
    return chosen, rejected


def padded_pair_lengths(chosen: list[int], rejected: list[int]) -> list[int]:
    """Positions each pair takes in a batch of its own: both sequences, padded to the longer."""
    return [2 * max(c, r) for c, r in zip(chosen, rejected)]


def resolve_pair_batching(args: PairBatchingArguments, training_args) -> tuple[str, bool]:
    """The batching mode of a pair trainer and whether it was chosen automatically, from
    `--batching`, `--max_tokens_per_batch`, `--train_sampling_strategy` and DPO's `--loss_type`.
    The scripts call it first, so a flag mistake stops them before anything loads."""
    loss_types = getattr(training_args, "loss_type", None) or ()
    loss_types = (loss_types,) if isinstance(loss_types, str) else tuple(loss_types)
    mode, automatic = resolve_batching(args, training_args)
    if mode == PACKING and automatic:  # auto packs on a GPU with flash-attention; pairs are not packed
        mode = TOKENS
    if mode not in PAIR_MODES:
        raise UserError(f"{mode} batching is not available for preference pairs (the trainer pads each pair's chosen "
                        f"and rejected sequences into one batch); choose --batching {'|'.join(PAIR_MODES)}")
    coupled = [loss for loss in loss_types if loss in BATCH_COUPLED_LOSSES]
    if coupled and mode == TOKENS:
        if automatic:
            return RANDOM, True
        raise UserError(f"--loss_type {coupled[0]} is not a mean over pairs, so batches that hold different numbers "
                        f"of pairs change it; pass --batching sorted or random instead of a token budget")
    return mode, automatic


def pair_batch_sampler(mode: str, args: PairBatchingArguments, training_args, lengths: list[int]) -> LengthSortedBatchSampler | None:
    """Length-sorted batches of the pairs (`lengths`: `padded_pair_lengths`) for the tokens and
    sorted modes; None for random (the trainer's own sampler)."""
    pairs = training_args.per_device_train_batch_size
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    if mode == SORTED:
        return LengthSortedBatchSampler(lengths, batch_size=pairs, seed=seed)
    if mode != TOKENS:
        return None
    budget, max_padding = args.max_tokens_per_batch, MAX_PADDING
    if budget is None:  # as for SFT: the automatic budget keeps the step count, a budget of one's own caps padding
        budget, max_padding = automatic_token_budget(lengths, pairs), None
    elif max(lengths, default=0) > budget:
        longest = max(lengths)
        raise UserError(f"a pair takes {longest} tokens (chosen and rejected, each padded to the longer), more than "
                        f"--max_tokens_per_batch {budget}; raise --max_tokens_per_batch to at least {longest}")
    return LengthSortedBatchSampler(lengths, max_tokens=budget, seed=seed, max_padding=max_padding)


def describe_pair_batching(mode: str, automatic: bool, args: PairBatchingArguments, training_args,
                           batch_sampler: LengthSortedBatchSampler | None) -> str:
    pairs = training_args.per_device_train_batch_size
    if mode == TOKENS:
        what = (f"length-sorted batches of at most {batch_sampler.max_tokens} tokens (chosen and rejected together), "
                f"{len(batch_sampler)} an epoch")
        if args.max_tokens_per_batch is None:
            what += f" ({pairs}-pair batches: {-(-len(batch_sampler.lengths) // pairs)})"
    elif mode == SORTED:
        what = f"length-sorted batches of {pairs} pairs"
    else:
        what = f"the trainer's own batches of {pairs} pairs, padded to their longest sequence"
    if automatic:
        what += " (auto: this loss compares the pairs of a batch)" if mode == RANDOM else " (auto)"
    return (f"batching: {mode}, {what}; choose with --batching {'|'.join(PAIR_MODES[1:])} "
            f"or --max_tokens_per_batch N")


# --- the trainers -----------------------------------------------------------------------------------

class PairBatches(BatchSamplerMixin):
    """Mixed into a TRL pair trainer (`with_pair_batches`): length-sorted batches from
    `use_pair_batching`, and a loss that counts every pair alike however the pairs of an optimizer
    step fall into micro-batches.

    TRL's losses are means over the pairs of a micro-batch, and the Trainer divides each by the
    number of micro-batches; with micro-batches of unequal sizes that would weigh the pairs of
    small ones more. Instead each micro-batch's mean is multiplied by its share of the step's pairs
    (counted over all processes, which the gradient average divides by again)."""

    loss_is_scaled_for_ga = True  # compute_loss weighs each micro-batch itself
    _step_totals: torch.Tensor | None = None

    def use_pair_batching(self, args: PairBatchingArguments) -> str:
        """Batch the (tokenized) training pairs per `args`; returns the line that says how, printed
        on the main process."""
        mode, automatic = resolve_pair_batching(args, self.args)
        lengths = padded_pair_lengths(*pair_lengths(self.train_dataset, getattr(self.args, "max_length", None)))
        self.batch_sampler = pair_batch_sampler(mode, args, self.args, lengths)
        if self.batch_sampler is not None:
            self.add_callback(EpochSeedCallback(self.batch_sampler))
        description = describe_pair_batching(mode, automatic, args, self.args, self.batch_sampler)
        if self.args.process_index == 0:
            print(description)
        return description

    def step_counts(self, batch) -> torch.Tensor:
        """What the losses of a micro-batch average over: its pairs (the chosen rows come first,
        then as many rejected rows)."""
        return torch.tensor([len(batch["input_ids"]) // 2])

    def weigh(self, loss: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        return loss * shares[0]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        totals = sum((self.step_counts(batch) for batch in batches), torch.zeros(1, dtype=torch.long))
        if self.args.world_size > 1:
            totals = self.accelerator.gather(totals.to(device)).view(self.args.world_size, -1).sum(0).cpu()
        self._step_totals = totals
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with gathers_of_unequal_length(self.accelerator):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        if not self.model.training:  # evaluation: the plain mean of the batch
            return result
        loss, outputs = result if return_outputs else (result, None)
        shares = (self.step_counts(inputs) * self.args.world_size / self._step_totals).to(loss.device)
        loss = self.weigh(loss, shares)
        return (loss, outputs) if return_outputs else loss


@contextlib.contextmanager
def gathers_of_unequal_length(accelerator):
    """Within the block, `accelerator.gather` (and `gather_for_metrics`, which calls it) also takes
    tensors whose first dimension differs between processes. TRL's trainers gather their per-pair
    metrics (rewards, margins, log-probs) so, and plain gather needs the same shape everywhere,
    which budget batches dealt to several processes do not have: pad to the longest, gather, and
    drop the padding again."""
    if accelerator.num_processes == 1:
        yield
        return
    plain = accelerator.gather

    def gather(tensor):
        if not torch.is_tensor(tensor) or tensor.dim() == 0:
            return plain(tensor)
        sizes = plain(torch.tensor([tensor.shape[0]], device=tensor.device)).tolist()
        padded = accelerator.pad_across_processes(tensor, dim=0)
        pieces = plain(padded).split(padded.shape[0])
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])

    accelerator.gather = gather
    try:
        yield
    finally:
        del accelerator.gather  # the class's own again


class ORPOPairBatches(PairBatches):
    """ORPO's loss is the chosen replies' NLL, a mean over their tokens (prompt included), minus
    β x a mean over pairs: each term counts by its own share."""

    _chosen_nll: torch.Tensor | None = None

    def step_counts(self, batch) -> torch.Tensor:
        # NLL targets: every real chosen token after the first
        return torch.tensor([len(batch["chosen_input_ids"]), int(batch["chosen_attention_mask"][:, 1:].sum())])

    def concatenated_forward(self, model, batch):
        outputs = super().concatenated_forward(model, batch)
        self._chosen_nll = outputs[4]
        return outputs

    def weigh(self, loss: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        pairs, tokens = shares
        return loss * pairs + (tokens - pairs) * self._chosen_nll


@functools.cache
def with_pair_batches(trainer_class: type) -> type:
    """`trainer_class` (DPOTrainer, ORPOTrainer, RewardTrainer) with `PairBatches` mixed in, under
    the same name (messages and model cards name TRL's trainer)."""
    mixin = ORPOPairBatches if hasattr(trainer_class, "odds_ratio_loss") else PairBatches
    return type(trainer_class.__name__, (mixin, trainer_class), {"__doc__": trainer_class.__doc__})


def pair_trainer(trainer_class: type, batching_args: PairBatchingArguments, **trainer_kwargs):
    """A `trainer_class` trainer (`trainer_kwargs` as for it) whose training pairs are batched per
    `batching_args`."""
    trainer = with_pair_batches(trainer_class)(**trainer_kwargs)
    trainer.use_pair_batching(batching_args)
    return trainer
