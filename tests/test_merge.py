"""merge_lora.py across methods: weight-delta adapters (LoRA, DoRA, AdaLoRA) merge faithfully,
prompt/prefix adapters and whole models are refused with a reason, and --save_quantized saves a
bitsandbytes model. (Plain LoRA merge parity is in the foundation tests.)"""

from __future__ import annotations

import json

import pytest

import merge_lora
from qwen_lora_tuning import QWEN
from tests.tiny_training import save_tokenized_pairs, train_tiny


@pytest.fixture(scope="module")
def qa_data(tiny_qwen2, tmp_path_factory):
    return save_tokenized_pairs(tiny_qwen2, "qwen", tmp_path_factory.mktemp("merge") / "qa")


def merge(capsys, *argv: str) -> float:
    merge_lora.main(merge_lora.parse_args(list(argv)))
    return float(capsys.readouterr().out.split("on the probe:")[1].split()[0])


@pytest.mark.parametrize("flags", [["--use_dora", "true"], ["--finetuning_type", "adalora"]], ids=["dora", "adalora"])
def test_weight_delta_adapters_merge_faithfully(flags, qa_data, tmp_path, capsys):
    train_tiny(QWEN, qa_data, tmp_path / "adapter", *flags, steps=5)
    assert merge(capsys, "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")) < 1e-4
    assert (tmp_path / "merged" / "model.safetensors").is_file()


@pytest.mark.parametrize("method,kind", [("prompt_tuning", "PROMPT_TUNING"), ("prefix_tuning", "PREFIX_TUNING"),
                                         ("p_tuning", "P_TUNING")])
def test_virtual_token_adapters_are_refused(method, kind, qa_data, tmp_path, capsys):
    train_tiny(QWEN, qa_data, tmp_path / "adapter", "--finetuning_type", method, steps=1)
    with pytest.raises(SystemExit) as exit_info:
        merge_lora.main(merge_lora.parse_args(["--adapter", str(tmp_path / "adapter"),
                                               "--output", str(tmp_path / "m")]))
    assert exit_info.value.code == 2
    assert f"is a {kind} adapter: it adds learned virtual tokens" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_fully_fine_tuned_model_is_refused(qa_data, tmp_path, capsys):
    train_tiny(QWEN, qa_data, tmp_path / "full", "--finetuning_type", "full", steps=1)
    with pytest.raises(SystemExit) as exit_info:
        merge_lora.main(merge_lora.parse_args(["--adapter", str(tmp_path / "full"), "--output", str(tmp_path / "m")]))
    assert exit_info.value.code == 2
    assert "is a whole model (freeze or full fine-tuning), not an adapter" in capsys.readouterr().err


def test_save_quantized_writes_a_4bit_model(qa_data, tmp_path, capsys):
    train_tiny(QWEN, qa_data, tmp_path / "adapter", steps=3)
    merge(capsys, "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "q4"), "--save_quantized", "4")
    config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert config["quantization_config"]["load_in_4bit"] is True
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert not (tmp_path / "q4" / "unquantized").exists()
    from llm_tuning.modeling import load_model
    model = load_model(str(tmp_path / "q4"))
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
