"""RLHF tutorial: preference data rules, the PPO core against hand-computed values, and the whole
SFT -> reward model -> PPO -> DPO (-> ORPO) pipeline on a tiny model with the figures the tutorial promises."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from llm_tuning.cli import UserError
from llm_tuning.rlhf.pairs import EncodedPair, load_preference_pairs
from llm_tuning.rlhf.ppo import (
    PolicyWithValue, gae, kl_shaped_rewards, ppo_losses, score_rollout, token_logprobs, whiten,
)
from llm_tuning.rlhf.reward_model import pairwise_accuracy
from llm_tuning.rlhf.rollouts import cut_at_stop, generate_replies, pack
from llm_tuning.rlhf.stage import check_same_ids

RLHF_DIR = REPO_ROOT / "RLHF"
DATA = RLHF_DIR / "data"
# The PPO policy may move this far from the SFT policy (exact KL, nats per held-out greedy reply).
PPO_KL_BOUND = 8.0


def load_script(name: str):
    """Import RLHF/<name>.py as module rlhf_<name> (RLHF/ on sys.path, as when a user runs them, for style.py)."""
    if str(RLHF_DIR) not in sys.path:
        sys.path.insert(0, str(RLHF_DIR))
    spec = importlib.util.spec_from_file_location(f"rlhf_{name}", RLHF_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# --- Preference data -----------------------------------------------------------------------------


def test_the_three_record_formats_read_as_the_same_pairs(tmp_path):
    trl = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "天空？", "chosen": "蓝色！😊", "rejected": "蓝色。"}])
    old = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "天空？", "selected": "蓝色！😊", "rejected": "蓝色。"}])
    alpaca = tmp_path / "c.json"
    alpaca.write_text(json.dumps([{"instruction": "天空？", "input": "", "output": ["蓝色！😊", "蓝色。"]},
                                  {"instruction": "Translate", "input": "sky", "output": ["天空", "sky"]}]))
    expected = ("天空？", "蓝色！😊", "蓝色。")
    for path in (trl, old, alpaca):
        pair = load_preference_pairs(path)[0]
        assert (pair.prompt, pair.chosen, pair.rejected) == expected
    second = load_preference_pairs(alpaca)[1]
    assert (second.prompt, second.chosen, second.rejected) == ("Translate\nsky", "天空", "sky")


@pytest.mark.parametrize("bad_record, message", [
    ({"prompt": "q", "chosen": "a"}, ":2: no key 'rejected'"),
    ({"prompt": "q", "chosen": "same", "rejected": " same "}, ":2: the chosen and the rejected reply are the same"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, ":2: 'chosen' is empty"),
    ({"instruction": "q", "output": ["only one"]}, ":2: 'output' must be a list [chosen, rejected]"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "history": ["x"]}, ":2: 'history' must be a list"),
])
def test_bad_records_name_file_and_line(tmp_path, bad_record, message):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a!", "rejected": "a."}, bad_record])
    with pytest.raises(UserError) as err:
        load_preference_pairs(path)
    assert str(err.value).startswith(f"{path}{message}")


def test_shipped_data_is_what_the_generator_writes(tmp_path):
    before = {p.name: p.read_bytes() for p in DATA.glob("*.jsonl")}
    load_script("make_rlhf_data").main()
    assert {p.name: p.read_bytes() for p in DATA.glob("*.jsonl")} == before
    train = {p.prompt for p in load_preference_pairs(DATA / "preference_train.jsonl")}
    held_out = {p.prompt for p in load_preference_pairs(DATA / "preference_eval.jsonl")}
    assert not train & held_out


def test_pairwise_accuracy_counts_strict_wins():
    assert pairwise_accuracy([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, -1.0]) == 0.5


# --- PPO core, against values computed by hand ---------------------------------------------------


def test_pack_pads_prompts_left_and_replies_right():
    batch = pack([[5, 6, 7], [8]], [[1, 2], [3]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 1, 2], [0, 0, 8, 3, 0]]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4]
    assert batch.position_ids[1, 2:4].tolist() == [0, 1]  # real tokens count from 0 after the padding
    assert batch.reply_mask.tolist() == [[1, 1], [1, 0]]
    assert cut_at_stop([4, 9, 4, 9], stop_ids=[9]) == [4, 9]


def test_kl_shaped_rewards_put_the_score_on_the_last_reply_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -9.0]])
    rewards, kl = kl_shaped_rewards(torch.tensor([4.0]), logp, ref, torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.1)
    assert kl.tolist() == [[0.5, 0.0, 0.0]]
    assert torch.allclose(rewards, torch.tensor([[-0.05, 4.0, 0.0]]))


def test_gae_matches_the_recursion_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.25, 9.0]])  # the value past the reply end must be ignored
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=1: δ = 1 - 0.25 = 0.75 (nothing after the last token); t=0: δ = 0 + 0.9·0.25 - 0.5 = -0.275,
    # A0 = -0.275 + 0.9·0.5·0.75 = 0.0625
    assert torch.allclose(advantages, torch.tensor([[0.0625, 0.75, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.5625, 1.0, 0.0]]))


def test_whiten_gives_zero_mean_unit_variance_on_the_mask():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = whiten(x, mask)
    assert torch.allclose(out[:, :2].flatten(), torch.tensor([-3.0, -1.0, 1.0, 3.0]) / 5 ** 0.5, atol=1e-5)
    assert out[:, 2].abs().max() == 0


def test_ppo_loss_clips_the_ratio():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 1.0]]))  # ratio 1.5 (clipped at 1.2) and 1.0
    adv = torch.tensor([[1.0, -1.0]])
    zeros = torch.zeros(1, 2)
    parts = ppo_losses(logp, old, adv, zeros, zeros, zeros, mask, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    # token 0: max(-1.5, -1.2) = -1.2; token 1: max(1.0, 1.0) = 1.0; mean -0.1
    assert parts.policy_loss == pytest.approx(-0.1)
    assert parts.clip_fraction == pytest.approx(0.5)
    assert parts.value_loss == 0


def test_generation_never_stops_at_the_first_position(tiny_qwen2):
    from llm_tuning.modeling import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(str(tiny_qwen2)), load_model(str(tiny_qwen2), "float32")
    eos = tokenizer.eos_token_id
    # A policy that wants to stop at once, the way a collapsing PPO policy does.
    model.lm_head.register_forward_hook(lambda module, inputs, out: out.index_add(
        -1, torch.tensor([eos]), torch.full((*out.shape[:-1], 1), 50.0)))
    replies = generate_replies(model, [[5, 6, 7], [8, 9]], [eos], tokenizer.pad_token_id, max_new_tokens=5)
    assert all(len(r) == 2 and r[0] != eos and r[1] == eos for r in replies)


def test_rollouts_ignore_the_models_own_generation_config(tiny_qwen2):
    """Qwen2.5-Instruct ships repetition_penalty 1.05 in generation_config.json: PPO must sample
    from softmax(logits / T) all the same, or its ratios and KL score other tokens than it sampled."""
    from peft import LoraConfig, get_peft_model

    from llm_tuning.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_qwen2))
    plain, penalised = load_model(str(tiny_qwen2), "float32"), load_model(str(tiny_qwen2), "float32")
    penalised.generation_config.update(repetition_penalty=3.0, no_repeat_ngram_size=1, top_k=2)
    prompts, eos, pad = [[5, 6, 7, 5, 6], [8, 9, 8, 9]], tokenizer.eos_token_id, tokenizer.pad_token_id

    def sample(model, seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        return generate_replies(model, prompts, [eos], pad, max_new_tokens=12, temperature=1.0)

    def sample_with_own_config(model, seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        return model.generate(input_ids=torch.tensor(prompts[:1]), do_sample=True, temperature=1.0,
                              max_new_tokens=12, pad_token_id=pad).tolist()

    # the premise: a plain generate call applies the model's own penalties
    assert any(sample_with_own_config(plain, seed) != sample_with_own_config(penalised, seed) for seed in range(3))
    wrapped = get_peft_model(penalised, LoraConfig(r=4, target_modules=["q_proj"]))
    for seed in range(3):
        assert sample(penalised, seed) == sample(plain, seed) == sample(wrapped, seed)
    assert penalised.generation_config.repetition_penalty == 3.0  # the model's config is left as it was


def test_first_position_log_probs_mask_the_stop_tokens_as_sampling_does():
    logits = torch.tensor([[[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]])
    logp, entropy = token_logprobs(logits, torch.tensor([[1, 1]]), banned_first=[0])
    assert logp[0, 0] == pytest.approx(math.log(math.e / (math.e + 1)))  # token 0 is impossible at position 0
    assert logp[0, 1] == pytest.approx(1.0 - math.log(math.e ** 2 + math.e + 1))  # and allowed after it
    assert torch.isfinite(entropy).all()


def test_rollout_scored_in_chunks_matches_one_pass(tiny_qwen2):
    from peft import LoraConfig, get_peft_model

    from llm_tuning.modeling import load_model

    torch.manual_seed(0)
    policy = PolicyWithValue(get_peft_model(load_model(str(tiny_qwen2), "float32"),
                                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)))
    torch.nn.init.normal_(policy.value_head.weight)
    policy.eval()
    batch = pack([[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16]],
                 [[20, 21, 2], [22], [23, 24, 25, 26], [27, 28], [29]], pad_id=0)
    chunked = score_rollout(policy, batch, temperature=0.7, banned_first=[2], chunk_size=2)
    with torch.no_grad():
        logits, values = policy(batch)
        logp, entropy = token_logprobs(logits, batch.reply_ids, 0.7, [2])
        ref_logp, _ = token_logprobs(policy.reference_logits(batch), batch.reply_ids, 0.7, [2])
    for got, want in ((chunked.logp, logp), (chunked.ref_logp, ref_logp), (chunked.values, values),
                      (chunked.entropy, entropy)):
        assert got.shape == (5, 4)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(chunked.logp, chunked.ref_logp)  # the adapter is on for the policy, off for the reference


# --- The tutorial end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tiny_qwen2, tmp_path_factory):
    """SFT (the real two-step workflow) -> reward model -> PPO -> DPO, then the evaluation table."""
    from transformers import TrainingArguments

    from llm_tuning.finetune import finetune
    from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

    out = tmp_path_factory.mktemp("rlhf")
    sys.path.insert(0, str(REPO_ROOT))
    import qwen_lora_tuning
    import tokenize_dataset_rows

    tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
        "--model_checkpoint", str(tiny_qwen2), "--input_file", str(DATA / "sft.jsonl"),
        "--save_name", "sft", "--output_dir", str(out / "tokenized"), "--max_seq_length", "256"]))
    finetune(qwen_lora_tuning.QWEN, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments, argv=[
        "--tokenized_dataset", str(out / "tokenized" / "sft"), "--output_dir", str(out / "sft"),
        "--finetuning_type", "full", "--max_steps", "300", "--learning_rate", "2e-3",
        "--per_device_train_batch_size", "8", "--save_strategy", "no", "--report_to", "none"]))
    sft, data = str(out / "sft"), ["--train_file", str(DATA / "preference_train.jsonl"),
                                   "--eval_file", str(DATA / "preference_eval.jsonl")]
    trainer_flags = ["--bf16", "false", "--per_device_train_batch_size", "16", "--save_strategy", "no",
                     "--report_to", "none"]
    rm = load_script("reward_model").cli(["--model_name_or_path", sft, *data, "--output_dir", str(out / "rm"),
                                          "--max_steps", "100", "--learning_rate", "3e-3", *trainer_flags])
    # the tiny model's PPO settings, as rlhf.sh passes them (ppo.py's defaults are a real model's)
    ppo = load_script("ppo").cli(["--model_name_or_path", sft, *data, "--reward_model", str(out / "rm"),
                                  "--output_dir", str(out / "ppo"), "--num_iterations", "20", "--learning_rate", "1e-3",
                                  "--kl_coef", "0.2", "--batch_size", "32", "--mini_batch_size", "16",
                                  "--max_new_tokens", "24", "--report_to", "none"])
    dpo = load_script("dpo").cli(["--model_name_or_path", sft, *data, "--output_dir", str(out / "dpo"),
                                  "--max_steps", "40", "--learning_rate", "2e-3", *trainer_flags])
    rows = load_script("evaluate").measure_policies(sft, str(out / "rm"), str(DATA / "preference_eval.jsonl"),
                                                    {"PPO": str(out / "ppo"), "DPO": str(out / "dpo")},
                                                    max_new_tokens=24)
    return {"rm": rm, "ppo": ppo, "dpo": dpo, "rows": {r.name: r for r in rows}, "out": out}


def test_reward_model_ranks_held_out_pairs(pipeline):
    assert pipeline["rm"]["accuracy"] >= 0.9
    assert pipeline["rm"]["pairs"] == len(load_preference_pairs(DATA / "preference_eval.jsonl"))


def test_ppo_raises_reward_with_bounded_kl_and_no_empty_replies(pipeline):
    before, after = pipeline["ppo"]["before"], pipeline["ppo"]["after"]
    assert after["mean_reward"] > before["mean_reward"] + 2.0
    assert 0 < after["mean_kl"] <= PPO_KL_BOUND
    assert after["empty_replies"] == 0
    rows = pipeline["rows"]
    assert rows["PPO"].reward > rows["SFT"].reward + 2.0 and rows["PPO"].empty == 0
    log = [json.loads(line) for line in (pipeline["out"] / "ppo" / "ppo_log.jsonl").read_text().splitlines()]
    assert len(log) == 20 and {"reward", "kl", "entropy", "reply_length", "clip_fraction"} <= set(log[0])
    assert all(entry["peak_memory_mb"] > 0 for entry in log)


def test_dpo_raises_margin_and_style_rate(pipeline):
    dpo, rows = pipeline["dpo"], pipeline["rows"]
    assert dpo["margin_after"] > dpo["margin_before"] + 3.0
    assert rows["DPO"].logp_margin == pytest.approx(dpo["margin_after"], abs=1e-3)
    # DPO's implicit reward margin: β × how much more than the SFT reference the policy prefers chosen
    assert rows["SFT"].dpo_margin == 0
    assert rows["DPO"].dpo_margin == pytest.approx(0.1 * (rows["DPO"].logp_margin - rows["SFT"].logp_margin), abs=1e-3)
    assert rows["DPO"].dpo_margin > 0.3
    assert rows["DPO"].style_rate >= rows["SFT"].style_rate + 0.4
    assert rows["SFT"].kl == 0 and rows["DPO"].empty == 0


@pytest.fixture(scope="module")
def orpo(pipeline):
    """ORPO on the pipeline's SFT model (no reward model, no reference), measured like the others."""
    out = pipeline["out"]
    sft = str(out / "sft")
    metrics = load_script("orpo").cli([
        "--model_name_or_path", sft, "--train_file", str(DATA / "preference_train.jsonl"),
        "--eval_file", str(DATA / "preference_eval.jsonl"), "--output_dir", str(out / "orpo"),
        "--max_steps", "40", "--learning_rate", "2e-3", "--beta", "0.5", "--bf16", "false",
        "--per_device_train_batch_size", "16", "--save_strategy", "no", "--report_to", "none"])
    [row] = load_script("evaluate").measure_policies(sft, str(out / "rm"), str(DATA / "preference_eval.jsonl"),
                                                     {"ORPO": str(out / "orpo")}, max_new_tokens=24)[1:]
    return {"metrics": metrics, "row": row, "out": out / "orpo"}


