"""The supervised fine-tuning flow every `<family>_lora_tuning.py` recipe runs.

A recipe declares its `Family` (templates, LoRA targets, remote code, padding side, quirk hooks)
and calls `finetune(family, *parse_args(...))`. The flow, top to bottom:
data (load, check template) → tokenizer (must match the data) → model (+ quantization, RoPE
scaling, family quirks) → the tuning method's trainable parameters → Trainer → train (or resume)
→ save adapter or model, tokenizer, generation stop tokens and llm_tuning.json.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments, set_seed

from .atomic import atomic_files
from .batching import PACKING, prepare_batching, varlen_attention_available
from .cli import exits_on_user_error
from .data import check_template_matches, check_tokenizer_matches, load_tokenized, print_data_example
from .eval_callback import attach_generation_eval
from .methods import check_method, count_parameters, method_callbacks, prepare_trainable, training_steps
from .modeling import load_model, load_tokenizer, require_single_tokens
from .run_config import save_run_config
from .templates import get_template, stop_token_ids
from .training import (
    DataArguments, FinetuneArguments, ModelArguments, check_template_allowed, require_output_dir,
    resolve_dataset_path, resume_argument, run_log_callbacks,
)


def _unchanged(obj, *_):
    return obj


@dataclass(frozen=True)
class Family:
    """What one model family's recipe decides; everything else is shared."""

    script: str                      # the recipe's file name, for messages
    templates: frozenset[str]        # registry templates it trains (the tokenizer's own, "native", always)
    # config.model_type -> comma-separated LoRA target names. A model of another type (a
    # LLaMA-format conversion, a stand-in) gets all-linear, with a note saying so.
    lora_targets: Mapping[str, str]
    trust_remote_code: bool = False  # its real checkpoints ship their own modeling code
    padding_side: str = "right"
    # Template markers written as text that the tokenizer must read as single special tokens.
    marker_tokens: tuple[str, ...] = ()
    # Quirk hook, documented in the recipe that sets it.
    fix_tokenizer: Callable = field(default=_unchanged)


def default_lora_targets(family: Family, model) -> str:
    model_type = model.config.model_type
    if not family.lora_targets:  # a recipe for any model (generic_lora_tuning.py)
        return "all-linear"
    if model_type in family.lora_targets:
        return family.lora_targets[model_type]
    print(f"note: {family.script} knows model types {', '.join(sorted(family.lora_targets))}, not "
          f"{model_type!r}; LoRA goes on all linear layers (choose with --lora_target)")
    return "all-linear"


@dataclass
class Run:
    """A ready Trainer plus what saving needs to know."""

    trainer: Trainer
    tokenizer: object
    base_model: str
    metadata: dict
    dataset_path: str


