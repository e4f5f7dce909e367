"""Eval during training: a recipe run with --generation_eval_file / --choice_eval_file logs the scores."""

from __future__ import annotations

import json

import pytest
from transformers import TrainingArguments

import tokenize_dataset_rows
from llm_tuning.finetune import finetune
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args
from qwen_lora_tuning import QWEN
from tests.inference_fixtures import REPO_ROOT, training_pairs

PAIRS = training_pairs()


def test_scores_are_logged_every_n_steps_and_show_learning(tiny_qwen2, tmp_path):
    tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
        "--model_checkpoint", str(tiny_qwen2), "--input_file", str(REPO_ROOT / "data/simple_math_4op.jsonl"),
        "--max_samples", "8", "--save_name", "math8", "--output_dir", str(tmp_path / "tokenized")]))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"q": q, "a": a}, ensure_ascii=False) + "\n" for q, a in PAIRS), encoding="utf-8")
    choice = tmp_path / "choice.jsonl"
    choice.write_text("".join((REPO_ROOT / "data/eval/choice_eval.jsonl").read_text(encoding="utf-8")
                              .splitlines(keepends=True)[:4]), encoding="utf-8")
    out = tmp_path / "run"
    finetune(QWEN, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments, argv=[
        "--tokenized_dataset", str(tmp_path / "tokenized/math8"), "--output_dir", str(out),
        "--max_steps", "150", "--per_device_train_batch_size", "8", "--learning_rate", "5e-3",
        "--lora_dropout", "0", "--logging_steps", "50", "--save_strategy", "no", "--report_to", "tensorboard",
        "--generation_eval_file", str(qa), "--choice_eval_file", str(choice), "--generation_eval_steps", "10"]))

    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    evals = [log for log in logs if "eval_exact_match" in log]
    assert [log["step"] for log in evals] == list(range(10, 151, 10))
    assert all(0 <= log["eval_choice_accuracy"] <= 1 and "eval_rouge-l" in log for log in evals)
    assert evals[-1]["eval_exact_match"] == 1.0 and evals[-1]["eval_bleu-4"] == pytest.approx(100.0)
    assert evals[0]["eval_exact_match"] < 1.0  # learned during training, not before
    assert (out / "loss.png").stat().st_size > 0
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and any(b"eval/exact_match" in e.read_bytes() for e in events)


def test_a_bad_eval_file_stops_before_training(tiny_qwen2, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "?", "A": "x", "answer": "A"}\n', encoding="utf-8")
    tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
        "--model_checkpoint", str(tiny_qwen2), "--input_file", str(REPO_ROOT / "data/simple_math_4op.jsonl"),
        "--max_samples", "8", "--save_name", "math8", "--output_dir", str(tmp_path / "tokenized")]))
    with pytest.raises(SystemExit) as exit_info:
        finetune(QWEN, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments, argv=[
            "--tokenized_dataset", str(tmp_path / "tokenized/math8"), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "1", "--choice_eval_file", str(bad), "--report_to", "none"]))
    assert exit_info.value.code == 2
    assert f"{bad}:1: options must be keys A, B, C" in capsys.readouterr().err
    assert not (tmp_path / "run" / "trainer_log.jsonl").exists()