def test_orpo_raises_margin_reward_and_style_rate_without_empty_replies(pipeline, orpo):
    sft, row, metrics = pipeline["rows"]["SFT"], orpo["row"], orpo["metrics"]
    assert metrics["margin_after"] > metrics["margin_before"] + 3.0
    assert metrics["margin_before"] == pytest.approx(sft.logp_margin, abs=1e-3)  # adapter off = the SFT model
    assert row.logp_margin == pytest.approx(metrics["margin_after"], abs=1e-3)
    assert row.style_rate >= sft.style_rate + 0.4
    assert row.reward > sft.reward + 2.0
    assert row.empty == 0
    # no reference model in the loss, yet the policy stays near the SFT model (exact KL, nats per reply)
    assert 0 < row.kl <= PPO_KL_BOUND
    config = json.loads((orpo["out"] / "llm_tuning.json").read_text())
    assert config["stage"] == "orpo" and (orpo["out"] / "adapter_config.json").is_file()


def test_trainer_token_ids_must_match_the_template():
    class Tok:
        def decode(self, ids):
            return " ".join(map(str, ids))

    expected = EncodedPair(prompt_ids=[1, 2], chosen_ids=[3, 9], rejected_ids=[4, 9])
    check_same_ids([1, 2, 3, 9], expected, Tok(), "ORPOTrainer")
    with pytest.raises(UserError, match=r"^ORPOTrainer's token ids differ from the chat template's: '0 1 2 3 9' vs '1 2 3 9'"):
        check_same_ids([0, 1, 2, 3, 9], expected, Tok(), "ORPOTrainer")  # e.g. a BOS the template has not


