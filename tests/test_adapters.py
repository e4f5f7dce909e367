"""Several adapters at once: a weighted mix is exactly the weighted sum of their weight updates,
its logits lie between its parts' as weighted, and each part can be switched back on."""

from __future__ import annotations

import pytest
import torch

import chat
from llm_tuning.modeling import load_adapters, load_model
from qwen_lora_tuning import QWEN
from tests.tiny_training import save_tokenized_pairs, train_tiny


@pytest.fixture(scope="module")
def two_adapters(tiny_qwen2, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    data = save_tokenized_pairs(tiny_qwen2, "qwen", root / "qa")
    # Different ranks and seeds: two genuinely different updates of the same layers.
    train_tiny(QWEN, data, root / "a", "--lora_rank", "8", "--lora_target", "down_proj", "--seed", "1", steps=10)
    train_tiny(QWEN, data, root / "b", "--lora_rank", "4", "--lora_target", "down_proj", "--seed", "2", steps=10)
    return root / "a", root / "b"


@torch.no_grad()
def logits_with(base, adapters, weights=None) -> torch.Tensor:
    model = load_adapters(load_model(str(base), "float32"), [str(a) for a in adapters], weights)
    return model(input_ids=torch.tensor([[5, 17, 42, 99, 7, 300]])).logits[0]


def delta(model, adapter: str) -> torch.Tensor:
    """The update adapter `adapter` adds to layer 1's down_proj: scaling * B @ A."""
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    return layer.scaling[adapter] * layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight


def test_mixed_update_is_the_weighted_sum_of_the_parts(tiny_qwen2, two_adapters):
    model = load_adapters(load_model(str(tiny_qwen2), "float32"), [str(p) for p in two_adapters], [0.7, 0.3])
    expected = 0.7 * delta(model, "adapter0") + 0.3 * delta(model, "adapter1")
    assert torch.allclose(delta(model, "mixed"), expected, atol=1e-6)
    assert model.active_adapter == "mixed"


def test_mixed_logits_lie_between_the_parts_as_weighted(tiny_qwen2, two_adapters):
    a = logits_with(tiny_qwen2, two_adapters[:1])
    b = logits_with(tiny_qwen2, two_adapters[1:])
    mixed = logits_with(tiny_qwen2, two_adapters, [0.7, 0.3])
    assert (a - b).abs().max() > 1e-3  # the parts really differ
    # Logits are not exactly linear in the update (norms, activations), but close for LoRA-sized
    # ones: the mix sits near 0.7·a + 0.3·b, much nearer it than the mirrored 0.3·a + 0.7·b…
    as_weighted, mirrored = 0.7 * a + 0.3 * b, 0.3 * a + 0.7 * b
    assert (mixed - as_weighted).abs().max() < 0.15 * (a - b).abs().max()
    assert (mixed - as_weighted).norm() < 0.5 * (mixed - mirrored).norm()
    # …and nearer the 0.7 part than the 0.3 one.
    assert (mixed - a).norm() < (mixed - b).norm()


def test_switching_to_one_adapter_gives_that_adapters_logits(tiny_qwen2, two_adapters):
    model = load_adapters(load_model(str(tiny_qwen2), "float32"), [str(p) for p in two_adapters], [0.5, 0.5])
    model.set_adapter("adapter1")
    with torch.no_grad():
        switched = model(input_ids=torch.tensor([[5, 17, 42, 99, 7, 300]])).logits[0]
    assert torch.allclose(switched, logits_with(tiny_qwen2, two_adapters[1:]), atol=1e-5)


def test_chat_flags_mix_adapters_and_refuse_a_wrong_weight_count(two_adapters, capsys):
    args = chat.parse_args(["--adapter", str(two_adapters[0]), "--adapter", str(two_adapters[1]),
                            "--adapter_weights", "0.7,0.3"])
    model, _, template = chat.load_chat_model(args)
    assert model.active_adapter == "mixed" and template.name == "qwen"
    bad = chat.parse_args(["--adapter", str(two_adapters[0]), "--adapter", str(two_adapters[1]),
                           "--adapter_weights", "1", "--query", "hi"])
    with pytest.raises(SystemExit) as exit_info:
        chat.main(bad)
    assert exit_info.value.code == 2
    assert "got 1 adapter weights for 2 adapters" in capsys.readouterr().err
