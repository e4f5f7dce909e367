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
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .cli import UserError
from .shards import TEXT_KEY, heldout_paths, load_manifest, read_texts, shard_paths

STREAM_STATE_FILE = "stream_state.json"


def pack_texts(texts: list[str], tokenizer, block_size: int) -> list[list[int]]:
    """Tokenize, append EOS to every text, concatenate and cut into full blocks (the tail that does
    not fill a block is dropped)."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token to join texts with; set tokenizer.eos_token")
    ids: list[int] = []
    for text_ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += text_ids + [tokenizer.eos_token_id]
    return [ids[start:start + block_size] for start in range(0, len(ids) - block_size + 1, block_size)]


def source_streams(corpus_dir: str | Path, sources: list[str]):
    """One endless `datasets` stream of `{"text"}` per source, cycling over its shards in order."""
    from datasets import load_dataset

    manifest = load_manifest(corpus_dir)
    unknown = [s for s in sources if s not in manifest["sources"]]
    if unknown:
        raise UserError(f"{corpus_dir} has no source {', '.join(unknown)}; it has: {', '.join(manifest['sources'])}")
    return [
        load_dataset("json", data_files=shard_paths(corpus_dir, manifest, source), split="train",
                     streaming=True).select_columns([TEXT_KEY]).repeat(None)
        for source in sources
    ]


def mixed_text_stream(corpus_dir: str | Path, probabilities: dict[str, float], seed: int):
    """Texts drawn source by source with the given probabilities, deterministic for a seed."""
    from datasets import interleave_datasets

    sources = [name for name, p in probabilities.items() if p > 0]
    streams = source_streams(corpus_dir, sources)
    if len(streams) == 1:
        return streams[0]
    return interleave_datasets(streams, probabilities=[probabilities[s] for s in sources], seed=seed,
                               stopping_strategy="first_exhausted")  # never: every stream repeats


def block_stream(corpus_dir: str | Path, probabilities: dict[str, float], tokenizer, block_size: int,
                 seed: int, texts_per_batch: int = 1000):
    """The endless training stream of `{"input_ids": [block_size ids]}` blocks."""
    def pack(batch):
        return {"input_ids": pack_texts(batch[TEXT_KEY], tokenizer, block_size)}

    return mixed_text_stream(corpus_dir, probabilities, seed).map(
        pack, batched=True, batch_size=texts_per_batch, remove_columns=[TEXT_KEY])


def heldout_blocks(corpus_dir: str | Path, tokenizer, block_size: int, max_blocks: int | None = None):
    """A `datasets.Dataset` of packed blocks from every source's held-out shard (for eval loss)."""
    from datasets import Dataset

    files = heldout_paths(corpus_dir, load_manifest(corpus_dir))
    if not files:
        raise UserError(f"{corpus_dir} has no held-out shard; compress it with --heldout_lines N, "
                        "or train without evaluation (--eval_strategy no)")
    blocks = []
    for path in files:
        blocks += pack_texts(list(read_texts(path)), tokenizer, block_size)
    if not blocks:
        raise UserError(f"the held-out shards of {corpus_dir} hold less than one block of {block_size} tokens; "
                        "raise --heldout_lines or lower --block_size")
    return Dataset.from_dict({"input_ids": blocks[:max_blocks]})


class ResumableStream(torch.utils.data.IterableDataset):
    """A `datasets.IterableDataset` of blocks for `Trainer`, remembering its state after each block.

    `blocks_seen` counts blocks since the very first run; `state_after(n)` is the stream state
    right after block n (kept for the last `window` blocks: the DataLoader reads a little ahead of
    what the optimizer has consumed)."""

    def __init__(self, dataset, window: int = 4096):
        self.dataset = dataset
        self.window = window
        self.blocks_seen = 0
        self._states: OrderedDict[int, dict] = OrderedDict()

    def resume(self, saved: dict) -> None:
        self.dataset.load_state_dict(saved["state"])
        self.blocks_seen = saved["blocks"]

    def __iter__(self):
        count = self.blocks_seen
        self._states.clear()
        self._states[count] = self.dataset.state_dict()
        for example in self.dataset:
            count += 1
            self._states[count] = self.dataset.state_dict()
            if len(self._states) > self.window:
                self._states.popitem(last=False)
            yield {"input_ids": torch.tensor(example["input_ids"], dtype=torch.long)}

    def state_after(self, blocks: int) -> dict:
        if blocks not in self._states:
            raise RuntimeError(f"no stream state for block {blocks} (kept: {min(self._states)}..{max(self._states)})")
        return {"blocks": blocks, "state": self._states[blocks]}


def collate_blocks(features: list[dict]) -> dict[str, torch.Tensor]:
    """Blocks are full, so no padding: labels are the ids themselves (the model shifts them).
    Unlike DataCollatorForLanguageModeling, EOS is never masked when it doubles as the pad token."""
    input_ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])
    return {"input_ids": input_ids, "labels": input_ids.clone()}


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


class PretrainTrainer(Trainer):
    """Trainer that also logs eval perplexity, exp(eval_loss), wherever eval loss is logged."""

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))  # capped: exp overflows
        super().log(logs, *args, **kwargs)


@dataclass
class PretrainArguments:
    corpus_dir: str = field(metadata={"help": "Sharded corpus written by pretrain/compress_data.py."})
    mixture_weights: str | None = field(
        default=None, metadata={"help": "source=weight,… multiplying each source's share (see data_mixture.py)."}
    )
    alpha: float = field(default=1.0, metadata={"help": "Size exponent of the mixture: 1 proportional, 0 uniform."})
    block_size: int = field(default=512, metadata={"help": "Tokens per packed training block."})
    texts_per_batch: int = field(default=1000, metadata={"help": "Texts tokenized and packed together."})
    max_eval_blocks: int = field(default=200, metadata={"help": "Held-out blocks per evaluation."})
    modules_to_save: str | None = field(
        default=None,
        metadata={"help": "LoRA: also train and save these whole modules, e.g. embed_tokens,lm_head. "
                          "Default: the embeddings when the model's vocabulary was extended, else none."},
    )
