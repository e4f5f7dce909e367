"""Batching through the Trainer: every mode computes the same loss, sorted and token-budget batches cut the
padding and resume exactly, flags clash clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from llm_tuning.batching import LENGTH_COLUMN, LengthSortedBatchSampler, PaddingCollator, prepare_batching, row_lengths
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
    training = {"save_strategy": "no", **training}
    args = TrainingArguments(output_dir=str(out), report_to="none", use_cpu=True, logging_steps=1, seed=0, **training)
    batching = prepare_batching(dataset, tokenizer, data_args, args, max_seq_length=128)
    return batching.trainer(model=model, args=args, processing_class=tokenizer)


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
                              DataArguments("unused", batching="packing" if packing else "random",
                                            packing_max_length=512),
                              per_device_train_batch_size=8, max_steps=12, learning_rate=5e-3)
        assert len(trainer.train_dataset) == 8 or packing and len(trainer.train_dataset) <= 3  # <= 8 x 128 tokens
        trainer.train()
        curves[packing] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        adapters[packing] = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}

    assert len(curves[True]) == 12
    assert curves[True][-1] < curves[True][0] - 0.1  # it learned (frozen norms keep LoRA losses high)
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)  # stated tolerance: 1e-4 relative
    for name, weight in adapters[False].items():
        # 12 Adam steps amplify float differences of summation order (measured: at most 1.14e-5)
        assert torch.allclose(adapters[True][name], weight, atol=3e-5), name


def padding_fraction(trainer: Trainer, real_tokens: int) -> float:
    positions = sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())
    return 1 - real_tokens / positions


def test_sorted_and_token_budget_batches_cut_the_padding_of_a_long_tailed_set(tiny_qwen2, tmp_path):
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=400, max_seq_length=1024)
    real_tokens = sum(row_lengths(dataset))
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    fractions = {}
    for name, data_args in {"random": DataArguments("unused", batching="random"),
                            "grouped": DataArguments("unused", group_by_length=True),
                            "sorted": DataArguments("unused", batching="sorted"),
                            "default": DataArguments("unused"),
                            "tokens": DataArguments("unused", max_tokens_per_batch=4096)}.items():
        trainer = trainer_for(model, tokenizer, dataset, tmp_path, data_args, per_device_train_batch_size=8)
        fractions[name] = padding_fraction(trainer, real_tokens)
        if name == "grouped":
            assert trainer.args.train_sampling_strategy == "group_by_length"
            assert trainer.train_dataset[LENGTH_COLUMN] == row_lengths(dataset)
    # Measured (bench/train_throughput.py, same rows): 58.9% of a random batch is padding, 13.3% grouped.
    assert fractions["random"] > 0.4
    assert fractions["grouped"] < fractions["random"] / 3
    assert fractions["sorted"] < fractions["grouped"] / 2  # measured: 3.9%
    assert fractions["default"] < 0.03 and fractions["tokens"] < 0.03  # padding efficiency >= 0.97


def test_token_budget_batches_hold_every_row_once_within_the_budget():
    lengths = [(i * 37) % 300 + 1 for i in range(500)]
    sampler = LengthSortedBatchSampler(lengths, max_tokens=1200, seed=5)
    batches = sampler.batches()
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    padded = [len(batch) * max(lengths[i] for i in batch) for batch in batches]
    assert all(n <= 1200 for n in padded)
    assert all(sum(lengths[i] for i in batch) >= 0.97 * n for batch, n in zip(batches, padded))
    # Seeded: the same epoch gives the same batches; the next epoch the same count in another order.
    assert LengthSortedBatchSampler(lengths, max_tokens=1200, seed=5).batches() == batches
    sampler.set_epoch(1)
    assert len(sampler.batches()) == len(batches) and sampler.batches() != batches
    with pytest.raises(UserError, match="a row has 300 tokens, more than --max_tokens_per_batch 200; raise"):
        LengthSortedBatchSampler(lengths, max_tokens=200)


def test_the_automatic_budget_takes_about_as_many_steps_as_row_batches(tiny_qwen2, tmp_path):
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=400, max_seq_length=1024)
    lengths = row_lengths(dataset)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=8)
    automatic = prepare_batching(dataset, tokenizer, DataArguments("unused"), args, 1024).batch_sampler
    rows = prepare_batching(dataset, tokenizer, DataArguments("unused", batching="sorted"), args, 1024).batch_sampler
    assert len(automatic) == len(rows) == 50  # the same optimizer steps per epoch
    smaller = LengthSortedBatchSampler(lengths, max_tokens=automatic.max_tokens - 1, max_padding=None)
    assert len(smaller) > len(rows)  # and it is the smallest budget that gives them
    # The largest batch of 8 rows is 8 long rows; no budget batch is half of it (memory follows).
    assert automatic.max_tokens < max(len(b) * max(lengths[i] for i in b) for b in rows.batches()) / 2
    # A few rows of unlike lengths: one batch, as with rows (a padding cap would cut 8 rows into 7).
    few = dataset.select(range(8))
    assert len(prepare_batching(few, tokenizer, DataArguments("unused"), args, 1024).batch_sampler) == 1
    # One row per batch: every row its own batch, and the longest row sets the budget.
    args.per_device_train_batch_size = 1
    one_row = prepare_batching(dataset, tokenizer, DataArguments("unused"), args, 1024).batch_sampler
    assert one_row.max_tokens == max(lengths)


def test_each_process_gets_its_own_share_of_the_batches():
    from accelerate.data_loader import BatchSamplerShard

    lengths = [(i * 13) % 90 + 1 for i in range(101)]
    sampler = LengthSortedBatchSampler(lengths, max_tokens=400, seed=1)
    shares = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in (0, 1)]
    every = sampler.batches()
    assert len(shares[0]) == len(shares[1]) == -(-len(every) // 2)  # even: the short rank repeats a batch
    assert shares[0] + shares[1] == every[0::2] + every[1::2] + every[: len(shares[0]) * 2 - len(every)]


MODES = {"random": DataArguments("unused", batching="random"),
         "group_by_length": DataArguments("unused", batching="group_by_length"),
         "sorted": DataArguments("unused", batching="sorted"),
         "tokens": DataArguments("unused", max_tokens_per_batch=8 * 128),
         "packing": DataArguments("unused", batching="packing", packing_max_length=1024)}


def test_every_mode_gives_the_same_first_step_loss(tiny_qwen2, tmp_path):
    # One step over all 8 rows: the mean loss over supervised tokens cannot depend on the batching.
    # Token-budget batches split rows of unlike lengths: the first optimizer step accumulates
    # every batch, and num_items_in_batch must weigh each supervised token alike.
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=8, max_seq_length=128)
    losses = {}
    for name, data_args in MODES.items():
        torch.manual_seed(0)
        trainer = trainer_for(lora(tiny_qwen2), tokenizer, dataset, tmp_path / name, data_args,
                              per_device_train_batch_size=8, max_steps=1)
        trainer.args.gradient_accumulation_steps = len(trainer.get_train_dataloader())
        assert name != "tokens" or trainer.args.gradient_accumulation_steps > 1
        trainer.train()
        losses[name] = trainer.state.log_history[0]["loss"]
    assert max(losses.values()) - min(losses.values()) < 1e-5, losses


def test_right_padding_needs_no_attention_mask(tiny_qwen2):
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=6, max_seq_length=256)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32)
    rows = list(dataset)
    assert len({len(row["input_ids"]) for row in rows}) > 1  # there is padding to hide
    unmasked = PaddingCollator(tokenizer.pad_token_id)(rows)
    masked = PaddingCollator(tokenizer.pad_token_id, attention_mask=True)(rows)
    assert "attention_mask" not in unmasked and "attention_mask" in masked
    with torch.no_grad():
        assert model(**unmasked).loss.item() == pytest.approx(model(**masked).loss.item(), abs=1e-5)


def test_gradient_accumulation_weighs_every_supervised_token_alike(tiny_qwen2, tmp_path):
    # Token-budget micro-batches hold different numbers of supervised tokens. Accumulated over
    # one optimizer step, they must give the update of one batch of all the rows (SGD: the
    # update is the gradient itself), as transformers' num_items_in_batch promises.
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=8, max_seq_length=128)
    sampler = LengthSortedBatchSampler(row_lengths(dataset), max_tokens=256)
    assert len(sampler) >= 3
    adapters = {}
    for name, data_args, accumulate in [("whole", MODES["random"], 1),
                                        ("budget", DataArguments("unused", max_tokens_per_batch=256), len(sampler))]:
        torch.manual_seed(0)
        trainer = trainer_for(lora(tiny_qwen2), tokenizer, dataset, tmp_path / name, data_args,
                              per_device_train_batch_size=8, gradient_accumulation_steps=accumulate,
                              max_steps=1, optim="sgd", learning_rate=1.0)
        trainer.train()
        adapters[name] = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    for name, weight in adapters["whole"].items():
        assert torch.allclose(adapters["budget"][name], weight, atol=1e-5), name
    assert any(w.abs().max() > 0 for k, w in adapters["budget"].items() if "lora_B" in k)


def test_a_resumed_run_trains_on_the_same_token_budget_batches(tiny_qwen2, tmp_path):
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=24, max_seq_length=128)
    data_args = DataArguments("unused", max_tokens_per_batch=384)
    seen: dict[str, list] = {}
    for name in ("straight", "resumed"):
        trainer = trainer_for(lora(tiny_qwen2), tokenizer, dataset, tmp_path / name, data_args,
                              num_train_epochs=2, save_strategy="steps", save_steps=3)
        record, collate = seen.setdefault(name, []), trainer.data_collator
        trainer.data_collator = lambda rows, record=record, collate=collate: (
            record.append(sorted(tuple(row["input_ids"]) for row in rows)) or collate(rows))
        steps_per_epoch = len(trainer.get_train_dataloader())
        assert steps_per_epoch > 3
        if name == "straight":
            trainer.train()
        else:  # resume in the second epoch from the checkpoint the straight run wrote there
            checkpoint = tmp_path / "straight" / f"checkpoint-{3 * (steps_per_epoch // 3 + 1)}"
            trainer.train(resume_from_checkpoint=str(checkpoint))
    done = 3 * (steps_per_epoch // 3 + 1)
    assert seen["resumed"] == seen["straight"][done:]
    assert seen["straight"][:steps_per_epoch] != seen["straight"][steps_per_epoch:]  # epochs differ in order


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


def test_the_recipe_prints_its_automatic_choice_and_takes_a_token_budget(run, tiny_qwen2, tokenized_dir, tmp_path):
    common = ["--tokenized_dataset", tokenized_dir, "--model_name_or_path", tiny_qwen2, "--max_steps", "1",
              "--report_to", "none", "--use_cpu", "true", "--per_device_train_batch_size", "2"]
    result = run("qwen_lora_tuning.py", *common, "--output_dir", tmp_path / "auto")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"batching: tokens, length-sorted batches of at most \d+ tokens, \d+ an epoch \(2-row "
                     r"batches: \d+\) \(auto: no varlen attention kernel\)", result.stdout)
    result = run("qwen_lora_tuning.py", *common, "--output_dir", tmp_path / "budget", "--max_tokens_per_batch", "300")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"batching: tokens, length-sorted batches of at most 300 tokens, \d+ an epoch;", result.stdout)


@pytest.mark.parametrize("flags, message", [
    (dict(batching="packing", max_tokens_per_batch=512), "--max_tokens_per_batch makes length-sorted batches; "
                                                        "it does not combine with packing batching"),
    (dict(batching="random", group_by_length=True), r"batching flags disagree \(group_by_length, random\)"),
    (dict(batching="bucket"), "--batching 'bucket' is unknown; choose auto, tokens, sorted"),
    (dict(max_tokens_per_batch=20), "a row has .* tokens, more than --max_tokens_per_batch 20; raise"),
])
def test_batching_mistakes_are_one_sentence(tiny_qwen2, tmp_path, flags, message):
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=4, max_seq_length=128)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(UserError, match=message):
        prepare_batching(dataset, tokenizer, DataArguments("x", **flags), args, 128)


def test_length_grouping_changes_the_trainers_arguments_not_the_callers(tiny_qwen2, tmp_path):
    tokenizer, dataset, _ = tokenize_long_tail(tiny_qwen2, rows=16, max_seq_length=128)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no")
    batching = prepare_batching(dataset, tokenizer, DataArguments("unused", group_by_length=True), args, 128)
    trainer = batching.trainer(model=AutoModelForCausalLM.from_pretrained(tiny_qwen2), args=args,
                               processing_class=tokenizer)
    assert (trainer.args.train_sampling_strategy, trainer.args.remove_unused_columns) == ("group_by_length", False)
    assert (args.train_sampling_strategy, args.remove_unused_columns) == ("random", True)
