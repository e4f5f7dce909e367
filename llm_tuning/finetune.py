"""The supervised fine-tuning flow every `<family>_lora_tuning.py` recipe runs.

A recipe declares its `Family` (templates, LoRA targets, padding side, quirk hooks) and calls
`finetune(family, *parse_args(...))`. The flow, top to bottom:
data (load, check template) → tokenizer (must match the data) → model (+ quantization, adapter)
→ Trainer → train (or resume) → save adapter, tokenizer and llm_tuning.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import Trainer, TrainingArguments, set_seed

from .cli import exits_on_user_error
from .data import check_tokenizer_matches, load_tokenized, make_collator, print_data_example
from .modeling import load_model, load_tokenizer
from .training import (
    DataArguments, FinetuneArguments, LossPlotCallback, ModelArguments, TrainerLogCallback, attach_lora,
    check_template_allowed, require_output_dir, resolve_dataset_path, resume_argument, save_run_config,
)


def _unchanged(obj, *_):
    return obj


@dataclass(frozen=True)
class Family:
    """What one model family's recipe decides; everything else is shared."""

    script: str                      # the recipe's file name, for messages
    templates: frozenset[str]        # templates its chat models use
    lora_targets: Callable[[object], str]  # model -> default comma-separated LoRA target names
    padding_side: str = "right"
    # Quirk hooks, each documented in the recipe that sets it.
    fix_tokenizer: Callable = field(default=_unchanged)
    prepare_model: Callable = field(default=_unchanged)


@exits_on_user_error
def finetune(family: Family, model_args: ModelArguments, data_args: DataArguments,
             finetune_args: FinetuneArguments, training_args: TrainingArguments) -> None:
    require_output_dir(training_args)
    set_seed(training_args.seed)

    # Data first: it names the tokenizer and template it was made with.
    dataset_path = resolve_dataset_path(data_args.tokenized_dataset)
    dataset, metadata = load_tokenized(dataset_path)
    check_template_allowed(metadata["template"], family.templates, dataset_path, family.script)
    base_model = model_args.model_name_or_path or metadata["tokenizer"]

    # Tokenizer: must be the one that made the data.
    tokenizer = load_tokenizer(base_model, model_args.trust_remote_code, family.padding_side)
    tokenizer = family.fix_tokenizer(tokenizer)
    check_tokenizer_matches(metadata, tokenizer, base_model, dataset_path)
    if training_args.process_index == 0:
        print_data_example(dataset[0], tokenizer)

    # Model: base (optionally 4/8-bit), family quirks, then LoRA on checked target modules.
    model = load_model(base_model, model_args.dtype, model_args.trust_remote_code, model_args.quantization_bit)
    model = family.prepare_model(model, tokenizer)
    model = attach_lora(model, finetune_args, family.lora_targets(model), training_args.gradient_checkpointing)
    if training_args.process_index == 0:
        model.print_trainable_parameters()

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=make_collator(tokenizer),
        processing_class=tokenizer,
        callbacks=[TrainerLogCallback(), LossPlotCallback()],
    )
    trainer.train(resume_from_checkpoint=resume_argument(training_args))

    # Save the adapter (safetensors) + tokenizer, and what chat.py / merge_lora.py need to use them.
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        save_run_config(training_args.output_dir, base_model=base_model, template=metadata["template"],
                        tokenized_dataset=str(dataset_path), recipe=family.script)
        print(f"saved the adapter to {training_args.output_dir}")
