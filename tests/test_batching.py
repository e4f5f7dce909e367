"""Batching through the Trainer: packing trains exactly like padding, grouping cuts padding, flags clash clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from llm_tuning.batching import LENGTH_COLUMN, prepare_batching, row_lengths
from llm_tuning.cli import UserError
from llm_tuning.data import TokenizeConfig, save_tokenized, tokenize_file
from llm_tuning.training import DataArguments

REPO_ROOT = Path(__file__).resolve().parent.parent
LONG_TAIL = REPO_ROOT / "bench" / "data" / "long_tail.jsonl"


def tokenize_long_tail(model_path: Path, rows: int, max_seq_length: int):
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = TokenizeConfig(str(model_path), "qwen", max_seq_length, skip_overlength=False,
                            last_turn_only=False, max_samples=rows)
    dataset, metadata = tokenize_file(LONG_TAIL, tokenizer, config)
    return tokenizer, dataset, metadata


def trainer_for(model, tokenizer, dataset, out: Path, data_args: DataArguments, **training) -> Trainer:
    args = TrainingArguments(output_dir=str(out), report_to="none", use_cpu=True, save_strategy="no",
                             logging_steps=1, seed=0, **training)
    dataset, collator = prepare_batching(dataset, tokenizer, data_args, args, max_seq_length=128)
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer)


def lora(model_path: Path):
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(model, config)


def test_packed_training_follows_the_padded_loss_curve(tiny_qwen2, tmp_path):
    # Full-batch steps see the same 8 samples either way, so the mean loss over supervised tokens
    # and its gradients are the same sums in another layout: the curves must coincide.
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=8, max_seq_length=128)
    curves, adapters = {}, {}
    for packing in (False, True):
        torch.manual_seed(0)
        trainer = trainer_for(lora(tiny_qwen2), tokenizer, dataset, tmp_path / str(packing),
                              DataArguments("unused", packing=packing, packing_max_length=512),
                              per_device_train_batch_size=8, max_steps=12, learning_rate=5e-3)
        assert len(trainer.train_dataset) == 8 or packing and len(trainer.train_dataset) <= 3  # <= 8 x 128 tokens
        trainer.train()
        curves[packing] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        adapters[packing] = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}

    assert len(curves[True]) == 12
    assert curves[True][-1] < curves[True][0] - 0.1  # it learned (frozen norms keep LoRA losses high)
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)  # stated tolerance: 1e-4 relative
    for name, weight in adapters[False].items():
        assert torch.allclose(adapters[True][name], weight, atol=1e-5), name


def padding_fraction(trainer: Trainer) -> float:
    real = padded = 0
    for batch in trainer.get_train_dataloader():
        padded += batch["input_ids"].numel()
        real += int((batch["labels"] != -100).sum()) if "attention_mask" not in batch else int(batch["attention_mask"].sum())
    return 1 - real / padded


def test_grouping_by_length_cuts_the_padding_of_a_long_tailed_set(tiny_qwen2, tmp_path):
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=400, max_seq_length=1024)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    fractions = {}
    for name, data_args in {"dynamic": DataArguments("unused"),
                            "grouped": DataArguments("unused", group_by_length=True)}.items():
        trainer = trainer_for(model, tokenizer, dataset, tmp_path, data_args, per_device_train_batch_size=8)
        fractions[name] = padding_fraction(trainer)
    assert trainer.args.train_sampling_strategy == "group_by_length"
    assert trainer.train_dataset[LENGTH_COLUMN] == row_lengths(dataset)
    # Measured (bench/train_throughput.py, same rows): 58.9% of a random batch is padding, 13.3% grouped.
    assert fractions["dynamic"] > 0.4
    assert fractions["grouped"] < fractions["dynamic"] / 3


def test_packing_and_grouping_together_is_a_user_error(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(UserError, match="--packing and --group_by_length exclude each other"):
        prepare_batching(None, None, DataArguments("x", packing=True, group_by_length=True), args, 128)


@pytest.fixture(scope="module")
def tokenized_dir(tiny_qwen2, tmp_path_factory) -> Path:
    _, dataset, metadata = tokenize_long_tail(tiny_qwen2, rows=32, max_seq_length=128)
    return save_tokenized(dataset, metadata, tmp_path_factory.mktemp("data") / "long_tail")


def test_the_recipe_trains_packed_with_checkpointing_from_the_command_line(run, tiny_qwen2, tokenized_dir, tmp_path):
    result = run("qwen_lora_tuning.py", "--tokenized_dataset", tokenized_dir, "--model_name_or_path", tiny_qwen2,
                 "--output_dir", tmp_path / "out", "--packing", "true", "--packing_max_length", "512",
                 "--per_device_train_batch_size", "2", "--max_steps", "2", "--report_to", "none",
                 "--use_cpu", "true", "--logging_steps", "1",
                 # memory savers pass straight through to the Trainer
                 "--gradient_checkpointing", "true", "--optim", "adafactor")
    assert result.returncode == 0, result.stderr[-2000:]
    packed_rows = int(re.search(r"packing: 32 samples into (\d+) rows of at most 512 tokens", result.stdout)[1])
    assert packed_rows <= 32 * 128 // 512 + 1
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    saved_args = torch.load(tmp_path / "out" / "training_args.bin", weights_only=False)
    assert saved_args.gradient_checkpointing and saved_args.optim == "adafactor"


def test_the_recipe_refuses_packing_with_grouping_in_one_sentence(run, tiny_qwen2, tokenized_dir, tmp_path):
    result = run("qwen_lora_tuning.py", "--tokenized_dataset", tokenized_dir, "--model_name_or_path", tiny_qwen2,
                 "--output_dir", tmp_path / "out", "--packing", "true", "--group_by_length", "true",
                 "--report_to", "none", "--use_cpu", "true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --packing and --group_by_length exclude")
    assert "Traceback" not in result.stderr
