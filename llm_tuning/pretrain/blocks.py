"""Continued pretraining data: a resumable stream of packed blocks over a sharded, mixed corpus.

    shards (zstd jsonl, per source) ──datasets streaming──▶ one infinite stream per source
    ──interleave with the mixture probabilities (seeded)──▶ texts ──tokenize, join with EOS,
    cut into blocks of `block_size`──▶ {"input_ids"} blocks

The stream is a `datasets.IterableDataset`, whose `state_dict()` says exactly where every source
and the sampler stand. `ResumableStream` remembers that state after each block, and
`StreamStateCallback` writes the state at the last block a checkpoint trained on into the
checkpoint, so a resumed run starts reading where the stopped one was instead of replaying (and
re-decompressing) everything it already saw.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from ..cli import UserError
from .shards import TEXT_KEY, load_manifest, read_texts, shard_paths

STREAM_STATE_FILE = "stream_state.json"
SOURCE_KEY = "source"                # which source a text or held-out block comes from (an index)
SOURCE_TOKENS_KEY = "source_tokens"  # a training block's tokens per source


def pack_texts(texts: list[str], tokenizer, block_size: int) -> list[list[int]]:
    """Tokenize, append EOS to every text, concatenate and cut into full blocks (the tail that does
    not fill a block is dropped)."""
    return pack_sourced_texts(texts, [0] * len(texts), 1, tokenizer, block_size)[0]


def pack_sourced_texts(texts: list[str], sources: list[int], num_sources: int, tokenizer,
                       block_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """`pack_texts`, also counting each block's tokens per source: (blocks, [tokens of source 0,
    1, …] per block). A text's EOS counts to its source."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token to join texts with; set tokenizer.eos_token")
    ids: list[int] = []
    id_sources: list[int] = []
    for text_ids, source in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], sources):
        ids += text_ids + [tokenizer.eos_token_id]
        id_sources += [source] * (len(text_ids) + 1)
    starts = range(0, len(ids) - block_size + 1, block_size)
    counts = [np.bincount(id_sources[start:start + block_size], minlength=num_sources).tolist() for start in starts]
    return [ids[start:start + block_size] for start in starts], counts


def mean_tokens_per_text(corpus_dir: str | Path, tokenizer, sample_texts: int = 1000) -> dict[str, float]:
    """Tokens (EOS included) per text of each source, measured on its first `sample_texts` texts."""
    manifest = load_manifest(corpus_dir)
    means = {}
    for source in manifest["sources"]:
        texts = list(islice((t for shard in shard_paths(corpus_dir, manifest, source) for t in read_texts(shard)),
                            sample_texts))
        lengths = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        means[source] = sum(lengths) / len(lengths)
    return means


def source_streams(corpus_dir: str | Path, sources: list[str]):
    """One endless `datasets` stream of `{"text", "source"}` per source (`source` is its index in
    `sources`), cycling over its shards in order."""
    from datasets import load_dataset

    manifest = load_manifest(corpus_dir)
    unknown = [s for s in sources if s not in manifest["sources"]]
    if unknown:
        raise UserError(f"{corpus_dir} has no source {', '.join(unknown)}; it has: {', '.join(manifest['sources'])}")
    return [
        load_dataset("json", data_files=shard_paths(corpus_dir, manifest, source), split="train", streaming=True)
        .select_columns([TEXT_KEY]).repeat(None)
        .map(lambda batch, index=index: {SOURCE_KEY: [index] * len(batch[TEXT_KEY])}, batched=True)
        for index, source in enumerate(sources)
    ]


def mixed_text_stream(corpus_dir: str | Path, probabilities: dict[str, float], seed: int):
    """`{"text", "source"}` drawn source by source with the given probabilities, deterministic for a
    seed; `source` indexes the sources of positive probability, in the order given."""
    from datasets import interleave_datasets

    sources = [name for name, p in probabilities.items() if p > 0]
    streams = source_streams(corpus_dir, sources)
    if len(streams) == 1:
        return streams[0]
    return interleave_datasets(streams, probabilities=[probabilities[s] for s in sources], seed=seed,
                               stopping_strategy="first_exhausted")  # never: every stream repeats