@pytest.mark.parametrize("script", ["reward_model", "orpo"])
def test_a_bad_record_stops_the_script_with_file_line_and_exit_code_2(tiny_qwen2, tmp_path, run, script):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "a!", "rejected": "a."},
                                               {"prompt": "q", "chosen": "same", "rejected": "same"}])
    result = run(f"RLHF/{script}.py", "--model_name_or_path", tiny_qwen2, "--template", "qwen",
                 "--train_file", bad, "--output_dir", tmp_path / script, "--bf16", "false")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad}:2: the chosen and the rejected reply are the same; a pair must differ")
    assert "Traceback" not in result.stderr


# --- Every stage loads its models in --dtype ----------------------------------------------------------


@pytest.fixture
def loaded_models(monkeypatch):
    """(class name, dtype) of every model `from_pretrained` returns while the test runs, whatever
    the code path (AutoModelFor*, a reward adapter's base, a TRL trainer)."""
    from transformers import PreTrainedModel

    loaded = []
    from_pretrained = PreTrainedModel.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        model = from_pretrained(cls, *args, **kwargs)
        loaded.append((cls.__name__, model.dtype))
        return model

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(recording))
    return loaded


def test_every_stage_loads_its_models_in_the_dtype_asked(tiny_qwen2, tmp_path, loaded_models):
    """bfloat16 holds a model in half the memory of float32: the SFT model (policy and reference),
    the reward model being trained and the one scoring are all loaded in it, not cast by autocast."""
    policy, scorer = ("Qwen2ForCausalLM", torch.bfloat16), ("Qwen2ForSequenceClassification", torch.bfloat16)
    model = ["--model_name_or_path", str(tiny_qwen2), "--template", "qwen", "--dtype", "bfloat16"]
    pairs = ["--train_file", str(DATA / "preference_train.jsonl"), "--eval_file", str(DATA / "preference_eval.jsonl")]
    short = ["--max_steps", "1", "--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none",
             "--bf16", "false"]
    grpo = load_script("grpo")
    sys.modules[grpo.__name__] = grpo  # Trainer.save_model pickles GRPOArguments: importable by name
    stages = {
        "reward_model": (lambda: load_script("reward_model").cli([*model, *pairs, "--output_dir", str(tmp_path / "rm"),
                                                                  *short]), {scorer}),
        "ppo": (lambda: load_script("ppo").cli([*model, *pairs, "--output_dir", str(tmp_path / "ppo"),
                                                "--reward_model", str(tmp_path / "rm"), "--num_iterations", "1",
                                                "--batch_size", "4", "--mini_batch_size", "4", "--ppo_epochs", "1",
                                                "--max_new_tokens", "4", "--report_to", "none"]), {policy, scorer}),
        "dpo": (lambda: load_script("dpo").cli([*model, *pairs, "--output_dir", str(tmp_path / "dpo"), *short,
                                                "--trust_remote_code", "true"]), {policy}),
        "orpo": (lambda: load_script("orpo").cli([*model, *pairs, "--output_dir", str(tmp_path / "orpo"), *short]),
                 {policy}),
        "grpo": (lambda: grpo.cli([*model, "--train_file", str(DATA / "grpo_math.jsonl"),
                                   "--output_dir", str(tmp_path / "grpo"), *short, "--num_generations", "2",
                                   "--max_completion_length", "4", "--eval_samples", "1",
                                   "--gradient_checkpointing", "false"]), {policy}),
        "evaluate": (lambda: load_script("evaluate").measure_policies(
            str(tiny_qwen2), str(tmp_path / "rm"), str(DATA / "preference_eval.jsonl"), {"DPO": str(tmp_path / "dpo")},
            "qwen", max_new_tokens=4, dtype="bfloat16"), {policy, scorer}),
    }
    for stage, (run_stage, expected) in stages.items():
        loaded_models.clear()
        run_stage()
        assert set(loaded_models) == expected, stage
    # what later stages and chat.py read: whether the stage's model runs its own code
    assert json.loads((tmp_path / "dpo" / "llm_tuning.json").read_text())["trust_remote_code"] is True
    assert json.loads((tmp_path / "ppo" / "llm_tuning.json").read_text())["trust_remote_code"] is False


