"""What every RLHF stage shares: the model and LoRA flags, the LoRA config, the files a trained
stage leaves (adapter, tokenizer, llm_tuning.json) and its held-out figures (eval_metrics.json).

RLHF/reward_model.py, ppo.py, dpo.py, orpo.py and grpo.py all parse `ModelArguments` and load the
SFT model in its `--dtype`. `--trust_remote_code true|false` comes with each stage's trainer
config (TRL's configs have it; PPO's own arguments too) and is recorded in llm_tuning.json, so
chat.py and the later stages load the stage's output as it was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import UserError
from ..templates import Template
from .pairs import EncodedPair


@dataclass
class ModelArguments:
    """The model and the LoRA adapter of every RLHF stage."""

    model_name_or_path: str = field(metadata={"help": "The SFT model (hub id or path): the start and the reference."})
    template: str = field(default="auto", metadata={"help": "Chat template; auto: the SFT run's, else from the model type."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (the checkpoint's own), float32, bfloat16 or float16: the dtype the models are loaded "
                          "in. bfloat16 holds a model in half the memory of float32; --bf16 alone only changes the "
                          "compute (autocast)."},
    )
    lora_rank: int = field(default=8)
    lora_alpha: float = field(default=32.0)
    lora_dropout: float = field(default=0.0)
    lora_target: str = field(default="all-linear", metadata={"help": "Comma-separated module names, or all-linear."})


def lora_config(model, args: ModelArguments, task_type: str):
    """A LoRA config on checked target modules (peft silently ignores a partly wrong list)."""
    from peft import LoraConfig

    from ..modeling import resolve_lora_targets

    return LoraConfig(task_type=task_type, r=args.lora_rank, lora_alpha=args.lora_alpha,
                      lora_dropout=args.lora_dropout, target_modules=resolve_lora_targets(model, args.lora_target))


EVAL_METRICS_FILE = "eval_metrics.json"


def save_eval_metrics(output_dir: str | Path, metrics: dict) -> dict:
    """Write a stage's held-out figures to output_dir/eval_metrics.json (read by RLHF/evaluate.py)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / EVAL_METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def save_stage_files(saving_dir: str | Path, tokenizer, template: Template, args: ModelArguments, stage: str,
                     trust_remote_code: bool, **run_config) -> None:
    """Beside the adapter: the tokenizer and llm_tuning.json (the base model, the template, whether
    it runs remote code, the stage and `run_config`), what chat.py --adapter and the later stages read."""
    from ..run_config import save_run_config

    tokenizer.save_pretrained(saving_dir)
    save_run_config(str(saving_dir), base_model=args.model_name_or_path, template=template.name, stage=stage,
                    trust_remote_code=trust_remote_code, **run_config)


def train_and_save(trainer, tokenizer, template: Template, args: ModelArguments, stage: str, **run_config) -> bool:
    """Train (or resume, with --resume_from_checkpoint), then save the adapter and `save_stage_files`
    to the trainer's output_dir. False on the processes that are not the main one."""
    from ..atomic import atomic_files
    from ..checkpoints import resume_argument

    output_dir = trainer.args.output_dir
    trainer.train(resume_from_checkpoint=resume_argument(trainer.args))
    # Written aside, then renamed in: a full disk or a kill leaves the previous adapter as it was.
    with atomic_files(output_dir, writer=trainer.is_world_process_zero()) as saving_dir:
        trainer.save_model(str(saving_dir))
        if trainer.is_world_process_zero():
            save_stage_files(saving_dir, tokenizer, template, args, stage, trainer.args.trust_remote_code,
                             **run_config)
    return trainer.is_world_process_zero()


def check_same_ids(got: list[int], expected: EncodedPair, tokenizer, trainer_name: str) -> None:
    """A TRL trainer that tokenizes the rendered text itself must give the ids the policy is used
    with (prompt + chosen reply, as `encode_pair` encodes them)."""
    want = expected.prompt_ids + expected.chosen_ids
    if got != want:
        raise UserError(
            f"{trainer_name}'s token ids differ from the chat template's: "
            f"{tokenizer.decode(got)!r} vs {tokenizer.decode(want)!r}; check the tokenizer's special tokens"
        )
