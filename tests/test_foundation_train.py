"""Step 2 and after: the shipped scripts train a model that learned, resume, chat and merge."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

import merge_lora
from llm_tuning.data import load_tokenized
from llm_tuning.finetune import finetune
from llm_tuning.modeling import load_adapters, load_model, load_tokenizer
from llm_tuning.templates import encode_prompt, get_template
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args
from qwen_lora_tuning import QWEN

REPO = Path(__file__).resolve().parent.parent
MATH = REPO / "data" / "simple_math_4op.jsonl"
PAIRS = [json.loads(line) for line in MATH.read_text(encoding="utf-8").splitlines()[:8]]


@pytest.fixture(scope="module")
def trained(tiny_qwen2, tmp_path_factory, run):
    """tokenize.sh + train.sh as shipped, on the first 8 math rows, through environment variables."""
    work = tmp_path_factory.mktemp("workflow")
    env = {"MODEL": str(tiny_qwen2), "MAX_SAMPLES": "8", "SAVE_NAME": "math8"}
    tokenized = run("tokenize.sh", "--output_dir", work / "tokenized", env=env)
    assert tokenized.returncode == 0, tokenized.stderr
    env = {"DATASET": str(work / "tokenized" / "math8"), "OUTPUT_DIR": str(work / "adapter"),
           "MAX_STEPS": "150", "LEARNING_RATE": "5e-3", "LOGGING_STEPS": "10", "SAVE_STEPS": "1000"}
    trained = run("train.sh", "--lora_dropout", "0", env=env)
    assert trained.returncode == 0, trained.stderr
    return work


def test_train_sh_saves_a_safetensors_adapter_with_logs(trained):
    adapter = trained / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "adapter_model.bin").exists()  # weights as safetensors only
    assert (adapter / "tokenizer.json").is_file() and (adapter / "loss.png").stat().st_size > 1000
    assert list((adapter / "runs").rglob("events.out.tfevents.*")), "tensorboard logs are missing"
    run_config = json.loads((adapter / "llm_tuning.json").read_text())
    assert run_config["template"] == "native"  # the tiny model's tokenizer carries a chat template
    losses = [json.loads(line)["loss"] for line in (adapter / "trainer_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 15 and losses[-1] < losses[0]


def test_chat_reproduces_all_eight_trained_answers_and_stops(trained, run):
    queries = [arg for pair in PAIRS for arg in ("--query", pair["q"])]
    result = run("chat.py", "--adapter", trained / "adapter", "--max_new_tokens", "32", *queries)
    assert result.returncode == 0, result.stderr
    replies = re.findall(r"^Assistant: (.*)$", result.stdout, flags=re.M)
    # Exact equality also shows generation stopped at <|im_end|> rather than running to 32 tokens.
    assert replies == [pair["a"] for pair in PAIRS]


@pytest.fixture(scope="module")
def merged(trained):
    """merge_lora.py on the trained adapter: (merged model dir, what the script printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        merge_lora.main(merge_lora.parse_args(["--adapter", str(trained / "adapter"),
                                               "--output", str(trained / "merged")]))
    return trained / "merged", out.getvalue()


def test_merged_model_logits_equal_the_adapter_logits(trained, merged, tiny_qwen2):
    merged_dir, printed = merged
    reported = float(re.search(r"max \|logit difference\| adapter vs merged on the probe: (\S+)", printed).group(1))
    assert reported < 1e-4

    tokenizer = load_tokenizer(str(merged_dir))
    ids = torch.tensor([encode_prompt(tokenizer, get_template("qwen"), PAIRS[3]["q"]) + [17, 23, 42]])
    with torch.no_grad():
        adapter_logits = load_adapters(load_model(str(tiny_qwen2)), [str(trained / "adapter")])(input_ids=ids).logits
        merged_logits = load_model(str(merged_dir))(input_ids=ids).logits
    assert (adapter_logits - merged_logits).abs().max().item() < 1e-4
    assert json.loads((merged_dir / "llm_tuning.json").read_text())["template"] == "native"


def test_chat_with_the_merged_model_needs_no_adapter(merged, run):
    result = run("chat.py", "--base", merged[0], "--query", PAIRS[0]["q"])
    assert result.returncode == 0, result.stderr
    assert f"Assistant: {PAIRS[0]['a']}" in result.stdout.splitlines()


def test_merge_refuses_a_non_empty_output(trained, capsys):
    occupied = trained / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        merge_lora.main(merge_lora.parse_args(["--adapter", str(trained / "adapter"), "--output", str(occupied)]))
    assert exit_info.value.code == 2 and "exists and is not empty" in capsys.readouterr().err


# --- in-process recipe runs ------------------------------------------------------------------------

def recipe(dataset: Path, output_dir: Path, *extra: str) -> None:
    finetune(QWEN, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments, argv=[
        "--tokenized_dataset", str(dataset), "--output_dir", str(output_dir), "--report_to", "none",
        "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--logging_steps", "1", *extra]))


def logged_steps(output_dir: Path) -> list[int]:
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


def test_resume_continues_from_the_checkpoint_not_from_zero(trained, tmp_path):
    dataset = trained / "tokenized" / "math8"
    recipe(dataset, tmp_path, "--max_steps", "2", "--save_steps", "2")  # stopped after its first checkpoint
    assert (tmp_path / "checkpoint-2").is_dir() and logged_steps(tmp_path) == [1, 2]
    recipe(dataset, tmp_path, "--max_steps", "4", "--save_steps", "2", "--resume_from_checkpoint", "true")
    assert logged_steps(tmp_path) == [1, 2, 3, 4]  # a restart from 0 would log 1, 2 again
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_resume_without_a_checkpoint_is_a_clear_error(trained, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe(trained / "tokenized" / "math8", tmp_path, "--max_steps", "1", "--resume_from_checkpoint", "true")
    assert exit_info.value.code == 2 and "has no checkpoint-* directory" in capsys.readouterr().err


def test_data_from_another_tokenizer_is_refused(trained, tiny_model, tmp_path, capsys):
    other = tiny_model("qwen2", vocab_size=600)
    with pytest.raises(SystemExit) as exit_info:
        recipe(trained / "tokenized" / "math8", tmp_path, "--max_steps", "1", "--model_name_or_path", str(other))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "was tokenized with" in err and "tokenize the data again with --model_checkpoint" in err


def test_a_wrong_lora_target_lists_the_real_linear_layers(trained, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe(trained / "tokenized" / "math8", tmp_path, "--max_steps", "1", "--lora_target", "q_proj,W_pack")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "W_pack match no linear layer" in err and "q_proj" in err and "gate_proj" in err


def test_a_missing_dataset_says_how_to_make_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe(tmp_path / "nothing", tmp_path / "out", "--max_steps", "1")
    assert exit_info.value.code == 2 and "make one with tokenize_dataset_rows.py" in capsys.readouterr().err


def test_the_dataset_default_base_model_is_the_tokenizer_it_was_made_with(trained, tiny_qwen2):
    _, metadata = load_tokenized(trained / "tokenized" / "math8")
    base = json.loads((trained / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert metadata["tokenizer"] == base == str(tiny_qwen2)
