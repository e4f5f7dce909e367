"""--rope_scaling / --rope_factor: the RoPE frequencies are the hand-computed ones for each kind, and a
model trained at 64 tokens (with dynamic NTK scaling) runs on a 256-token input through chat.py's loader."""

from __future__ import annotations

import json
import math

import pytest
import torch

import chat
from llm_tuning.modeling import load_model
from qwen_lora_tuning import QWEN
from tests.tiny_training import save_tokenized_pairs, train_tiny

HEAD_DIM, BASE, TRAINED_LEN = 16, 10000.0, 64  # tiny models: hidden 64 / 4 heads


def default_inv_freq(base: float = BASE) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)


@pytest.fixture(scope="module")
def short_model(tiny_model):
    return tiny_model("qwen2", max_positions=TRAINED_LEN)


def test_linear_scaling_divides_every_frequency_by_the_factor(short_model):
    model = load_model(str(short_model), "float32", rope_scaling="linear", rope_factor=4)
    assert torch.allclose(model.model.rotary_emb.inv_freq, default_inv_freq() / 4)


def test_yarn_sets_the_attention_temperature(short_model):
    model = load_model(str(short_model), "float32", rope_scaling="yarn", rope_factor=4)
    assert model.model.rotary_emb.attention_scaling == pytest.approx(0.1 * math.log(4) + 1)


def test_model_trained_at_64_tokens_runs_on_256_with_dynamic_ntk(short_model, tmp_path):
    data = save_tokenized_pairs(short_model, "qwen", tmp_path / "qa", max_seq_length=TRAINED_LEN)
    train_tiny(QWEN, data, tmp_path / "adapter", "--rope_scaling", "dynamic", "--rope_factor", "4", steps=3)
    recorded = json.loads((tmp_path / "adapter" / "llm_tuning.json").read_text())
    assert (recorded["rope_scaling"], recorded["rope_factor"]) == ("dynamic", 4.0)

    model, _, _ = chat.load_chat_model(chat.parse_args(["--adapter", str(tmp_path / "adapter")]))
    rotary = model.base_model.model.model.rotary_emb
    assert torch.allclose(rotary.inv_freq, default_inv_freq())  # within the trained length: unchanged
    input_ids = torch.randint(10, 500, (1, 4 * TRAINED_LEN), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert logits.shape[:2] == (1, 256) and torch.isfinite(logits).all()
    # NTK: the base grows to base * (factor * len / trained_len - (factor - 1)) ** (d / (d - 2))
    stretched = BASE * (4 * 256 / TRAINED_LEN - 3) ** (HEAD_DIM / (HEAD_DIM - 2))
    assert torch.allclose(rotary.inv_freq, default_inv_freq(stretched), rtol=1e-5)


def test_rope_scaling_on_a_model_without_rope_settings_is_a_user_error(tmp_path):
    from llm_tuning.cli import UserError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="works on models with standard RoPE settings"):
        load_model(str(tmp_path), rope_scaling="linear", rope_factor=2)