def block_stream(corpus_dir: str | Path, probabilities: dict[str, float], tokenizer, block_size: int,
                 seed: int, texts_per_batch: int = 1000):
    """The endless training stream of `{"input_ids": [block_size ids], "source_tokens": [tokens of
    each source in the block]}` blocks (sources in `probabilities` order, zero-probability ones included)."""
    names = list(probabilities)
    drawn = [names.index(name) for name, p in probabilities.items() if p > 0]

    def pack(batch):
        sources = [drawn[index] for index in batch[SOURCE_KEY]]
        blocks, counts = pack_sourced_texts(batch[TEXT_KEY], sources, len(names), tokenizer, block_size)
        return {"input_ids": blocks, SOURCE_TOKENS_KEY: counts}

    return mixed_text_stream(corpus_dir, probabilities, seed).map(
        pack, batched=True, batch_size=texts_per_batch, remove_columns=[TEXT_KEY, SOURCE_KEY])


@dataclass
class HeldoutSet:
    """Held-out blocks of every source, `{"input_ids", "source"}` each (`source` indexes `sources`)."""

    blocks: list[dict]
    sources: list[str]

    def counts(self) -> dict[str, int]:
        return {name: sum(b[SOURCE_KEY] == i for b in self.blocks) for i, name in enumerate(self.sources)}


def heldout_blocks(corpus_dir: str | Path, tokenizer, block_size: int, max_blocks: int | None = None) -> HeldoutSet:
    """Packed blocks from every source's held-out shard (for eval loss). Past `max_blocks`, each
    source keeps a share of them in proportion to its held-out blocks (at least one each), so
    the held-out loss weighs the sources as the held-out data does, whatever their order."""
    manifest = load_manifest(corpus_dir)
    per_source = {source: pack_texts(list(read_texts(Path(corpus_dir) / stats["heldout"])), tokenizer, block_size)
                  for source, stats in manifest["sources"].items() if stats.get("heldout")}
    if not per_source:
        raise UserError(f"{corpus_dir} has no held-out shard; compress it with --heldout_lines N, "
                        "or train without evaluation (--eval_strategy no)")
    per_source = {source: blocks for source, blocks in per_source.items() if blocks}
    if not per_source:
        raise UserError(f"the held-out shards of {corpus_dir} hold less than one block of {block_size} tokens; "
                        "raise --heldout_lines or lower --block_size")
    quotas = proportional_quotas({s: len(b) for s, b in per_source.items()}, max_blocks)
    sources = list(per_source)
    return HeldoutSet([{"input_ids": ids, SOURCE_KEY: index} for index, source in enumerate(sources)
                       for ids in per_source[source][:quotas[source]]], sources)


def proportional_quotas(sizes: dict[str, int], total: int | None) -> dict[str, int]:
    """Split `total` items among sources in proportion to their sizes (largest remainders), each
    source at least one and at most its size; everything when `total` is None or covers it."""
    if total is None or total >= sum(sizes.values()):
        return dict(sizes)
    total = max(total, len(sizes))
    exact = {s: total * n / sum(sizes.values()) for s, n in sizes.items()}
    quotas = {s: min(n, max(1, int(exact[s]))) for s, n in sizes.items()}
    by_remainder = sorted(sizes, key=lambda s: exact[s] - int(exact[s]), reverse=True)
    while sum(quotas.values()) < total:
        for source in by_remainder:
            if sum(quotas.values()) < total and quotas[source] < sizes[source]:
                quotas[source] += 1
    return quotas


class ResumableStream(torch.utils.data.IterableDataset):
    """A `datasets.IterableDataset` of blocks for `Trainer`, remembering its state after each block.

    `blocks_seen` counts blocks since the very first run; `state_after(n)` is the stream state
    right after block n, with the tokens read from each source until then (kept for the last
    `window` blocks: the DataLoader reads a little ahead of what the optimizer has consumed).
    It must be iterated in the main process (no DataLoader workers): that is where it records."""

    def __init__(self, dataset, window: int = 4096):
        self.dataset = dataset
        self.window = window
        self.blocks_seen = 0
        self.source_tokens: list[int] | None = None  # totals since the very first run
        self._states: OrderedDict[int, tuple[dict, list[int] | None]] = OrderedDict()

    def resume(self, saved: dict) -> None:
        self.dataset.load_state_dict(saved["state"])
        self.blocks_seen = saved["blocks"]
        self.source_tokens = saved.get(SOURCE_TOKENS_KEY)

    def __iter__(self):
        count, totals = self.blocks_seen, self.source_tokens
        self._states.clear()
        self._states[count] = (self.dataset.state_dict(), totals)
        for example in self.dataset:
            count += 1
            if SOURCE_TOKENS_KEY in example:
                counts = example[SOURCE_TOKENS_KEY]
                totals = [a + b for a, b in zip(totals or [0] * len(counts), counts)]
            self._states[count] = (self.dataset.state_dict(), totals)
            if len(self._states) > self.window:
                self._states.popitem(last=False)
            yield {"input_ids": torch.tensor(example["input_ids"], dtype=torch.long)}

    def state_after(self, blocks: int) -> dict:
        if blocks not in self._states:
            raise RuntimeError(f"no stream state for block {blocks} (kept: {min(self._states)}..{max(self._states)})")
        state, totals = self._states[blocks]
        return {"blocks": blocks, "state": state, SOURCE_TOKENS_KEY: totals}


