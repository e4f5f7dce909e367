"""GRPO (RLHF/grpo.py): the reward functions on hand-written replies, the user errors, and a short
seeded run that raises the exact-answer reward of a tiny SFT model on a fixed set of questions."""

from __future__ import annotations

import json
import sys
from fractions import Fraction

import pytest

from conftest import REPO_ROOT
from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import UserError
from llm_tuning.rlhf.rewards import (
    FormatReward,
    RewardModelReward,
    build_reward_functions,
    exact_answer,
    final_number,
)
from test_rlhf import RLHF_DIR, load_script

MATH = RLHF_DIR / "data" / "grpo_math.jsonl"


def load_grpo_script():
    module = load_script("grpo")
    sys.modules[module.__name__] = module  # Trainer.save_model pickles GRPOArguments: importable by name
    return module


# --- Reading the final number --------------------------------------------------------------------


@pytest.mark.parametrize("reply, number", [
    ("35 + 47 = 82。", 82),
    ("What is 34 + 31? 34 + 31 = 65! 😊", 65),
    ("29 - 64 = -35", -35),
    ("94-13=81", 81),                      # a minus between numbers is no sign of the last one
    ("答案是82", 82),                       # CJK text right before the digits
    ("３５＋４７＝８２", 82),                 # full-width digits
    ("The total is 1,234.50 dollars.", Fraction("1234.5")),
    ("答案是八十二。", 82),
    ("一百零五", 105),
    ("两万三千", 23000),
    ("负三十五", -35),
    ("等于 8.", 8),                         # a full stop is no decimal point
    ("Qwen2 says nothing", None),           # the digit of a word is no number
    ("没有数字", None),
    ("", None),
])
def test_final_number_reads_chinese_and_english_replies(reply, number):
    assert final_number(reply) == number


def test_exact_answer_compares_final_numbers_and_logs_accuracy():
    logged = {}
    replies = ["35 + 47 = 82。", "35 + 47 = 81。", "", "= = =", "答案是八十二", "82 + 1 = 83"]
    rewards = exact_answer(completions=replies, answer=["35 + 47 = 82"] * 6,
                           log_metric=lambda name, value: logged.update({name: value}))
    assert rewards == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert logged == {"accuracy": pytest.approx(2 / 6)}
    # conversational completions: the content of the last message
    assert exact_answer(completions=[[{"role": "assistant", "content": "= 7"}]], answer=["7"]) == [1.0]


def test_format_reward_default_and_custom_pattern():
    default = FormatReward()
    replies = ["35 + 47 = 82。", "34 + 31 = 65! 😊", "  5 + 3 = 8  ", "82", "= 82", "35 + 47 = 82，对吗？我想想",
               "", "35 + 47 =\n82"]
    assert default(completions=replies) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    tagged = FormatReward(r"^<answer>-?\d+</answer>$")
    assert tagged(completions=["<answer>82</answer>", "<answer>八十二</answer>", "82"]) == [1.0, 0.0, 0.0]


def test_bad_reward_names_patterns_and_missing_reward_model_are_user_errors():
    with pytest.raises(UserError,
                       match=r"^unknown reward function 'exact'; choose from: exact_answer, format, reward_model$"):
        build_reward_functions(["exact_answer", "exact"])
    with pytest.raises(UserError,
                       match=r"^--reward_funcs exact_answer exact_answer: each reward function may appear once$"):
        build_reward_functions(["exact_answer", "exact_answer"])
    with pytest.raises(UserError, match=r"^--format_pattern '\(' is not a valid regular expression"):
        build_reward_functions(["format"], format_pattern="(")
    with pytest.raises(UserError, match=r"^the reward_model reward needs --reward_model"):
        build_reward_functions(["reward_model"])


def test_reward_model_reward_scores_the_prompt_and_the_reply_ids(tiny_qwen2):
    from transformers import AutoModelForSequenceClassification

    from llm_tuning.modeling import load_tokenizer
    from llm_tuning.rlhf.pairs import render_prompt
    from llm_tuning.rlhf.reward_model import reward_scores
    from llm_tuning.templates import encode_prompt, encode_turns, get_template

    tokenizer, template = load_tokenizer(str(tiny_qwen2)), get_template("qwen")
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_qwen2), num_labels=1).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    queries, replies = ["What is 3 + 4?", "计算 5 + 6 等于多少？"], ["3 + 4 = 7.", "5 + 6 = 11。"]
    reply_ids = [encode_turns(tokenizer, template, [(q, r)])[0][1] for q, r in zip(queries, replies)]
    got = RewardModelReward(model, tokenizer)(prompts=[render_prompt(tokenizer, template, [], q) for q in queries],
                                              completion_ids=reply_ids)
    expected = reward_scores(model, [encode_prompt(tokenizer, template, q) + r for q, r in zip(queries, reply_ids)],
                             tokenizer.pad_token_id)
    assert got == pytest.approx(expected.tolist())


