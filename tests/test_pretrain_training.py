"""continue_pretraining.py on a tiny Qwen2: held-out loss falls; a resumed run continues the stream."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from transformers import AutoTokenizer, TrainingArguments

from llm_tuning.pretrain.blocks import STREAM_STATE_FILE, PretrainArguments, heldout_blocks
from llm_tuning.pretrain.shards import write_shards
from llm_tuning.training import FinetuneArguments, ModelArguments, parse_args

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("continue_pretraining",
                                                  REPO_ROOT / "pretrain" / "continue_pretraining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pt") / "corpus"
    write_shards(sorted((REPO_ROOT / "pretrain" / "data").glob("*.jsonl")), out, lines_per_shard=100, heldout_lines=20)
    return out


def train(script, model: Path, corpus: Path, output_dir: Path, *flags: str) -> None:
    argv = ["--model_name_or_path", str(model), "--corpus_dir", str(corpus), "--output_dir", str(output_dir),
            "--block_size", "32", "--per_device_train_batch_size", "4", "--seed", "3", "--report_to", "none",
            "--disable_tqdm", "true", *flags]
    script.main(*parse_args(ModelArguments, PretrainArguments, FinetuneArguments, TrainingArguments, argv=argv))


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]


def test_heldout_loss_falls_and_run_artefacts(script, tiny_qwen2, corpus, tmp_path):
    out = tmp_path / "full"
    train(script, tiny_qwen2, corpus, out, "--finetuning_type", "full", "--max_steps", "40",
          "--learning_rate", "3e-3", "--eval_on_start", "true", "--eval_strategy", "steps", "--eval_steps", "20",
          "--logging_steps", "10", "--save_steps", "20", "--save_total_limit", "1", "--report_to", "tensorboard",
          "--mixture_weights", "zh_medical=2", "--max_eval_blocks", "12")
    evals = [log for log in read_log(out) if "eval_loss" in log]
    assert [log["step"] for log in evals][:3] == [0, 20, 40]
    # random init starts near ln(vocab) ≈ 7.6; 40 steps of the templated corpus must cut it by > 1.5 nats
    assert evals[0]["eval_loss"] > 6.5 and evals[2]["eval_loss"] < evals[0]["eval_loss"] - 1.5
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]
    # the 12 held-out blocks cover every source in proportion (not the first source's blocks only),
    # and the overall loss is the block-weighted mean of the per-source losses
    counts = heldout_blocks(corpus, AutoTokenizer.from_pretrained(tiny_qwen2), 32, 12).counts()
    assert sum(counts.values()) == 12 and min(counts.values()) >= 2
    for log in evals:
        assert log["eval_perplexity"] == pytest.approx(math.exp(log["eval_loss"]), rel=1e-6)
        per_source = sum(n * math.log(log[f"eval_perplexity_{source}"]) for source, n in counts.items()) / 12
        assert per_source == pytest.approx(log["eval_loss"], rel=1e-4)
    # save_total_limit 1: only the last checkpoint is kept, with the stream position it trained to
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-40"]
    saved = json.loads((out / "checkpoint-40" / STREAM_STATE_FILE).read_text())
    assert saved["blocks"] == 40 * 4
    assert sum(saved["source_tokens"]) == 40 * 4 * 32  # every trained token counted to its source
    assert (out / "loss.png").stat().st_size > 1000
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    assert (out / "model.safetensors").is_file()


def test_resume_continues_the_stream_without_replaying_it(script, tiny_qwen2, corpus, tmp_path, monkeypatch):
    seen: list[list[list[int]]] = []  # every batch the DataLoader produced, in order

    def recording_collate(features):
        batch = real_collate(features)
        seen.append(batch["input_ids"].tolist())
        return batch

    real_collate = script.collate_blocks
    monkeypatch.setattr(script, "collate_blocks", recording_collate)
    out = tmp_path / "lora"
    common = ("--max_steps", "10", "--save_steps", "5", "--logging_steps", "5", "--learning_rate", "5e-3",
              "--lora_dropout", "0", "--eval_strategy", "no")
    train(script, tiny_qwen2, corpus, out, *common)
    uninterrupted = seen[:10]
    tokens_per_source = json.loads((out / "checkpoint-10" / STREAM_STATE_FILE).read_text())["source_tokens"]
    losses = {log["step"]: log["loss"] for log in read_log(out) if "loss" in log}

    seen.clear()
    train(script, tiny_qwen2, corpus, out, *common, "--resume_from_checkpoint", str(out / "checkpoint-5"))
    # the first batch read after resuming is batch 6: nothing was re-read to skip batches 1-5
    assert seen[0] == uninterrupted[5]
    assert seen[:5] == uninterrupted[5:10]
    assert all(batch not in uninterrupted[:5] for batch in seen[:5])
    # the token counts continue from the checkpoint's: the same totals as the uninterrupted run
    assert json.loads((out / "checkpoint-10" / STREAM_STATE_FILE).read_text())["source_tokens"] == tokens_per_source
    resumed = [log for log in read_log(out) if "loss" in log][-1]
    assert resumed["step"] == 10 and resumed["loss"] == pytest.approx(losses[10], rel=1e-4)


def test_user_mistakes_exit_2_with_one_sentence(script, tiny_qwen2, corpus, tmp_path, capsys):
    cases = [
        ((), "pass --max_steps"),
        (("--max_steps", "5", "--mixture_weights", "fr=1"), "unknown source 'fr'"),
        (("--max_steps", "5", "--resume_from_checkpoint", str(tmp_path / "nope")), "no such checkpoint directory"),
        (("--max_steps", "5", "--dataloader_num_workers", "2"), "drop --dataloader_num_workers"),
        (("--max_steps", "5", "--mixture_by", "lines"), "--mixture_by must be texts or tokens"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            train(script, tiny_qwen2, corpus, tmp_path / "err", *flags)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_mixture_by_tokens_prints_the_realised_token_shares(script, tiny_qwen2, corpus, tmp_path, capsys):
    train(script, tiny_qwen2, corpus, tmp_path / "tokens", "--max_steps", "3", "--mixture_by", "tokens",
          "--lora_dropout", "0", "--eval_strategy", "no", "--save_strategy", "no")
    printed = capsys.readouterr().out
    assert "texts drawn with probability en_general" in printed
    shares = printed.split("token shares of the 384 tokens trained on: ")[1].splitlines()[0]  # 3 steps × 4 × 32
    assert [item.split()[0] for item in shares.split(", ")] == ["en_general", "zh_general", "zh_medical"]
    assert sum(float(item.split()[1].rstrip("%")) for item in shares.split(", ")) == pytest.approx(100, abs=0.02)


def test_rope_scaling_reaches_the_trained_model(script, tiny_qwen2, corpus, tmp_path):
    out = tmp_path / "rope"
    train(script, tiny_qwen2, corpus, out, "--finetuning_type", "full", "--max_steps", "1", "--save_strategy", "no",
          "--rope_scaling", "linear", "--rope_factor", "4")
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    assert (rope["rope_type"], rope["factor"]) == ("linear", 4.0)