def build_trainer(family: Family, model_args: ModelArguments, data_args: DataArguments,
                  finetune_args: FinetuneArguments, training_args: TrainingArguments) -> Run:
    """Everything up to `trainer.train()`: data, tokenizer, model, trainable parameters."""
    require_output_dir(training_args)
    quantization_bit = check_method(finetune_args, model_args.quantization_bit)
    set_seed(training_args.seed)
    main_process = training_args.process_index == 0

    # Data first: it names the tokenizer and template it was made with.
    dataset_path = resolve_dataset_path(data_args.tokenized_dataset)
    dataset, metadata = load_tokenized(dataset_path)
    check_template_allowed(metadata["template"], family.templates, dataset_path, family.script)
    base_model = model_args.model_name_or_path or metadata["tokenizer"]
    remote_code = model_args.trust_remote_code or family.trust_remote_code

    # Tokenizer: must be the one that made the data.
    tokenizer = load_tokenizer(base_model, remote_code, family.padding_side)
    tokenizer = family.fix_tokenizer(tokenizer)
    if family.marker_tokens:
        require_single_tokens(tokenizer, list(family.marker_tokens), f"{family.script}'s template marks turns with them")
    check_tokenizer_matches(metadata, tokenizer, base_model, dataset_path)
    check_template_matches(metadata, tokenizer, base_model, dataset_path)
    if main_process:
        print_data_example(dataset[0], tokenizer)
    # Batching: --batching auto picks the fastest exact mode and prints it (llm_tuning/batching.py).
    batching = prepare_batching(dataset, tokenizer, data_args, training_args, metadata["max_seq_length"])

    # Model: base (optionally 4/8-bit, RoPE-scaled), then the method's parameters.
    # Packed rows on a GPU with flash-attention run its variable-length kernel.
    attention = "flash_attention_2" if batching.mode == PACKING and varlen_attention_available() else None
    model = load_model(base_model, model_args.dtype, remote_code, quantization_bit,
                       rope_scaling=model_args.rope_scaling, rope_factor=model_args.rope_factor,
                       attn_implementation=attention)
    batches, rows_per_batch = ((len(batching.batch_sampler), 1) if batching.batch_sampler is not None
                               else (len(batching.dataset), training_args.per_device_train_batch_size))
    steps = training_steps(batches, rows_per_batch,
                           training_args.gradient_accumulation_steps, training_args.world_size,
                           training_args.num_train_epochs, training_args.max_steps)
    model = prepare_trainable(model, finetune_args, default_lora_targets(family, model), tokenizer, steps,
                              training_args.gradient_checkpointing)
    if main_process:
        trainable, total = count_parameters(model)
        print(f"{finetune_args.finetuning_type}: training {trainable:,} of {total:,} parameters "
              f"({100 * trainable / total:.4f}%)")

    trainer = batching.trainer(
        model=model,
        args=training_args,
        processing_class=tokenizer,
        callbacks=[*run_log_callbacks(), *method_callbacks(model, finetune_args)],
    )
    attach_generation_eval(trainer, data_args, tokenizer, get_template(metadata["template"]))
    return Run(trainer, tokenizer, base_model, metadata, str(dataset_path))


@exits_on_user_error
def finetune(family: Family, model_args: ModelArguments, data_args: DataArguments,
             finetune_args: FinetuneArguments, training_args: TrainingArguments) -> None:
    run = build_trainer(family, model_args, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, family, model_args, finetune_args)
    if torch.distributed.is_initialized():
        # Shut down in order, the trainer first: left to interpreter exit, a ZeRO-3 rank on gloo aborted
        # ("terminate called without an active exception") in about 1 run of 5 after saving.
        del run
        gc.collect()
        torch.distributed.destroy_process_group()


def save(run: Run, family: Family, model_args: ModelArguments, finetune_args: FinetuneArguments) -> None:
    """Adapter (or whole model for freeze/full) as safetensors, the tokenizer, and the stop tokens
    generate() needs, so chat.py, merge_lora.py and a plain `from_pretrained` all stop on time."""
    trainer, output_dir = run.trainer, run.trainer.args.output_dir
    stops = stop_token_ids(run.tokenizer, get_template(run.metadata["template"]))
    trainer.model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    # Written aside, then renamed in: a full disk or a kill leaves the previous adapter as it was.
    with atomic_files(output_dir, writer=trainer.is_world_process_zero()) as saving_dir:
        trainer.save_model(str(saving_dir))
        if trainer.is_world_process_zero():
            # An adapter directory gets one too: stock transformers and vLLM read the stop tokens from it.
            trainer.model.generation_config.save_pretrained(str(saving_dir))
            rope = {"rope_scaling": model_args.rope_scaling, "rope_factor": model_args.rope_factor} if model_args.rope_scaling else {}
            save_run_config(str(saving_dir), base_model=run.base_model, template=run.metadata["template"],
                            template_source=run.metadata.get("template_source"),
                            tokenized_dataset=run.dataset_path, recipe=family.script,
                            finetuning_type=finetune_args.finetuning_type,
                            trust_remote_code=model_args.trust_remote_code or family.trust_remote_code, **rope)
    if trainer.is_world_process_zero():
        what = "model" if finetune_args.finetuning_type in {"freeze", "full"} else "adapter"
        print(f"saved the {what} to {output_dir}")