# --- User errors: one sentence, exit code 2 ----------------------------------------------------------


def test_an_unknown_reward_name_stops_the_script_with_exit_code_2(tiny_qwen2, tmp_path, run):
    result = run("RLHF/grpo.py", "--model_name_or_path", tiny_qwen2, "--template", "qwen", "--train_file", MATH,
                 "--output_dir", tmp_path / "grpo", "--reward_funcs", "exact_answer", "accuracy", "--bf16", "false")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown reward function 'accuracy'; choose from: exact_answer, format, reward_model")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("rows, flags, message", [
    ([{"q": "What is 1 + 1?", "a": "1 + 1 = 2"}, {"q": "天空是什么颜色？", "a": "蓝色"}], [],
     ":2: the answer '蓝色' has no number, which the exact_answer reward compares"),
    ([{"q": "What is 1 + 1?", "answer": "2"}], [], ":1: no key 'a' (found: q, answer)"),
    ([{"q": "What is 1 + 1?", "a": "2"}], ["--reward_funcs", "exact_answer", "format", "--reward_weights", "1.0"],
     "--reward_weights has 1 value(s) for 2 --reward_funcs (exact_answer format); give one weight per function"),
])
def test_bad_data_and_flags_stop_with_one_sentence(tiny_qwen2, tmp_path, capsys, rows, flags, message):
    data = str(write_jsonl(rows, tmp_path / "math.jsonl"))
    with pytest.raises(SystemExit) as exit_info:
        load_grpo_script().cli(["--model_name_or_path", str(tiny_qwen2), "--template", "qwen", "--train_file", data,
                                "--output_dir", str(tmp_path / "grpo"), "--bf16", "false", *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error
    assert not (tmp_path / "grpo").exists()


# --- A short seeded run on the tutorial's data -------------------------------------------------------


# rlhf.sh's GRPO settings for the tiny model (grpo.py's defaults are TRL's, for a real model)
TINY_GRPO = ["--max_steps", "30", "--learning_rate", "5e-3", "--per_device_train_batch_size", "64",
             "--max_completion_length", "16", "--temperature", "0.7", "--gradient_checkpointing", "false",
             "--logging_steps", "5"]
# SFT (300 steps) + GRPO (30 steps) take a few minutes on 2 cores; the first test pays for the fixture,
# and on a machine shared with other jobs that can pass the suite's 600 s.
RUN_TIMEOUT = pytest.mark.timeout(1800)
# rlhf.sh's default. GRPO's gain is not established on the tiny model (RLHF/README.md, GRPO section):
# these tests assert only what held at each of seeds 0, 1 and 2 (run once each with SEED changed).
SEED = 0


@pytest.fixture(scope="module")
def grpo_run(tiny_qwen2, tmp_path_factory):
    """The SFT model of rlhf.sh (full fine-tuning on RLHF/data/sft.jsonl, 300 steps), then GRPO with the
    exact-answer reward on the 24 arithmetic questions of RLHF/data/grpo_math.jsonl, with rlhf.sh's
    settings for the tiny model (30 steps of 8 questions × 8 replies; grpo.py's defaults are a real
    model's), both at rlhf.sh's SEED: `sh RLHF/rlhf.sh`'s GRPO stage."""
    from tests.tiny_training import save_tokenized_pairs, train_tiny

    sys.path.insert(0, str(REPO_ROOT))
    import qwen_lora_tuning

    out = tmp_path_factory.mktemp("grpo")
    records = [json.loads(line) for line in (RLHF_DIR / "data" / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    dataset = save_tokenized_pairs(tiny_qwen2, "qwen", out / "tokenized" / "sft",
                                   pairs=[(r["q"], r["a"]) for r in records], max_seq_length=256)
    train_tiny(qwen_lora_tuning.QWEN, dataset, out / "sft", "--finetuning_type", "full", "--seed", str(SEED),
               steps=300, learning_rate=2e-3)
    metrics = load_grpo_script().cli([
        "--model_name_or_path", str(out / "sft"), "--train_file", str(MATH), "--output_dir", str(out / "grpo"),
        "--reward_funcs", "exact_answer", *TINY_GRPO, "--bf16", "false", "--seed", str(SEED)])
    return {"metrics": metrics, "out": out}


@RUN_TIMEOUT
def test_the_sft_policy_half_knows_the_answers(grpo_run):
    before = grpo_run["metrics"]["before"]
    # Greedy gets some questions right; sampling finds right answers greedy misses: room to sharpen.
    assert 0.2 <= before["pass_at_1"] <= 0.8
    assert before["pass_at_k"] >= before["pass_at_1"] + 0.15
    assert before["kl"] == 0


@RUN_TIMEOUT
def test_grpo_sharpens_the_samples_at_the_cost_of_their_diversity(grpo_run):
    """What held at seeds 0, 1 and 2. Greedy pass@1 and the sampled accuracy rose at seed 0 only, so
    they are not asserted. 24 questions × 8 samples each, the same seed for both policies."""
    before, after = grpo_run["metrics"]["before"], grpo_run["metrics"]["after"]
    # pass@8 falls by at least two questions of the 24 (it fell by 3, 7 and 12)
    assert after["pass_at_k"] <= before["pass_at_k"] - 2 / 24
    # the samples agree more: the gap between "some sample is right" and "a sample is right" narrows
    # by at least 0.2 (it narrowed by 0.32, 0.25 and 0.40, from 0.44-0.46)
    assert after["pass_at_k"] - after["sample_accuracy"] <= before["pass_at_k"] - before["sample_accuracy"] - 0.2
    assert after["mean_reward"] == pytest.approx(after["sample_accuracy"])  # exact_answer alone
    # the policy moved off the SFT model (2.2, 3.1 and 17 nats per greedy reply), in form: replies as long
    assert 0 < after["kl"] < 40
    assert abs(after["mean_length"] - before["mean_length"]) < 2


@RUN_TIMEOUT
def test_grpo_logs_rewards_accuracy_kl_length_and_clip_ratio(grpo_run):
    run_dir = grpo_run["out"] / "grpo"
    log = [json.loads(line) for line in (run_dir / "trainer_log.jsonl").read_text().splitlines()]
    steps = [entry for entry in log if "reward" in entry]
    assert len(steps) == 6  # every 5 of the 30 steps
    assert {"rewards/exact_answer/mean", "accuracy", "completions/mean_length",
            "clip_ratio/region_mean"} <= set(steps[0])
    # exact_answer logs its accuracy, which is its mean reward (its rise is not asserted: see above)
    assert all(step["accuracy"] == pytest.approx(step["rewards/exact_answer/mean"]) for step in steps)
    assert list((run_dir / "runs").rglob("events.out.tfevents.*"))
    config = json.loads((run_dir / "llm_tuning.json").read_text())
    assert config["stage"] == "grpo" and config["reward_funcs"] == ["exact_answer"]
    assert (run_dir / "adapter_config.json").is_file() and "pass@8" in (run_dir / "eval_table.txt").read_text()


@RUN_TIMEOUT
def test_combined_rewards_a_kl_penalty_and_another_loss_variant_run_and_log(grpo_run, tmp_path):
    metrics = load_grpo_script().cli([
        "--model_name_or_path", str(grpo_run["out"] / "sft"), "--train_file", str(MATH),
        "--reward_funcs", "exact_answer", "format", "--reward_weights", "1.0", "0.2",
        "--output_dir", str(tmp_path / "grpo"), "--max_steps", "2", "--logging_steps", "1", "--beta", "0.1",
        "--loss_type", "dr_grpo", "--num_generations", "4", "--per_device_train_batch_size", "16",
        "--learning_rate", "5e-3", "--max_completion_length", "16", "--temperature", "0.7",
        "--gradient_checkpointing", "false", "--eval_samples", "2", "--report_to", "none", "--bf16", "false"])
    log = [json.loads(line) for line in (tmp_path / "grpo" / "trainer_log.jsonl").read_text().splitlines()]
    # --beta 0.1 keeps the reference: the first step's policy is it (the adapter starts as a no-op),
    # the second step's has moved away from it
    kls = [entry["kl"] for entry in log if "reward" in entry]
    assert kls[0] == 0 and kls[1] > 0
    # the logged reward is the weighted sum of the two rewards
    assert log[0]["reward"] == pytest.approx(log[0]["rewards/exact_answer/mean"] + 0.2 * log[0]["rewards/format/mean"])
    assert metrics["after"]["kl"] > 0 and metrics["script"]["eval_samples"] == 2
