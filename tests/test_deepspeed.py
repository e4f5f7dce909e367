"""The shipped DeepSpeed and accelerate configs pass their own libraries' parsers, as the Trainer fills them.

(Training under ZeRO-2 and ZeRO-3 offload on 2 CPU processes is tested in tests/test_distributed.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, TrainingArguments

deepspeed = pytest.importorskip("deepspeed")
from deepspeed.runtime.config import DeepSpeedConfig  # noqa: E402
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def parse_as_trainer_does(config: str | dict, model, tmp_path: Path, **training) -> DeepSpeedConfig:
    """Fill the "auto" values from the training arguments and the model (what `Trainer` does), then
    hand the result to DeepSpeed's own parser, which validates every key."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **training)
    filled = HfTrainerDeepSpeedConfig(config)
    filled.trainer_config_process(args)
    filled.trainer_config_finalize(args, model, num_training_steps=100)
    return DeepSpeedConfig(filled.config)


@pytest.fixture(scope="module")
def model(tiny_qwen2):
    return AutoModelForCausalLM.from_pretrained(tiny_qwen2)


def test_zero2_config_takes_batch_and_clipping_from_the_recipe_flags(model, tmp_path):
    parsed = parse_as_trainer_does(str(CONFIGS / "ds_zero2.json"), model, tmp_path, per_device_train_batch_size=4,
                                   gradient_accumulation_steps=3, max_grad_norm=0.5)
    assert parsed.zero_optimization_stage == 2
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (4, 3)
    assert parsed.train_batch_size == 12  # x world size 1
    assert parsed.gradient_clipping == 0.5
    assert parsed.zero_config.offload_optimizer is None  # no DeepSpeed CPU Adam: the Trainer's AdamW


def test_zero3_offload_config_offloads_parameters_and_optimizer_to_cpu(model, tmp_path):
    parsed = parse_as_trainer_does(str(CONFIGS / "ds_zero3_offload.json"), model, tmp_path, learning_rate=3e-4)
    assert parsed.zero_optimization_stage == 3
    assert parsed.zero_config.offload_param.device == "cpu"
    assert parsed.zero_config.offload_optimizer.device == "cpu"
    assert parsed.optimizer_params["lr"] == 3e-4
    hidden = model.config.hidden_size
    assert parsed.zero_config.reduce_bucket_size == hidden * hidden  # "auto" sized from the model


def test_deepspeed_parser_rejects_a_misspelt_key(model, tmp_path):
    config = json.loads((CONFIGS / "ds_zero2.json").read_text())
    config["zero_optimization"]["reduce_bucket_sise"] = 1
    with pytest.raises(Exception, match="reduce_bucket_sise"):
        parse_as_trainer_does(config, model, tmp_path)


def test_accelerate_multi_node_config_parses_and_points_at_a_shipped_deepspeed_config():
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(CONFIGS / "accelerate_multi_node.yaml"))
    assert config.distributed_type.value == "DEEPSPEED"
    assert config.num_machines == 2 and config.num_processes == 16
    ds_file = Path(config.deepspeed_config["deepspeed_config_file"])
    assert (CONFIGS.parent / ds_file).is_file()
