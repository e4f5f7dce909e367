"""Offline preference training with a TRL trainer (RLHF/dpo.py, RLHF/orpo.py), and what every
RLHF stage shares: its arguments, the LoRA config, the run's saved files and eval_metrics.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import UserError
from ..templates import Template
from .pair_batches import PairBatchingArguments, pair_trainer, resolve_pair_batching
from .pairs import EncodedPair, encode_pair, encode_pairs, load_preference_pairs, render_pair


@dataclass
class PreferenceArguments:
    """The model, the data and the LoRA adapter of a reward-model, DPO or PPO run (`--max_length`
    and `--trust_remote_code` come with the trainer's config)."""

    model_name_or_path: str = field(metadata={"help": "The SFT model (hub id or path): the start and the reference."})
    train_file: str = field(metadata={"help": "Preference pairs (.json/.jsonl) in any accepted format."})
    eval_file: str | None = field(default=None, metadata={"help": "Held-out pairs the figures are measured on."})
    template: str = field(default="auto", metadata={"help": "Chat template; auto: the SFT run's, else from the model type."})
    lora_rank: int = field(default=8)
    lora_alpha: float = field(default=32.0)
    lora_dropout: float = field(default=0.0)
    lora_target: str = field(default="all-linear", metadata={"help": "Comma-separated module names, or all-linear."})


def lora_config(model, args: PreferenceArguments, task_type: str):
    """A LoRA config on checked target modules (peft silently ignores a partly wrong list)."""
    from peft import LoraConfig

    from ..modeling import resolve_lora_targets

    return LoraConfig(task_type=task_type, r=args.lora_rank, lora_alpha=args.lora_alpha,
                      lora_dropout=args.lora_dropout, target_modules=resolve_lora_targets(model, args.lora_target))


EVAL_METRICS_FILE = "eval_metrics.json"


def save_eval_metrics(output_dir: str | Path, metrics: dict) -> dict:
    """Write a stage's held-out figures to output_dir/eval_metrics.json (read by RLHF/evaluate.py)."""
    import json

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / EVAL_METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def train_and_save(trainer, tokenizer, args: PreferenceArguments, template: Template, stage: str,
                   **run_config) -> bool:
    """Train (or resume, with --resume_from_checkpoint), then save the adapter, the tokenizer and
    llm_tuning.json (what chat.py --adapter and the later stages read) to the trainer's output_dir.
    False on the processes that are not the main one."""
    from ..atomic import atomic_files
    from ..run_config import save_run_config
    from ..checkpoints import resume_argument

    output_dir = trainer.args.output_dir
    trainer.train(resume_from_checkpoint=resume_argument(trainer.args))
    # Written aside, then renamed in: a full disk or a kill leaves the previous adapter as it was.
    with atomic_files(output_dir, writer=trainer.is_world_process_zero()) as saving_dir:
        trainer.save_model(str(saving_dir))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(saving_dir)
            save_run_config(str(saving_dir), base_model=args.model_name_or_path, template=template.name,
                            train_file=args.train_file, stage=stage, **run_config)
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


def train_on_pairs(trainer_class, args: PreferenceArguments, batching_args: PairBatchingArguments, training_args,
                   stage: str, trainer_ids, trainer_kwargs: dict | None = None,
                   run_config: dict | None = None) -> dict | None:
    """Train a LoRA adapter on the SFT model with a TRL trainer that learns from the text pairs
    (DPOTrainer, ORPOTrainer) on batches per `batching_args`, and measure the held-out margin log π(chosen) - log π(rejected)
    before (adapter off: the SFT model) and after.

    `trainer_ids(row)` gives the prompt + chosen ids of one row of the trainer's tokenized dataset;
    they are checked against `encode_pair`, so the stage trains on exactly the prompt format chat.py
    uses. Saves the adapter, the tokenizer, llm_tuning.json (stage + run_config) and, with an
    --eval_file, eval_metrics.json; returns the metrics (None without held-out pairs)."""
    from datasets import Dataset
    from transformers import set_seed

    from ..modeling import load_model, load_tokenizer
    from ..templates import resolve_template
    from ..checkpoints import require_output_dir
    from ..run_logs import run_log_callbacks
    from .margins import preference_margin

    require_output_dir(training_args)
    resolve_pair_batching(batching_args, training_args)  # a flag mistake stops the run before anything loads
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(args.model_name_or_path, training_args.trust_remote_code)
    template = resolve_template(args.template, tokenizer, args.model_name_or_path, training_args.trust_remote_code)
    pairs = load_preference_pairs(args.train_file)
    dataset = Dataset.from_list([render_pair(tokenizer, template, pair) for pair in pairs])
    held_out = (encode_pairs(tokenizer, template, load_preference_pairs(args.eval_file), training_args.max_length)
                if args.eval_file else None)

    # The SFT model; the trainer adds the LoRA adapter (for DPO the model without it is the reference).
    model = load_model(args.model_name_or_path, "float32", training_args.trust_remote_code)
    # Length-sorted batches of a token budget by default (pair_batches.py).
    trainer = pair_trainer(trainer_class, batching_args, model=model, args=training_args, train_dataset=dataset,
                           processing_class=tokenizer, peft_config=lora_config(model, args, "CAUSAL_LM"),
                           callbacks=run_log_callbacks(), **(trainer_kwargs or {}))
    check_same_ids(trainer_ids(trainer.train_dataset[0]), encode_pair(tokenizer, template, pairs[0]), tokenizer,
                   trainer_class.__name__)
    print(f"{len(dataset)} pairs; first prompt: {dataset[0]['prompt']!r}")

    before = None
    if held_out:
        with trainer.model.disable_adapter():
            before = preference_margin(trainer.model, held_out, tokenizer.pad_token_id)
    if not train_and_save(trainer, tokenizer, args, template, stage, **(run_config or {})) or held_out is None:
        return None
    trainer.model.eval()
    metrics = {"pairs": len(held_out), "margin_before": before,
               "margin_after": preference_margin(trainer.model, held_out, tokenizer.pad_token_id)}
    save_eval_metrics(training_args.output_dir, metrics)
    print(f"held-out log π(chosen) - log π(rejected): {metrics['margin_before']:.2f} (SFT) -> "
          f"{metrics['margin_after']:.2f} ({stage.upper()}) on {len(held_out)} pairs")
    return metrics
