"""What a user meets around a run: a GPU-only flag on a CPU, the loss plot, a reused --output_dir,
a local path that is not there, records whose history would be dropped, a config file that does not parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from llm_tuning.cli import UserError
from llm_tuning.modeling import load_model, load_tokenizer, looks_local
from llm_tuning.records import RecordKeys, load_conversations
from llm_tuning.testing import save_tokenized_pairs, train_tiny
from llm_tuning.run_logs import LOSS_PLOT_FILE, TRAINER_LOG_FILE, LossPlotCallback
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args
from qwen_lora_tuning import QWEN

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE_TYPES = (ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)

bf16_device = torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@pytest.fixture(scope="module")
def dataset(tiny_qwen2, tmp_path_factory) -> Path:
    return save_tokenized_pairs(tiny_qwen2, "qwen", tmp_path_factory.mktemp("data") / "pairs")


def stderr_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- --bf16 without a device for it ----------------------------------------------------------------


@pytest.mark.skipif(bf16_device, reason="this machine trains in bf16: nothing to refuse")
def test_bf16_on_a_machine_without_a_bf16_device_is_one_sentence_saying_what_to_pass(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(*RECIPE_TYPES, argv=["--tokenized_dataset", "x", "--output_dir", str(tmp_path), "--bf16", "true"])
    assert exited.value.code == 2
    line = stderr_line(capsys)
    assert line.startswith("error: --bf16 true needs a GPU") and "drop --bf16" in line and "--use_cpu true" in line
    # what the sentence says to pass works
    args = parse_args(*RECIPE_TYPES, argv=["--tokenized_dataset", "x", "--output_dir", str(tmp_path),
                                           "--bf16", "true", "--use_cpu", "true"])
    assert args[-1].bf16 and args[-1].use_cpu


@pytest.mark.skipif(bf16_device, reason="this machine trains in bf16: nothing to refuse")
@pytest.mark.parametrize("script, flags", [
    ("RLHF/dpo.py", ["--model_name_or_path", "m", "--train_file", "pairs.jsonl"]),
    ("pretrain/continue_pretraining.py", ["--corpus_dir", "corpus", "--max_steps", "1"]),
])
def test_rlhf_and_pretraining_scripts_refuse_bf16_the_same_way(script, flags, run, tmp_path):
    result = run(script, *flags, "--output_dir", str(tmp_path), "--bf16", "true")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: --bf16 true needs a GPU")
    assert "Traceback" not in result.stderr


# --- loss.png ------------------------------------------------------------------------------------


def test_loss_plot_is_drawn_from_eval_loss_when_no_training_loss_was_logged(tmp_path, capsys):
    state = TrainerState(log_history=[{"step": 0, "eval_loss": 6.9}, {"step": 20, "eval_loss": 6.5},
                                      {"step": 40, "eval_loss": 6.2}])
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    LossPlotCallback().on_train_end(args, state, TrainerControl())
    assert (tmp_path / LOSS_PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "note" not in capsys.readouterr().out


def test_a_run_shorter_than_the_logging_interval_says_why_there_is_no_loss_plot(dataset, tiny_qwen2, tmp_path, capsys):
    out = tmp_path / "run"
    train_tiny(QWEN, dataset, out, "--model_name_or_path", str(tiny_qwen2), "--logging_steps", "5", steps=3)
    printed = capsys.readouterr().out
    assert ("note: no loss.png written: training ran 3 step(s) and a loss is logged every 5 (--logging_steps); "
            "pass --logging_steps 1") in printed
    assert not (out / LOSS_PLOT_FILE).exists()


# --- a reused --output_dir ----------------------------------------------------------------------


def earlier_run(out: Path) -> None:
    """What an earlier run leaves: a checkpoint and its log."""
    (out / "checkpoint-5").mkdir(parents=True)
    (out / "checkpoint-5" / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    (out / TRAINER_LOG_FILE).write_text(json.dumps({"step": 5, "loss": 99.0}) + "\n")


def test_an_output_dir_with_an_earlier_runs_checkpoints_is_refused_in_one_sentence(tmp_path, capsys):
    earlier_run(tmp_path)
    with pytest.raises(SystemExit) as exited:
        parse_args(*RECIPE_TYPES, argv=["--tokenized_dataset", "x", "--output_dir", str(tmp_path)])
    assert exited.value.code == 2
    assert stderr_line(capsys) == (
        f"error: {tmp_path} holds checkpoints of an earlier run (checkpoint-5); pass --resume_from_checkpoint "
        f"true to continue it, --overwrite_output_dir true to start over, or another --output_dir")
    # resuming it is what the directory is for
    args = parse_args(*RECIPE_TYPES, argv=["--tokenized_dataset", "x", "--output_dir", str(tmp_path),
                                           "--resume_from_checkpoint", "true"])
    assert args[-1].resume_from_checkpoint == "true" and (tmp_path / "checkpoint-5").is_dir()


def test_overwrite_output_dir_starts_over_and_the_new_runs_log_is_its_own(dataset, tiny_qwen2, tmp_path):
    earlier_run(tmp_path)
    train_tiny(QWEN, dataset, tmp_path, "--model_name_or_path", str(tiny_qwen2), "--overwrite_output_dir", "true",
               steps=2)
    assert not (tmp_path / "checkpoint-5").exists()
    logs = [json.loads(line) for line in (tmp_path / TRAINER_LOG_FILE).read_text().splitlines()]
    assert [log["step"] for log in logs if "loss" in log] == [1, 2]
    # a second run into the same directory (no checkpoints saved) logs afresh too
    train_tiny(QWEN, dataset, tmp_path, "--model_name_or_path", str(tiny_qwen2), steps=3)
    logs = [json.loads(line) for line in (tmp_path / TRAINER_LOG_FILE).read_text().splitlines()]
    assert [log["step"] for log in logs if "loss" in log] == [1, 2, 3]


def test_overwrite_output_dir_works_from_a_yaml_config(tmp_path):
    earlier_run(tmp_path / "out")
    config = tmp_path / "run.yaml"
    config.write_text(f"tokenized_dataset: x\noutput_dir: {tmp_path / 'out'}\noverwrite_output_dir: true\n")
    args = parse_args(*RECIPE_TYPES, argv=[str(config)])
    assert args[-1].output_dir == str(tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoint-5").exists() and not (tmp_path / "out" / TRAINER_LOG_FILE).exists()


# --- a local path that is not there ------------------------------------------------------------------


def test_what_looks_like_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    assert not looks_local("Qwen/Qwen2.5-0.5B-Instruct") and not looks_local("gpt2")
    assert all(looks_local(p) for p in ("./model", "../model", "/abs/model", "~/model", "weights/run", "a/b/c"))


@pytest.mark.parametrize("load", [load_tokenizer, load_model])
def test_a_missing_local_path_fails_at_once_without_asking_the_hub(load, tmp_path):
    with pytest.raises(UserError, match=r"^cannot load a (tokenizer|model) from .*missing: no such local directory "
                                        r"\(a hub id looks like org/name\)$"):
        load(str(tmp_path / "missing"))


def test_a_recipe_given_a_missing_local_model_says_so_in_one_line(run, dataset):
    result = run("qwen_lora_tuning.py", "--tokenized_dataset", str(dataset), "--model_name_or_path", "./no/such/model",
                 "--output_dir", str(dataset.parent / "out"), "--use_cpu", "true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: cannot load a tokenizer from ./no/such/model: no such local directory (a hub id looks like org/name)")


# --- history that would be dropped -----------------------------------------------------------------


def test_records_with_an_unused_history_key_get_a_warning_naming_history_key(tmp_path, capsys):
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"q": "那它的首都是哪里？", "a": "巴黎。", "history": [["法国在哪个洲？", "欧洲。"]]},
        {"q": "What is 2 + 2?", "a": "4"},
    ]), encoding="utf-8")
    conversations = load_conversations(source, RecordKeys())
    assert stderr_line(capsys) == (
        f"warning: 1 of 2 records in {source} have a 'history' key that is not used, so their earlier turns "
        f"are dropped; pass --history_key history to train on them")
    assert len(conversations[0].turns) == 1
    conversations = load_conversations(source, RecordKeys(history="history"))
    assert capsys.readouterr().err == "" and len(conversations[0].turns) == 2


def test_a_config_file_that_does_not_parse_is_one_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: [unclosed\n")
    with pytest.raises(SystemExit) as exited:
        parse_args(*RECIPE_TYPES, argv=[str(config)])
    assert exited.value.code == 2 and stderr_line(capsys).startswith(f"error: {config} is not valid YAML: ")
