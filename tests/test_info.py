"""llm_tuning.info: counts equal the real model's, LoRA counts equal peft's, memory equals the
documented formula computed by hand, and a bad model path is one sentence with exit code 2."""

from __future__ import annotations

import pytest

from llm_tuning import info
from llm_tuning.modeling import load_model
from qwen_lora_tuning import QWEN
from tests.tiny_training import save_tokenized_pairs, train_tiny


def test_counts_match_the_loaded_model_and_peft(tiny_qwen2):
    from peft import LoraConfig, get_peft_model

    meta = info.build_on_meta(str(tiny_qwen2))
    assert all(p.device.type == "meta" for p in meta.parameters())  # no weights were read
    real = load_model(str(tiny_qwen2), "float32")
    assert info.count_params(meta) == sum(p.numel() for p in real.parameters())
    peft_model = get_peft_model(real, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    peft_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert info.lora_params(meta, 4, "q_proj,down_proj") == peft_trainable
    # by hand: q_proj 64->64 and down_proj 128->64 in each of 2 layers, r=4
    assert peft_trainable == 2 * 4 * ((64 + 64) + (128 + 64))


def test_memory_estimate_is_the_documented_formula(tiny_qwen2):
    shape = info.model_shape(info.build_on_meta(str(tiny_qwen2)))
    assert (shape.hidden_size, shape.num_layers, shape.num_heads) == (64, 2, 4)
    vocab = shape.vocab_size
    # batch 2 x 64 tokens: activations 2 layers * 2*64*(34*64 + 5*4*64) + logits 8*2*64*vocab
    activations = 2 * 2 * 64 * (34 * 64 + 5 * 4 * 64) + 8 * 2 * 64 * vocab
    gib = info.memory_estimate(174_528, 16_384, shape, batch_size=2, seq_len=64)
    assert gib["full"] * info.GIB == pytest.approx(16 * 174_528 + activations)
    assert gib["lora"] * info.GIB == pytest.approx(2 * 174_528 + 16 * 16_384 + activations)
    assert gib["qlora"] * info.GIB == pytest.approx(0.5 * 174_528 + 16 * 16_384 + activations)
    checkpointed = info.memory_estimate(174_528, 16_384, shape, 2, 64, gradient_checkpointing=True)
    assert checkpointed["full"] * info.GIB == pytest.approx(16 * 174_528 + 2 * 2 * 2 * 64 * 64 + 8 * 2 * 64 * vocab)


def test_cli_reports_model_methods_memory_and_adapter(tiny_qwen2, tmp_path, capsys):
    data = save_tokenized_pairs(tiny_qwen2, "qwen", tmp_path / "qa")
    total = sum(p.numel() for p in load_model(str(tiny_qwen2), "float32").parameters())
    train_tiny(QWEN, data, tmp_path / "adapter", "--lora_target", "q_proj,v_proj", steps=1)
    info.main(info.parse_args([str(tiny_qwen2), "--adapter", str(tmp_path / "adapter"), "--batch_size", "2"]))
    out = capsys.readouterr().out
    assert "Qwen2ForCausalLM (model_type qwen2), 2 layers, hidden 64" in out
    assert f"parameters: {total:,}" in out
    assert "lora / qlora (r=8, all-linear)                         16,384" in out
    # 2 layers * r 8 * (q_proj 64 -> 64, v_proj 64 -> 32: 2 KV heads of 16)
    assert "LORA (r=8, targets q_proj, v_proj), 3,584 parameters" in out


def test_a_missing_model_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        info.main(info.parse_args([str(tmp_path / "no-model")]))
    assert exit_info.value.code == 2
    assert "cannot read the model config of" in capsys.readouterr().err
