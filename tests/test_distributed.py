"""Data-parallel training on CPU: torchrun DDP (gloo), DeepSpeed ZeRO-2 and ZeRO-3 (CPU offload), with 2 processes.

Each test launches this same file under `torchrun --nproc_per_node 2` as a worker that runs the
real Qwen recipe (`finetune` with the recipe's command-line arguments) and records, per rank,
the rows it trained on and the adapter weights it holds at the end. The test then checks that
the ranks split the data, ended with identical weights (gradients were synchronised) and that
the saved adapter is exactly those weights (gathered from their shards under ZeRO-3).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import load_file

import prefork

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"


def worker(record_dir: Path, recipe_args: list[str], shm_comm: bool) -> None:
    """Run the Qwen recipe on this rank, recording what it saw and what it ends with."""
    sys.path.insert(0, str(REPO_ROOT))
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import TrainingArguments
    from transformers.integrations import is_deepspeed_zero3_enabled

    import llm_tuning.finetune as finetune_module
    from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args
    from qwen_lora_tuning import QWEN

    if not shm_comm:
        # DeepSpeed on a CPU builds a shared-memory allreduce op first (~70-110 s of C++ compile).
        # Marked incompatible, DeepSpeed falls back to torch.distributed (gloo): same ZeRO code path.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    rank = int(os.environ["RANK"])
    original_prepare = finetune_module.prepare_batching
    original_save = finetune_module.save

    def recording_prepare(*args, **kwargs):
        batching = original_prepare(*args, **kwargs)
        collator = batching.collator

        def collate(rows):
            with open(record_dir / f"rows-{rank}.jsonl", "a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(list(row["input_ids"])) + "\n")
            return collator(rows)

        batching.collator = collate
        return batching

    def recording_save(run, *args, **kwargs):
        model, engine = run.trainer.model, run.trainer.model_wrapped
        whole = contextlib.nullcontext()
        if is_deepspeed_zero3_enabled():  # each rank holds a shard of every weight: gather them whole
            import deepspeed

            whole = deepspeed.zero.GatheredParameters([p for p in model.parameters() if p.requires_grad])
        with whole:  # the adapter's weights (LoRA), or every trained one (full fine-tuning)
            weights = (get_peft_model_state_dict(model) if hasattr(model, "peft_config")
                       else {name: p for name, p in model.named_parameters() if p.requires_grad})
            save_file({k: v.detach().float().contiguous() for k, v in weights.items()},
                      record_dir / f"held-{rank}.safetensors")
        (record_dir / f"engine-{rank}.txt").write_text(describe(engine))
        return original_save(run, *args, **kwargs)

    finetune_module.prepare_batching = recording_prepare
    finetune_module.save = recording_save
    torch.manual_seed(0)
    finetune_module.finetune(QWEN, *parse_args(ModelArguments, DataArguments, FinetuneArguments,
                                               TrainingArguments, argv=recipe_args))


def describe(engine) -> str:
    """What trained the model, e.g. DistributedDataParallel or DeepSpeedEngine ZeRO-3 offload:optimizer,params."""
    name = type(engine).__name__
    if not hasattr(engine, "zero_optimization_stage"):
        return name
    offloads = {"optimizer": engine.zero_offload_optimizer(), "params": engine.zero_offload_param()}
    offloaded = ",".join(what for what, offload in offloads.items() if offload is not None and offload.device == "cpu")
    return f"{name} ZeRO-{engine.zero_optimization_stage()}" + (f" offload:{offloaded}" if offloaded else "")


# --- the tests ------------------------------------------------------------------------------------

ROWS = 16


@pytest.fixture(scope="module")
def tokenized_dir(tiny_qwen2, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from llm_tuning.data import TokenizeConfig, save_tokenized, tokenize_file

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    config = TokenizeConfig(str(tiny_qwen2), "qwen", 64, skip_overlength=False, last_turn_only=False, max_samples=ROWS)
    dataset, metadata = tokenize_file(REPO_ROOT / "data" / "simple_math_4op.jsonl", tokenizer, config)
    return save_tokenized(dataset, metadata, tmp_path_factory.mktemp("data") / "math")


class Launched(NamedTuple):
    rows: dict[int, list[tuple]]             # per rank, the rows it trained on
    held: dict[int, dict[str, torch.Tensor]]  # per rank, the trained weights it ended with
    saved: dict[str, torch.Tensor]           # what the run saved
    engines: set[str]                        # what wrapped the model for training, e.g. DeepSpeedEngine ZeRO-3
    stdout: str


def launch(tmp_path: Path, tokenized_dir: Path, model: Path, *extra: str, shm_comm: bool = False,
           saved_file: str = "adapter_model.safetensors") -> Launched:
    """torchrun 2 CPU processes of the worker, and what they recorded."""
    record_dir, out, extensions = tmp_path / "record", tmp_path / "out", tmp_path / "torch_extensions"
    record_dir.mkdir()
    command = [*prefork.torchrun(), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
               __file__, str(record_dir), "shm" if shm_comm else "gloo",
               "--tokenized_dataset", str(tokenized_dir), "--model_name_or_path", str(model),
               "--output_dir", str(out), "--use_cpu", "true", "--ddp_backend", "gloo", "--report_to", "none",
               "--per_device_train_batch_size", "2", "--max_steps", "4", "--learning_rate", "1e-2",
               "--lora_dropout", "0", "--save_strategy", "no", "--logging_steps", "1",
               "--batching", "random", *extra]  # fixed 2-row batches; token budgets: the last test
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TORCH_EXTENSIONS_DIR": str(extensions)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # DeepSpeed compiled no C++ op (a minute or more each on 2 cores)
    assert shm_comm or not extensions.exists(), sorted(p.name for p in extensions.iterdir())
    rows = {rank: [tuple(json.loads(line)) for line in (record_dir / f"rows-{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}
    held = {rank: load_file(record_dir / f"held-{rank}.safetensors") for rank in (0, 1)}
    saved = load_file(out / saved_file)
    engines = {(record_dir / f"engine-{rank}.txt").read_text() for rank in (0, 1)}
    return Launched(rows, held, saved, engines, result.stdout)


def check_data_parallel(launched: Launched, engine: str) -> None:
    rows, held, saved, engines, _ = launched
    assert engines == {engine}
    # whole LoRA matrices (r = 8), never the empty shards ZeRO-3 leaves on each rank
    assert all(w.shape[0 if "lora_A" in name else 1] == 8 and w.numel() > 8 for name, w in saved.items())
    assert held[0].keys() == saved.keys()
    check_ranks_in_step(held, saved)
    lora_b = [w for name, w in saved.items() if "lora_B" in name]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)  # LoRA B starts at 0: it trained
    # 4 steps x 2 rows on each of 2 ranks = the 16 rows once, split between the ranks
    assert len(rows[0]) == len(rows[1]) == ROWS // 2
    assert not set(rows[0]) & set(rows[1])


def check_ranks_in_step(held, saved) -> None:
    # different data, yet the same weights on both ranks: the gradients were averaged
    assert held[0].keys() == held[1].keys() <= saved.keys()
    for name, weight in held[0].items():
        assert torch.equal(weight, held[1][name]), name
        assert torch.equal(weight, saved[name].float()), name


def test_torchrun_ddp_on_cpu_splits_data_and_saves_what_rank_0_holds(tiny_qwen2, tokenized_dir, tmp_path):
    check_data_parallel(launch(tmp_path, tokenized_dir, tiny_qwen2), engine="DistributedDataParallel")


def test_deepspeed_zero2_on_cpu_splits_data_and_saves_what_rank_0_holds(tiny_qwen2, tokenized_dir, tmp_path):
    pytest.importorskip("deepspeed")
    result = launch(tmp_path, tokenized_dir, tiny_qwen2, "--deepspeed", str(CONFIGS / "ds_zero2.json"))
    check_data_parallel(result, engine="DeepSpeedEngine ZeRO-2")


def zero3_offload_config(tmp_path: Path) -> str:
    """The shipped config, but with the Trainer's torch AdamW stepping the CPU-offloaded optimizer states
    instead of DeepSpeed's CPU Adam, whose C++ op is compiled first (~60 s here; it trains too)."""
    config = json.loads((CONFIGS / "ds_zero3_offload.json").read_text())
    del config["optimizer"]
    config["zero_force_ds_cpu_optimizer"] = False
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    return str(tmp_path / "zero3.json")


