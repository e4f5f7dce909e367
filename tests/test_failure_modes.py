"""When things go wrong outside the user's flags: a non-UTF-8 byte, a kill while a checkpoint is
being saved, a full disk while tokenized data or an adapter is written."""

from __future__ import annotations

import errno
import hashlib
import json
import pathlib
from pathlib import Path

import pytest
import zstandard
from transformers import TrainingArguments

import tokenize_dataset_rows
from llm_tuning.cli import UserError
from llm_tuning.finetune import finetune
from llm_tuning.pretrain.shards import read_texts
from llm_tuning.records import read_records
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args
from qwen_lora_tuning import QWEN
from tests.conftest import REPO_ROOT

MATH = REPO_ROOT / "data" / "simple_math_4op.jsonl"


# --- a non-UTF-8 byte is located by line and column -----------------------------------------------

BAD_LINES = ['{"q": "1 + 1", "a": "2"}\n'.encode(), '{"q": "数学 caf'.encode() + b"\xe9" + b'", "a": "x"}\n']
# line 2: `{"q": "数学 caf` is 13 characters, so the bad byte is in column 14


def test_records_name_the_line_and_column_of_the_first_bad_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"".join(BAD_LINES))
    with pytest.raises(UserError) as err:
        read_records(path)
    assert str(err.value) == f"{path}:2:14: not UTF-8 text (byte 0xe9); re-save the file as UTF-8"


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.zst"])
def test_pretraining_text_names_the_line_and_column_of_the_first_bad_byte(tmp_path, name):
    lines = ['{"text": "好的"}\n'.encode()] * 3000 + [b'{"text": "ok \xff"}\n']  # past the first read chunk
    payload = b"".join(lines)
    path = tmp_path / name
    path.write_bytes(zstandard.ZstdCompressor().compress(payload) if name.endswith(".zst") else payload)
    with pytest.raises(UserError) as err:
        list(read_texts(path))
    assert str(err.value) == f"{path}:3001:14: not UTF-8 text (byte 0xff); re-save the file as UTF-8"


# --- a kill while a checkpoint is being saved -------------------------------------------------------

@pytest.fixture(scope="module")
def tokenized(tiny_qwen2, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenized")
    tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
        "--model_checkpoint", str(tiny_qwen2), "--input_file", str(MATH), "--max_samples", "16",
        "--save_name", "math16", "--output_dir", str(out)]))
    return out / "math16"


def recipe_argv(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--tokenized_dataset", str(dataset), "--output_dir", str(output_dir), "--report_to", "none",
            "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--logging_steps", "1",
            "--use_cpu", "true", *extra]


KILL_WHILE_SAVING = """
import os, runpy, sys
from transformers import Trainer

save_rng_state = Trainer._save_rng_state

def killed_at_step_4(self, output_dir):  # model and optimizer are written, trainer_state.json is not yet
    if self.state.global_step == 4:
        os._exit(9)
    return save_rng_state(self, output_dir)

Trainer._save_rng_state = killed_at_step_4
sys.argv = ["qwen_lora_tuning.py", *sys.argv[1:]]
runpy.run_path("qwen_lora_tuning.py", run_name="__main__")
"""


def logged_steps(output_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "loss" in row]


def test_a_kill_inside_a_checkpoint_save_resumes_from_the_last_complete_one(tokenized, tmp_path, run):
    out = tmp_path / "run"
    flags = ["--max_steps", "6", "--save_steps", "2"]
    killed = run("-c", KILL_WHILE_SAVING, *recipe_argv(tokenized, out, *flags))
    assert killed.returncode == 9, killed.stderr
    assert (out / "checkpoint-4" / "adapter_model.safetensors").is_file()  # half a checkpoint
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()

    resumed = run("qwen_lora_tuning.py", *recipe_argv(tokenized, out, *flags, "--resume_from_checkpoint", "true"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipping {out / 'checkpoint-4'}: it is incomplete" in resumed.stderr
    assert logged_steps(out) == [1, 2, 3, 4, 3, 4, 5, 6]  # the killed run's 1-4, then 3-6 from checkpoint-2
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert (out / "adapter_model.safetensors").is_file()


def test_an_explicitly_named_incomplete_checkpoint_is_refused(tokenized, tmp_path, capsys):
    incomplete = tmp_path / "checkpoint-9"
    incomplete.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        finetune(QWEN, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments,
                                   argv=recipe_argv(tokenized, tmp_path / "out", "--max_steps", "1",
                                                    "--resume_from_checkpoint", str(incomplete))))
    assert exit_info.value.code == 2
    assert "the checkpoint is incomplete" in capsys.readouterr().err


# --- a full disk -------------------------------------------------------------------------------------

def fail_writing(monkeypatch, file_name: str) -> None:
    """Writing `file_name` fails as on a full disk (everything written before it succeeded)."""
    write_text = pathlib.Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == file_name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_while_tokenizing_keeps_the_previous_dataset(tokenized, tiny_qwen2, monkeypatch, capsys):
    before = snapshot(tokenized)
    fail_writing(monkeypatch, "metadata.json")
    with pytest.raises(SystemExit) as exit_info:
        tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
            "--model_checkpoint", str(tiny_qwen2), "--input_file", str(MATH), "--max_samples", "8",
            "--save_name", tokenized.name, "--output_dir", str(tokenized.parent)]))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[-1] == (f"error: the disk is full (no space left on device) while writing {tokenized}; nothing was "
                       "changed there, so free some space and run again")
    assert snapshot(tokenized) == before
    assert [p.name for p in tokenized.parent.iterdir()] == [tokenized.name]  # no temporary folder left


def test_a_full_disk_while_saving_the_adapter_keeps_the_previous_one(tokenized, tmp_path, monkeypatch, capsys):
    out = tmp_path / "adapter"

    def train(*flags: str) -> None:
        finetune(QWEN, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments,
                                   argv=recipe_argv(tokenized, out, "--save_strategy", "no", *flags)))

    train("--max_steps", "2")
    before = snapshot(out)
    fail_writing(monkeypatch, "llm_tuning.json")  # written after the adapter weights
    with pytest.raises(SystemExit) as exit_info:
        train("--max_steps", "3", "--seed", "7")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: the disk is full (no space left on device) while writing {out}; nothing was changed there")
    after = snapshot(out)
    kept = {name for name in before if name not in {"trainer_log.jsonl", "loss.png"}}  # logs of the new run append
    assert {name: after[name] for name in kept} == {name: before[name] for name in kept}
    assert not (out / ".saving").exists()
