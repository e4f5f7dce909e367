"""eval.py and llm_tuning/evaluation.py on a tiny adapter that learned known answers."""

from __future__ import annotations

import json
import math

import pytest

import eval as eval_script
from llm_tuning.evaluation import choice_query, load_choice_questions, load_eval_conversations
from tests.inference_fixtures import (
    REASONING_EXCHANGES,
    REPO_ROOT,
    train_tiny_adapter,
    train_tool_adapter,
    training_pairs,
)

PAIRS = training_pairs()
CHOICE_FILE = REPO_ROOT / "data/eval/choice_eval.jsonl"
QA_FILE = REPO_ROOT / "data/eval/qa_eval.jsonl"


@pytest.fixture(scope="module")
def adapter(tiny_qwen2, tmp_path_factory):
    return train_tiny_adapter(tiny_qwen2, tmp_path_factory.mktemp("adapter"), PAIRS)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "trained_qa.jsonl"
    path.write_text("".join(json.dumps({"q": q, "a": a}, ensure_ascii=False) + "\n" for q, a in PAIRS),
                    encoding="utf-8")
    return path


def evaluate(*argv):
    return eval_script.main(eval_script.parse_args([*map(str, argv), "--progress", "false"]))


def test_shipped_eval_sets_are_valid_and_bilingual():
    questions = load_choice_questions(CHOICE_FILE)
    conversations = load_eval_conversations(QA_FILE)
    assert len(questions) == 16 and len(conversations) == 16
    assert {q.answer for q in questions} == set("ABCD")
    assert any("答案：" in choice_query(q) for q in questions) and any("Answer:" in choice_query(q) for q in questions)
    assert any(len(c.turns) > 1 for c in conversations)


def test_generate_scores_a_learned_adapter_perfectly_and_writes_predictions(adapter, qa_file, tmp_path, tiny_qwen2):
    output = tmp_path / "predictions.jsonl"
    metrics = evaluate("generate", "--adapter", adapter, "--data", qa_file, "--output", output, "--batch_size", 3)
    assert metrics["samples"] == len(PAIRS)
    assert metrics["exact_match"] == 1.0
    assert metrics["rouge-1"] == metrics["rouge-l"] == metrics["bleu-4"] == pytest.approx(100.0)
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [(r["q"], r["reference"], r["prediction"]) for r in rows] == [(q, a, a) for q, a in PAIRS]
    assert json.loads((tmp_path / "predictions.jsonl.metrics.json").read_text())["exact_match"] == 1.0
    base = evaluate("generate", "--base", tiny_qwen2, "--template", "qwen", "--data", qa_file,
                    "--output", tmp_path / "base.jsonl", "--max_new_tokens", 16)
    assert base["exact_match"] == 0.0 and base["rouge-1"] < 50


def test_perplexity_drops_after_training_and_matches_the_rows(adapter, qa_file, tmp_path, tiny_qwen2):
    tuned = evaluate("perplexity", "--adapter", adapter, "--data", qa_file, "--output", tmp_path / "ppl.jsonl")
    base = evaluate("perplexity", "--base", tiny_qwen2, "--template", "qwen", "--data", qa_file,
                    "--output", tmp_path / "base.jsonl")
    assert tuned["perplexity"] < base["perplexity"] / 2
    rows = [json.loads(line) for line in (tmp_path / "ppl.jsonl").read_text().splitlines()]
    expected = math.exp(-sum(r["log_prob"] for r in rows) / sum(r["tokens"] for r in rows))
    assert tuned["perplexity"] == pytest.approx(expected)
    assert tuned["tokens"] == sum(r["tokens"] for r in rows)


def test_choice_accuracy_of_a_model_trained_on_the_letters(tiny_qwen2, tmp_path_factory, tmp_path):
    questions = load_choice_questions(CHOICE_FILE)[:8]
    # Full fine-tuning: the questions differ only mid-prompt, which a tiny model under LoRA
    # learns for some random inits only.
    letters = train_tiny_adapter(tiny_qwen2, tmp_path_factory.mktemp("letters"),
                                 [(choice_query(q), q.answer) for q in questions], steps=100, lora=False, lr=1e-3)
    subset = tmp_path / "choice.jsonl"
    subset.write_text("".join(line + "\n" for line in CHOICE_FILE.read_text(encoding="utf-8").splitlines()[:8]),
                      encoding="utf-8")
    tuned = evaluate("choice", "--base", letters, "--data", subset, "--output", tmp_path / "c.jsonl")
    assert tuned["choice_accuracy"] == 1.0
    base = evaluate("choice", "--base", tiny_qwen2, "--template", "qwen", "--data", subset,
                    "--output", tmp_path / "base.jsonl")
    assert base["choice_accuracy"] < 1.0
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert all(r["prediction"] == "ABCD"[r["log_probs"].index(max(r["log_probs"]))] for r in rows)