def parameter_count_line(stdout: str) -> tuple[int, int, str]:
    """(trainable, total, percent) from the recipe's `<method>: training T of N parameters (P%)` line."""
    found = re.search(r"training ([\d,]+) of ([\d,]+) parameters \(([\d.]+)%\)", stdout)
    assert found, stdout[-2000:]
    return int(found[1].replace(",", "")), int(found[2].replace(",", "")), found[3]


def base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(model_dir).state_dict())


def test_deepspeed_zero3_offload_on_cpu_splits_data_and_saves_the_gathered_weights(tiny_qwen2, tokenized_dir, tmp_path):
    pytest.importorskip("deepspeed")
    result = launch(tmp_path, tokenized_dir, tiny_qwen2, "--deepspeed", zero3_offload_config(tmp_path))
    check_data_parallel(result, engine="DeepSpeedEngine ZeRO-3 offload:optimizer,params")
    # partitioned weights counted by their full size, not the empty shard each rank holds
    trainable, total, _ = parameter_count_line(result.stdout)
    assert trainable == sum(w.numel() for w in result.saved.values())
    assert total == trainable + sum(w.numel() for w in base_weights(tiny_qwen2).values())


def test_deepspeed_zero3_offload_on_cpu_fine_tunes_every_parameter(tiny_qwen2, tokenized_dir, tmp_path):
    pytest.importorskip("deepspeed")
    result = launch(tmp_path, tokenized_dir, tiny_qwen2, "--deepspeed", zero3_offload_config(tmp_path),
                    "--finetuning_type", "full", saved_file="model.safetensors")
    assert result.engines == {"DeepSpeedEngine ZeRO-3 offload:optimizer,params"}
    base = base_weights(tiny_qwen2)
    assert parameter_count_line(result.stdout) == (sum(w.numel() for w in base.values()),) * 2 + ("100.0000",)
    check_ranks_in_step(result.held, result.saved)
    # the whole model was saved, gathered from the shards, and every weight moved
    assert result.saved.keys() == base.keys()
    assert all(result.saved[name].shape == w.shape and not torch.equal(result.saved[name].float(), w)
               for name, w in base.items())