def collate_blocks(features: list[dict]) -> dict[str, torch.Tensor]:
    """Blocks are full, so no padding: labels are the ids themselves (the model shifts them).
    Unlike DataCollatorForLanguageModeling, EOS is never masked when it doubles as the pad token."""
    input_ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])
    batch = {"input_ids": input_ids, "labels": input_ids.clone()}
    if SOURCE_KEY in features[0]:  # held-out blocks: kept for the per-source perplexity
        batch[SOURCE_KEY] = torch.tensor([f[SOURCE_KEY] for f in features])
    return batch


class StreamStateCallback(TrainerCallback):
    """Write `stream_state.json` (blocks consumed, stream state) into every checkpoint."""

    def __init__(self, stream: ResumableStream, blocks_per_step: int):
        self.stream = stream
        self.blocks_per_step = blocks_per_step

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            saved = self.stream.state_after(state.global_step * self.blocks_per_step)
            (checkpoint / STREAM_STATE_FILE).write_text(json.dumps(saved) + "\n", encoding="utf-8")


def read_stream_state(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / STREAM_STATE_FILE
    if not path.is_file():
        raise UserError(f"{checkpoint} has no {STREAM_STATE_FILE}: it was not written by continue_pretraining.py, "
                        "so the data stream cannot continue from it")
    return json.loads(path.read_text(encoding="utf-8"))


def realised_token_shares(sources: list[str], tokens: list[int]) -> dict[str, float]:
    """Each source's share of the tokens a run trained on (`source_tokens` of a stream state)."""
    total = sum(tokens) or 1
    return {source: count / total for source, count in zip(sources, tokens)}


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # capped: exp overflows


class PretrainTrainer(Trainer):
    """Trainer that also logs eval perplexity, exp(eval_loss), wherever eval loss is logged, and
    the perplexity of each source of the held-out set (`eval_perplexity_<source>`)."""

    def __init__(self, *args, heldout_sources: list[str] | None = None, **kwargs):
        if heldout_sources:
            kwargs["compute_metrics"] = self._per_source_perplexity
        super().__init__(*args, **kwargs)
        self.heldout_sources = heldout_sources or []

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns.append(SOURCE_KEY)  # or --remove_unused_columns drops it before the collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Held-out batches: each block's mean token loss as the "prediction", its source as the label."""
        if SOURCE_KEY not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        sources = inputs.pop(SOURCE_KEY)
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"]).logits[:, :-1].float()
            token_losses = F.cross_entropy(logits.flatten(0, 1), inputs["labels"][:, 1:].flatten(), reduction="none")
        block_losses = token_losses.view(len(sources), -1).mean(-1)
        return block_losses.mean(), block_losses, sources

    def _per_source_perplexity(self, prediction) -> dict[str, float]:
        losses, sources = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        return {f"perplexity_{name}": perplexity(float(losses[sources == index].mean()))
                for index, name in enumerate(self.heldout_sources) if (sources == index).any()}

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = perplexity(logs["eval_loss"])
        super().log(logs, *args, **kwargs)


@dataclass
class PretrainArguments:
    corpus_dir: str = field(metadata={"help": "Sharded corpus written by pretrain/compress_data.py."})
    mixture_weights: str | None = field(
        default=None, metadata={"help": "source=weight,… multiplying each source's share (see data_mixture.py)."}
    )
    alpha: float = field(default=1.0, metadata={"help": "Size exponent of the mixture: 1 proportional, 0 uniform."})
    mixture_by: str = field(
        default="texts", metadata={"help": "texts: the mixture shares are shares of the texts drawn (sizes in lines); "
                                           "tokens: shares of the training tokens (sizes in tokens), the usual "
                                           "convention for pretraining mixtures."})
    block_size: int = field(default=512, metadata={"help": "Tokens per packed training block."})
    texts_per_batch: int = field(default=1000, metadata={"help": "Texts tokenized and packed together."})
    max_eval_blocks: int = field(default=200, metadata={"help": "Held-out blocks per evaluation."})
    modules_to_save: str | None = field(
        default=None,
        metadata={"help": "LoRA: also train and save these whole modules, e.g. embed_tokens,lm_head. "
                          "Default: the embeddings when the model's vocabulary was extended, else none."},
    )