# --- The README's stage commands are rlhf.sh's ---------------------------------------------------

def commands_in(text: str) -> list[list[str]]:
    """The `python …` commands of a shell text, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line) for line in joined.splitlines() if line.startswith("python ")]


def test_the_readme_stage_commands_are_what_rlhf_sh_runs(tmp_path):
    """rlhf.sh runs with a `python` that only records its arguments; with the defaults substituted,
    the calls are the commands RLHF/README.md lists as what rlhf.sh runs, in the same order."""
    stub_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    stub_dir.mkdir()
    stub = stub_dir / "python"
    # grpo.py writes the table rlhf.sh prints at the end: the stub leaves an empty one in its place
    stub.write_text('#!/bin/sh\necho "python $*" >> "$CALLS"\n'
                    'case "$*" in *RLHF/grpo.py*) mkdir -p "$OUT/grpo" && : > "$OUT/grpo/eval_table.txt";; esac\n')
    stub.chmod(0o755)
    out = tmp_path / "out"  # never the repository's weights/rlhf: rlhf.sh removes OUT first
    env = {key: value for key, value in os.environ.items() if key not in ("SEED", "MODEL", "EXTRA")}
    result = subprocess.run(["sh", str(RLHF_DIR / "rlhf.sh")], env={
        **env, "PATH": f"{stub_dir}{os.pathsep}{env['PATH']}", "CALLS": str(calls), "OUT": str(out),
        "MODEL": "models/tiny-qwen2"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    run = [line.split() for line in calls.read_text().replace(str(out), "weights/rlhf").splitlines()
           if "llm_tuning.testing" not in line]  # the tiny model is built only where it is missing

    readme = (RLHF_DIR / "README.md").read_text(encoding="utf-8")
    block = readme.split("exactly what `sh RLHF/rlhf.sh` runs", 1)[1].split("\n\n", 1)[0]
    assert commands_in(block) == run