def test_torchrun_ddp_gives_each_rank_its_share_of_the_token_budget_batches(tiny_qwen2, tokenized_dir, tmp_path):
    from llm_tuning.batching import LengthSortedBatchSampler, row_lengths
    from llm_tuning.data import load_tokenized

    dataset, _ = load_tokenized(tokenized_dir)
    every_row = {tuple(ids) for ids in dataset["input_ids"]}
    budget = 3 * max(row_lengths(dataset))
    batches = len(LengthSortedBatchSampler(row_lengths(dataset), max_tokens=budget))
    rows, held, saved, engines, _ = launch(tmp_path, tokenized_dir, tiny_qwen2, "--batching", "sorted",
                                           "--max_tokens_per_batch", str(budget), "--max_steps", "-1",
                                           "--num_train_epochs", "1")
    assert engines == {"DistributedDataParallel"}
    # One epoch: every row trained once, each batch on one rank; with an odd number of batches
    # accelerate hands the short rank the first batch again (even_batches).
    assert set(rows[0]) | set(rows[1]) == every_row
    repeated = set(rows[0]) & set(rows[1])
    assert not repeated or batches % 2 == 1
    assert len(rows[0]) + len(rows[1]) == len(every_row) + len(repeated)
    for name, weight in held[0].items():  # the ranks stayed in step
        assert torch.equal(weight, held[1][name]), name


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[3:], shm_comm=sys.argv[2] == "shm")
    sys.exit(0)