def test_reward_accuracy_is_the_share_of_pairs_scored_right(tiny_qwen2, tmp_path):
    metrics = evaluate("reward", "--reward_model", tiny_qwen2, "--template", "qwen",
                       "--data", REPO_ROOT / "RLHF/data/preference_eval.jsonl", "--output", tmp_path / "r.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert metrics["samples"] == len(rows) > 0
    assert metrics["reward_accuracy"] == sum(r["chosen_score"] > r["rejected_score"] for r in rows) / len(rows)


@pytest.fixture(scope="module")
def reward_model(tiny_qwen2, tmp_path_factory):
    """The tiny model with a fixed (seeded) score head, saved as a merged reward model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("reward_model")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_qwen2, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_qwen2).save_pretrained(out)
    return out


def reward_rows(tmp_path, name, *flags):
    out = tmp_path / f"{name}.jsonl"
    evaluate("reward", "--template", "qwen", "--data", REPO_ROOT / "RLHF/data/preference_eval.jsonl",
             "--output", out, *flags)
    return [(r["chosen_score"], r["rejected_score"]) for r in map(json.loads, out.read_text().splitlines())]


def test_reward_uses_the_model_flags(reward_model, tmp_path, capsys):
    scores = reward_rows(tmp_path, "rm", "--reward_model", reward_model, "--dtype", "float32")
    # --base: the same model
    assert reward_rows(tmp_path, "base", "--base", reward_model, "--dtype", "float32") == scores
    half = reward_rows(tmp_path, "bf16", "--reward_model", reward_model, "--dtype", "bfloat16")
    assert half != scores and max(abs(a - b) for row, ref in zip(half, scores) for a, b in zip(row, ref)) < 0.5
    stretched = reward_rows(tmp_path, "rope", "--reward_model", reward_model, "--dtype", "float32",
                            "--rope_scaling", "linear", "--rope_factor", "4")
    assert stretched != scores  # positions divided by 4 change every score
    with pytest.raises(SystemExit) as exit_info:
        reward_rows(tmp_path, "both", "--reward_model", reward_model, "--adapter", reward_model)
    assert exit_info.value.code == 2 and "pass the reward model once" in capsys.readouterr().err


def test_bad_eval_files_say_where_and_exit_2(tmp_path, adapter, capsys):
    bad = tmp_path / "bad_choice.jsonl"
    bad.write_text('{"question": "1 + 1 = ?", "A": "2", "B": "3", "answer": "E"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        evaluate("choice", "--adapter", adapter, "--data", bad)
    assert exit_info.value.code == 2
    assert f"error: {bad}:1: 'answer' must be one of A, B, got 'E'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        evaluate("reward", "--data", REPO_ROOT / "RLHF/data/preference_eval.jsonl")
    assert exit_info.value.code == 2
    assert "--reward_model" in capsys.readouterr().err


def test_generate_scores_the_answer_without_its_reasoning(tiny_model, tmp_path_factory, tmp_path):
    adapter = train_tool_adapter(tiny_model("qwen3"), tmp_path_factory.mktemp("tools"))
    data = tmp_path / "reasoning.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a, "reasoning_content": r}]}) + "\n"
        for q, r, a in REASONING_EXCHANGES), encoding="utf-8")
    output = tmp_path / "predictions.jsonl"
    metrics = evaluate("generate", "--adapter", adapter, "--enable_thinking", "true", "--data", data,
                       "--output", output, "--max_new_tokens", 40)
    assert metrics["exact_match"] == 1.0 and metrics["samples"] == len(REASONING_EXCHANGES)
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    # the model thought before answering; the reasoning is kept apart and the bare answer is scored
    assert [(r["reference"], r["prediction"], r["reasoning"]) for r in rows] == [
        (a, a, r) for _, r, a in REASONING_EXCHANGES]
