"""Preference pairs on token budgets (llm_tuning/rlhf/pair_batches.py): DPO, ORPO and reward-model
training on length-sorted budget batches is exact (first-step loss and gradients of one padded batch),
resumes on the same batches, cuts the padding of long-tailed pairs, and refuses what it cannot do
in one sentence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

import prefork
from llm_tuning.cli import UserError
from llm_tuning.rlhf.pair_batches import (
    PairBatchingArguments,
    padded_pair_lengths,
    pair_batch_sampler,
    pair_lengths,
    pair_trainer,
    resolve_pair_batching,
)
from llm_tuning.rlhf.pairs import encode_pair, encode_pairs, load_preference_pairs, render_pair
from llm_tuning.rlhf.stage import ModelArguments, lora_config
from llm_tuning.templates import get_template

REPO_ROOT = Path(__file__).resolve().parent.parent
PAIRS = REPO_ROOT / "bench" / "data" / "long_tail_pairs.jsonl"


def short_pairs(count: int, max_chars: int = 500):
    """The first `count` long-tailed pairs under `max_chars` characters (prompt + both replies)."""
    pairs = [p for p in load_preference_pairs(PAIRS) if len(p.prompt + p.chosen + p.rejected) <= max_chars]
    return pairs[:count]


batching = PairBatchingArguments  # the pair runs' --batching and --max_tokens_per_batch


def make_trainer(kind: str, model_path: Path, out: Path, pairs, flags: PairBatchingArguments, **config):
    """A DPO, ORPO or reward-model trainer on `pairs`, as RLHF/dpo.py, orpo.py, reward_model.py build them."""
    from transformers import AutoModelForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from llm_tuning.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(model_path), padding_side="right")
    template = get_template("qwen")
    config = {"output_dir": str(out), "report_to": "none", "use_cpu": True, "bf16": False, "logging_steps": 1,
              "seed": 0, "save_strategy": "no", "disable_tqdm": True, **config}
    torch.manual_seed(0)  # the reward model's fresh score head
    if kind == "reward":
        encoded = encode_pairs(tokenizer, template, pairs, None)
        dataset = Dataset.from_dict({"chosen_ids": [e.prompt_ids + e.chosen_ids for e in encoded],
                                     "rejected_ids": [e.prompt_ids + e.rejected_ids for e in encoded]})
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer_class, args, task, extra = RewardTrainer, RewardConfig(**config, max_length=None), "SEQ_CLS", {}
    else:
        dataset = Dataset.from_list([render_pair(tokenizer, template, pair) for pair in pairs])
        model = load_model(str(model_path), "float32")
        trainer_class, args, extra = ((DPOTrainer, DPOConfig(**config), {"ref_model": None}) if kind == "dpo"
                                      else (ORPOTrainer, ORPOConfig(**config, beta=0.5), {}))
        task = "CAUSAL_LM"
    lora = lora_config(model, ModelArguments("unused", lora_dropout=0.0), task)
    return pair_trainer(trainer_class, flags, model=model, args=args, train_dataset=dataset,
                        processing_class=tokenizer, peft_config=lora, **extra)


def largest_pair(tiny_qwen2, pairs) -> int:
    from llm_tuning.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_qwen2))
    encoded = [encode_pair(tokenizer, get_template("qwen"), pair) for pair in pairs]
    return max(2 * (len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids))) for e in encoded)


def trainable(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def one_sgd_step(kind: str, model_path: Path, out: Path, flags: PairBatchingArguments, **config) -> dict:
    """One optimizer step over every batch of the 8 short pairs: the logged loss, the pairs of each
    micro-batch this process trained on, and each trainable weight's move. With SGD, lr 1 and no
    clipping, a weight moves by minus its gradient: equal moves are equal gradients."""
    pairs = short_pairs(8)
    trainer = make_trainer(kind, model_path, out, pairs, flags, per_device_train_batch_size=8, max_steps=1,
                           optim="sgd", learning_rate=1.0, max_grad_norm=0.0, **config)
    batches = len(trainer.batch_sampler) if trainer.batch_sampler is not None else 1
    trainer.args.gradient_accumulation_steps = -(-batches // trainer.args.world_size)  # every batch in one step
    pairs_seen, collate = [], trainer.data_collator
    trainer.data_collator = lambda rows: pairs_seen.append(len(rows)) or collate(rows)
    before = trainable(trainer)
    trainer.train()
    after = trainable(trainer)
    return {"loss": trainer.state.log_history[0]["loss"], "batches": pairs_seen, "pairs": sum(pairs_seen),
            "moves": {key: after[key] - before[key] for key in before}}


@pytest.mark.parametrize("kind", ["dpo", "orpo", "reward"])
def test_one_step_over_budget_micro_batches_is_one_padded_batch(kind, tiny_qwen2, tmp_path):
    # One optimizer step over the same 8 pairs: one padded batch of all of them, or length-sorted
    # micro-batches of a token budget (of unlike sizes) accumulated.
    budget = largest_pair(tiny_qwen2, short_pairs(8)) + 8  # room for a token the trainer may add (ORPO: EOS)
    padded = one_sgd_step(kind, tiny_qwen2, tmp_path / "padded", batching(batching="random"))
    budgeted = one_sgd_step(kind, tiny_qwen2, tmp_path / "budget", batching(max_tokens_per_batch=budget))
    assert padded["batches"] == [8]
    assert len(budgeted["batches"]) >= 3 and len(set(budgeted["batches"])) > 1, budgeted["batches"]
    assert budgeted["loss"] == pytest.approx(padded["loss"], abs=1e-5)
    for key, move in padded["moves"].items():
        torch.testing.assert_close(budgeted["moves"][key], move, atol=1e-5, rtol=1e-4, msg=key)
    assert any(move.abs().max() > 1e-4 for move in padded["moves"].values())  # it did learn


def test_two_processes_on_budget_micro_batches_take_the_padded_batchs_step(tiny_qwen2, tmp_path):
    # torchrun deals the budget batches out to 2 ranks, so they hold different numbers of pairs:
    # the pairs must still count alike across ranks (DDP averages the ranks' gradients).
    padded = one_sgd_step("dpo", tiny_qwen2, tmp_path / "padded", batching(batching="random"))
    budget = largest_pair(tiny_qwen2, short_pairs(8)) + 8
    command = [*prefork.torchrun(), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
               __file__, str(tiny_qwen2), str(tmp_path / "ddp"), str(budget)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = torch.load(tmp_path / "ddp" / "moves.pt")
    assert ranks["pairs_per_rank"][0] != ranks["pairs_per_rank"][1], ranks["pairs_per_rank"]
    assert ranks["loss"] == pytest.approx(padded["loss"], abs=1e-5)
    for key, move in padded["moves"].items():
        torch.testing.assert_close(ranks["moves"][key], move, atol=1e-5, rtol=1e-4, msg=key)


def ddp_worker(model_path: Path, out: Path, budget: int) -> None:
    """A rank of the test above: one step over its share of the budget batches; rank 0 saves."""
    import torch.distributed as dist

    # --data_seed 1 orders the six budget batches so that one rank gets 3 pairs, the other 5
    step = one_sgd_step("dpo", model_path, out, batching(max_tokens_per_batch=budget), ddp_backend="gloo",
                        data_seed=1)
    rank_pairs = [None] * dist.get_world_size()
    dist.all_gather_object(rank_pairs, step["pairs"])
    if dist.get_rank() == 0:
        torch.save({**step, "pairs_per_rank": rank_pairs}, out / "moves.pt")


def test_a_resumed_dpo_run_trains_on_the_same_batches(tiny_qwen2, tmp_path):
    pairs = short_pairs(24)
    flags = batching(max_tokens_per_batch=largest_pair(tiny_qwen2, pairs) * 2)
    seen: dict[str, list] = {}
    for name in ("straight", "resumed"):
        trainer = make_trainer("dpo", tiny_qwen2, tmp_path / name, pairs, flags, num_train_epochs=2,
                               save_strategy="steps", save_steps=3, learning_rate=1e-3)
        record, collate = seen.setdefault(name, []), trainer.data_collator
        trainer.data_collator = lambda rows, record=record, collate=collate: (
            record.append(sorted(tuple(row["prompt_ids"] + row["chosen_ids"]) for row in rows)) or collate(rows))
        steps_per_epoch = len(trainer.get_train_dataloader())
        assert steps_per_epoch > 3
        checkpoint_step = 3 * (steps_per_epoch // 3 + 1)  # a checkpoint in the second epoch
        if name == "straight":
            trainer.train()
        else:
            trainer.train(resume_from_checkpoint=str(tmp_path / "straight" / f"checkpoint-{checkpoint_step}"))
    assert seen["resumed"] == seen["straight"][checkpoint_step:]
    assert seen["straight"][:steps_per_epoch] != seen["straight"][steps_per_epoch:]  # epochs differ in order


def test_budget_batches_cut_the_padding_of_long_tailed_pairs():
    chosen, rejected = [], []
    for pair in load_preference_pairs(PAIRS):  # lengths in characters stand in for tokens here
        chosen.append(len(pair.prompt) + len(pair.chosen))
        rejected.append(len(pair.prompt) + len(pair.rejected))
    lengths = padded_pair_lengths(chosen, rejected)
    real = sum(chosen) + sum(rejected)
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True, per_device_train_batch_size=8)

    def efficiency(batches) -> float:
        return real / sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)

    budget = pair_batch_sampler("tokens", batching(), args, lengths)
    generator = torch.Generator().manual_seed(0)
    shuffled = torch.randperm(len(lengths), generator=generator).tolist()
    random_batches = [shuffled[start:start + 8] for start in range(0, len(lengths), 8)]
    assert len(budget) <= len(random_batches)  # no more optimizer steps than 8-pair batches
    assert sorted(i for batch in budget.batches() for i in batch) == list(range(len(lengths)))
    # What is left is mostly the gap between a pair's chosen and rejected sequence, which no order removes.
    within_pairs = real / sum(lengths)
    assert efficiency(budget.batches()) > 0.95 * within_pairs
    assert efficiency(budget.batches()) > 1.8 * efficiency(random_batches)


def test_pair_lengths_read_each_trainers_columns():
    dpo = Dataset.from_dict({"prompt_ids": [[1, 2, 3]], "chosen_ids": [[4]], "rejected_ids": [[5, 6, 7, 8]]})
    reward = Dataset.from_dict({"chosen_ids": [[1, 2]], "rejected_ids": [[1, 2, 3]]})
    orpo = Dataset.from_dict({"chosen_input_ids": [[1, 2, 3, 4, 5]], "rejected_input_ids": [[1]],
                              "chosen_ids": [[9]]})
    assert pair_lengths(dpo) == ([4], [7])
    assert pair_lengths(dpo, max_length=5) == ([4], [5])
    assert pair_lengths(reward) == ([2], [3])
    assert pair_lengths(orpo) == ([5], [1])
    assert padded_pair_lengths([4, 2], [7, 1]) == [14, 4]


@pytest.mark.parametrize("flags, config, message", [
    (dict(batching="packing"), {}, "packing batching is not available for preference pairs"),
    (dict(batching="group_by_length"), {}, "group_by_length batching is not available for preference pairs"),
    (dict(), dict(train_sampling_strategy="group_by_length"), "group_by_length batching is not available"),
    (dict(max_tokens_per_batch=512), dict(loss_type=["sigmoid", "aot"]),
     "--loss_type aot is not a mean over pairs, .*; pass --batching sorted or random"),
    (dict(max_tokens_per_batch=10), {}, (r"a pair takes 14 tokens \(chosen and rejected, each padded to the "
                                         r"longer\), more than --max_tokens_per_batch 10; raise")),
])
def test_pair_batching_mistakes_are_one_sentence(flags, config, message):
    from trl import DPOConfig

    args = DPOConfig(output_dir="unused", report_to="none", use_cpu=True, bf16=False, **config)
    with pytest.raises(UserError, match=message):
        mode, _ = resolve_pair_batching(batching(**flags), args)
        pair_batch_sampler(mode, batching(**flags), args, [14, 6])


def test_auto_keeps_the_trainers_batches_for_losses_that_compare_pairs():
    from trl import DPOConfig

    def config(*losses):
        return DPOConfig(output_dir="unused", report_to="none", use_cpu=True, bf16=False, loss_type=list(losses))

    assert resolve_pair_batching(batching(), config("sigmoid")) == ("tokens", True)
    assert resolve_pair_batching(batching(), config("sigmoid", "sft")) == ("random", True)
    assert resolve_pair_batching(batching(batching="sorted"), config("aot")) == ("sorted", False)


def test_the_scripts_print_their_batching_and_refuse_packed_pairs_in_one_sentence(run, tiny_qwen2, tmp_path):
    common = ["--model_name_or_path", tiny_qwen2, "--template", "qwen", "--bf16", "false", "--report_to", "none",
              "--train_file", REPO_ROOT / "RLHF" / "data" / "preference_train.jsonl", "--save_strategy", "no",
              "--per_device_train_batch_size", "16"]
    result = run("RLHF/reward_model.py", *common, "--output_dir", tmp_path / "rm", "--max_steps", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"batching: tokens, length-sorted batches of at most \d+ tokens \(chosen and rejected together\), "
                     r"8 an epoch \(16-pair batches: 8\) \(auto\)", result.stdout)  # 120 pairs
    result = run("RLHF/dpo.py", *common, "--output_dir", tmp_path / "dpo", "--batching", "packing")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: packing batching is not available for preference pairs (the trainer pads each pair's chosen and "
        "rejected sequences into one batch); choose --batching auto|tokens|sorted|random")


if __name__ == "__main__":  # a torchrun rank of test_two_processes_on_budget_micro_batches_take_the_padded_batchs_step
    ddp_worker(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
