"""Every --finetuning_type trains: the loss falls, and exactly the method's parameters change.

Runs the shared flow (`build_trainer`, what every recipe calls) in-process on a tiny Qwen2 with
the Qwen recipe's family, a few steps per method.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainingArguments

from llm_tuning.finetune import build_trainer, finetune
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args
from qwen_lora_tuning import QWEN
from tests.tiny_training import save_tokenized_pairs


@pytest.fixture(scope="module")
def qa_data(tiny_qwen2, tmp_path_factory):
    return save_tokenized_pairs(tiny_qwen2, "qwen", tmp_path_factory.mktemp("methods") / "qa")


def arguments(data, output_dir, *extra: str, steps: int = 20, lr: str = "5e-3"):
    return parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments, argv=[
        "--tokenized_dataset", str(data), "--output_dir", str(output_dir), "--lora_dropout", "0",
        "--learning_rate", lr, "--max_steps", str(steps), "--per_device_train_batch_size", "8",
        "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true",
        "--disable_tqdm", "true", *extra])


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# method flags -> a predicate every trainable parameter name must satisfy
METHODS = {
    "lora": ([], lambda n: "lora_A" in n or "lora_B" in n),
    "dora": (["--use_dora", "true"], lambda n: "lora_" in n),
    "qlora": (["--finetuning_type", "qlora"], lambda n: "lora_A" in n or "lora_B" in n),
    "qlora-8bit": (["--finetuning_type", "qlora", "--quantization_bit", "8"], lambda n: "lora_A" in n or "lora_B" in n),
    "adalora": (["--finetuning_type", "adalora"], lambda n: "lora_" in n),
    "prompt_tuning": (["--finetuning_type", "prompt_tuning", "--num_virtual_tokens", "8"],
                      lambda n: n.startswith("prompt_encoder.")),
    "prefix_tuning": (["--finetuning_type", "prefix_tuning", "--num_virtual_tokens", "8"],
                      lambda n: n.startswith("prompt_encoder.")),
    "p_tuning": (["--finetuning_type", "p_tuning", "--num_virtual_tokens", "8"],
                 lambda n: n.startswith("prompt_encoder.")),
    "freeze": (["--finetuning_type", "freeze", "--freeze_trainable_layers", "1"],
               lambda n: n.startswith("model.layers.1.")),
    "full": (["--finetuning_type", "full"], lambda n: True),
}
# Soft prompts learn slowly at LoRA's rate; 3e-2 is their usual one.
LEARNING_RATES = {"prompt_tuning": "3e-2", "prefix_tuning": "3e-2", "p_tuning": "3e-2"}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_lowers_the_loss_and_changes_only_its_parameters(method, qa_data, tmp_path):
    flags, is_intended = METHODS[method]
    run = build_trainer(QWEN, *arguments(qa_data, tmp_path / method, *flags, lr=LEARNING_RATES.get(method, "5e-3")))
    model = run.trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_intended(n) for n in trainable), sorted(trainable)[:5]
    if method == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
    before = snapshot(model)

    run.trainer.train()

    losses = [log["loss"] for log in run.trainer.state.log_history if "loss" in log]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.01, losses
    params = dict(model.named_parameters())
    changed = {n for n, p in params.items() if not torch.equal(before[n], p.detach())}
    if method == "adalora":  # a layer pruned to rank 0 has its singular values masked back to their init, 0
        assert all("lora_E" in n and not params[n].any() for n in trainable - changed)
        changed |= trainable - changed
    assert changed == trainable


def test_adalora_prunes_ranks_during_training(qa_data, tmp_path):
    run = build_trainer(QWEN, *arguments(qa_data, tmp_path, "--finetuning_type", "adalora", "--lora_rank", "8",
                                         "--adalora_target_rank", "2", steps=40))
    run.trainer.train()
    # AdaLoRA masks pruned singular values to exactly 0; the budget is 2 of 8 per layer on average.
    kept = [int((p != 0).sum()) for n, p in run.trainer.model.named_parameters() if "lora_E" in n]
    assert sum(kept) <= 2 * len(kept) + 1 < 8 * len(kept), kept


def test_rslora_scales_by_alpha_over_sqrt_rank(qa_data, tmp_path):
    run = build_trainer(QWEN, *arguments(qa_data, tmp_path, "--use_rslora", "true", "--lora_rank", "16",
                                         "--lora_alpha", "32", "--lora_target", "q_proj"))
    q_proj = run.trainer.model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(32 / math.sqrt(16))  # 8.0, not 32 / 16
    targeted = {n.split(".lora_")[0].rsplit(".", 1)[-1]
                for n, p in run.trainer.model.named_parameters() if p.requires_grad}
    assert targeted == {"q_proj"}


def test_all_linear_targets_every_projection(qa_data, tmp_path):
    run = build_trainer(QWEN, *arguments(qa_data, tmp_path, "--lora_target", "all-linear"))
    targeted = {n.split(".lora_")[0].rsplit(".", 1)[-1]
                for n, p in run.trainer.model.named_parameters() if p.requires_grad}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("flags,message", [
    (["--finetuning_type", "lorax"], "--finetuning_type 'lorax' is unknown; choose one of: lora, qlora"),
    (["--finetuning_type", "full", "--quantization_bit", "4"], "trains adapters only"),
    (["--finetuning_type", "freeze", "--freeze_trainable_layers", "5"], "between 1 and 2"),
    (["--finetuning_type", "freeze", "--freeze_extra_modules", "nope"], "no module named 'nope'"),
    (["--lora_target", "q_proj,W_pack"],
     "W_pack match no linear layer of this model; its linear layers are: down_proj"),
    (["--rope_scaling", "ntk"], "--rope_scaling 'ntk' is unknown"),
])
def test_bad_method_flags_are_one_sentence_and_exit_2(flags, message, qa_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune(QWEN, *arguments(qa_data, tmp_path / "out", *flags))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_qlora_computes_in_the_asked_dtype_else_bf16_on_gpus_else_fp32(monkeypatch):
    from llm_tuning.modeling import qlora_compute_dtype

    assert qlora_compute_dtype("bfloat16") == torch.bfloat16 and qlora_compute_dtype("fp16") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert qlora_compute_dtype("auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert qlora_compute_dtype("auto") == torch.bfloat16
