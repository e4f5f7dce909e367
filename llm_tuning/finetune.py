"""The stages of supervised fine-tuning, and the `Family` a recipe declares.

Every `<family>_lora_tuning.py` declares its `Family` (the templates it trains, LoRA targets per
model type, remote code, padding side, quirk hooks) and its `main()` calls these stages in order:

    start_run                 refuse flags that clash before anything loads; seed
    load_data                 the tokenized rows, and the tokenizer and template that made them
    load_family_tokenizer     that tokenizer, with the family's fixes; it must match the data
    prepare_batching          (llm_tuning/batching.py) length-sorted, token-budget or packed batches
    load_base_model           the base model (4/8-bit, RoPE-scaled, varlen attention for packed rows)
    add_trainable_parameters  the tuning method's parameters (--finetuning_type)
    make_trainer              the Trainer, with the run logs and the method's callbacks
    run.trainer.train         train, or resume (checkpoints.resume_argument)
    save                      adapter or model, tokenizer, stop tokens, llm_tuning.json

so a copied recipe can change any stage in place. `finetune()` runs the same stages in one call
(for tests and experiments); `build_trainer()` runs them up to the Trainer.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from .atomic import atomic_files
from .batching import PACKING, Batching, prepare_batching, varlen_attention_available
from .checkpoints import require_output_dir, resume_argument
from .cli import UserError, exits_on_user_error
from .data import check_template_matches, check_tokenizer_matches, load_tokenized, print_data_example
from .eval_callback import attach_generation_eval
from .methods import check_method, count_parameters, method_callbacks, prepare_trainable, training_steps
from .modeling import load_model, load_tokenizer, require_single_tokens
from .native_template import NATIVE
from .run_config import save_run_config
from .run_logs import run_log_callbacks
from .templates import get_template, stop_token_ids
from .training import DataArguments, FinetuneArguments, ModelArguments

TOKENIZED_DATA_DIR = Path("data/tokenized_data")  # where tokenize_dataset_rows.py saves by --save_name


def _unchanged(obj, *_):
    return obj


@dataclass(frozen=True)
class Family:
    """What one model family's recipe decides; everything else is shared."""

    script: str                      # the recipe's __file__; kept as its file name, for messages and llm_tuning.json
    # The registry templates it trains (llm_tuning/templates.py); the tokenizer's own ("native")
    # always fits. Declared here only: tests/test_templates.py holds the README's table to it.
    templates: frozenset[str]
    # config.model_type -> comma-separated LoRA target names. A model of another type (a
    # LLaMA-format conversion, a stand-in) gets all-linear, with a note saying so.
    lora_targets: Mapping[str, str]
    trust_remote_code: bool = False  # its real checkpoints ship their own modeling code
    padding_side: str = "right"
    # Template markers written as text that the tokenizer must read as single special tokens.
    marker_tokens: tuple[str, ...] = ()
    # Quirk hook, documented in the recipe that sets it.
    fix_tokenizer: Callable = field(default=_unchanged)

    def __post_init__(self):
        object.__setattr__(self, "script", Path(self.script).name)

    def remote_code(self, model_args: ModelArguments) -> bool:
        return model_args.trust_remote_code or self.trust_remote_code


def default_lora_targets(family: Family, model) -> str:
    model_type = model.config.model_type
    if not family.lora_targets:  # a recipe for any model (generic_lora_tuning.py)
        return "all-linear"
    if model_type in family.lora_targets:
        return family.lora_targets[model_type]
    print(f"note: {family.script} knows model types {', '.join(sorted(family.lora_targets))}, not "
          f"{model_type!r}; LoRA goes on all linear layers (choose with --lora_target)")
    return "all-linear"


def check_template_allowed(family: Family, template: str, dataset_path: Path) -> None:
    """A registry template must be one of the family's; the tokenizer's own ("native") fits every recipe."""
    if template != NATIVE and template not in family.templates:
        allowed = sorted(family.templates)
        raise UserError(
            f"{dataset_path} was tokenized with the {template!r} template, but {family.script} trains "
            f"{' / '.join(allowed)}; tokenize again with --template {allowed[0]}"
        )


# --- The stages, in the order a recipe's main() calls them -----------------------------------------

def start_run(model_args: ModelArguments, finetune_args: FinetuneArguments, training_args: TrainingArguments) -> None:
    """Refuse what cannot run before anything loads, and seed (LoRA's first weights come from the seed).
    `--finetuning_type qlora` becomes --quantization_bit 4 here unless one was given."""
    require_output_dir(training_args)
    model_args.quantization_bit = check_method(finetune_args, model_args.quantization_bit)
    set_seed(training_args.seed)


@dataclass
class TokenizedData:
    """A tokenized dataset with what made it (metadata.json), and the base model to train on it."""

    dataset: object
    metadata: dict
    path: Path
    base_model: str  # --model_name_or_path, else the model whose tokenizer made the data

    @property
    def template(self) -> str:
        return self.metadata["template"]

    @property
    def max_seq_length(self) -> int:
        return self.metadata["max_seq_length"]


def load_data(family: Family, data_args: DataArguments, model_args: ModelArguments) -> TokenizedData:
    """Data first: it names the tokenizer and template it was made with. A --tokenized_dataset
    that is no path is a name under data/tokenized_data/."""
    path = Path(data_args.tokenized_dataset)
    if not path.exists():
        path = TOKENIZED_DATA_DIR / data_args.tokenized_dataset
    dataset, metadata = load_tokenized(path)
    check_template_allowed(family, metadata["template"], path)
    return TokenizedData(dataset, metadata, path, model_args.model_name_or_path or metadata["tokenizer"])


def load_family_tokenizer(family: Family, data: TokenizedData, model_args: ModelArguments,
                          training_args: TrainingArguments):
    """The base model's tokenizer with the family's fixes. It must be the one that made the data
    (same vocabulary, same chat template); one decoded row is printed to show labels and prompt."""
    tokenizer = load_tokenizer(data.base_model, family.remote_code(model_args), family.padding_side)
    tokenizer = family.fix_tokenizer(tokenizer)
    if family.marker_tokens:
        require_single_tokens(tokenizer, list(family.marker_tokens),
                              f"{family.script}'s template marks turns with them")
    check_tokenizer_matches(data.metadata, tokenizer, data.base_model, data.path)
    check_template_matches(data.metadata, tokenizer, data.base_model, data.path)
    if training_args.process_index == 0:
        print_data_example(data.dataset[0], tokenizer)
    return tokenizer


def load_base_model(family: Family, data: TokenizedData, model_args: ModelArguments, batching: Batching):
    """The base model in --dtype, 4/8-bit if asked, RoPE-scaled if asked. Packed rows on a GPU with
    flash-attention run its variable-length kernel."""
    attention = "flash_attention_2" if batching.mode == PACKING and varlen_attention_available() else None
    return load_model(data.base_model, model_args.dtype, family.remote_code(model_args), model_args.quantization_bit,
                      rope_scaling=model_args.rope_scaling, rope_factor=model_args.rope_factor,
                      attn_implementation=attention)


def add_trainable_parameters(family: Family, model, tokenizer, finetune_args: FinetuneArguments,
                             batching: Batching, training_args: TrainingArguments):
    """The model with exactly the method's parameters trainable (a peft model for adapter methods);
    LoRA goes on --lora_target, else the family's targets for this model type."""
    batches, rows_per_batch = ((len(batching.batch_sampler), 1) if batching.batch_sampler is not None
                               else (len(batching.dataset), training_args.per_device_train_batch_size))
    steps = training_steps(batches, rows_per_batch,  # AdaLoRA's rank schedule needs the step count up front
                           training_args.gradient_accumulation_steps, training_args.world_size,
                           training_args.num_train_epochs, training_args.max_steps)
    model = prepare_trainable(model, finetune_args, default_lora_targets(family, model), tokenizer, steps,
                              training_args.gradient_checkpointing)
    if training_args.process_index == 0:
        trainable, total = count_parameters(model)
        print(f"{finetune_args.finetuning_type}: training {trainable:,} of {total:,} parameters "
              f"({100 * trainable / total:.4f}%)")
    return model


@dataclass
class Run:
    """A ready Trainer plus what saving needs to know."""

    trainer: Trainer
    tokenizer: object
    data: TokenizedData


def make_trainer(model, tokenizer, data: TokenizedData, batching: Batching, data_args: DataArguments,
                 finetune_args: FinetuneArguments, training_args: TrainingArguments) -> Run:
    """The Trainer over the batches (the batching mode picks its class), writing trainer_log.jsonl
    and loss.png, with the method's callbacks and, if asked, generation eval during training."""
    trainer = batching.trainer(
        model=model,
        args=training_args,
        processing_class=tokenizer,
        callbacks=[*run_log_callbacks(), *method_callbacks(model, finetune_args)],
    )
    attach_generation_eval(trainer, data_args, tokenizer, get_template(data.template))
    return Run(trainer, tokenizer, data)


def save(run: Run, family: Family, model_args: ModelArguments, finetune_args: FinetuneArguments) -> None:
    """Adapter (or whole model for freeze/full) as safetensors, the tokenizer, and the stop tokens
    generate() needs, so chat.py, merge_lora.py and a plain `from_pretrained` all stop on time."""
    trainer, output_dir = run.trainer, run.trainer.args.output_dir
    stops = stop_token_ids(run.tokenizer, get_template(run.data.template))
    trainer.model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    # Written aside, then renamed in: a full disk or a kill leaves the previous adapter as it was.
    with atomic_files(output_dir, writer=trainer.is_world_process_zero()) as saving_dir:
        trainer.save_model(str(saving_dir))
        if trainer.is_world_process_zero():
            # An adapter directory gets one too: stock transformers and vLLM read the stop tokens from it.
            trainer.model.generation_config.save_pretrained(str(saving_dir))
            rope = {"rope_scaling": model_args.rope_scaling, "rope_factor": model_args.rope_factor} if model_args.rope_scaling else {}
            save_run_config(str(saving_dir), base_model=run.data.base_model, template=run.data.template,
                            template_source=run.data.metadata.get("template_source"),
                            tokenized_dataset=str(run.data.path), recipe=family.script,
                            finetuning_type=finetune_args.finetuning_type,
                            trust_remote_code=family.remote_code(model_args), **rope)
    if trainer.is_world_process_zero():
        what = "model" if finetune_args.finetuning_type in {"freeze", "full"} else "adapter"
        print(f"saved the {what} to {output_dir}")


def end_run() -> None:
    """After the run's last reference is gone (main() has returned): end torch.distributed in order.
    Left to interpreter exit, a ZeRO-3 rank on gloo aborted ("terminate called without an active
    exception") in about 1 run of 5 after saving."""
    if torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


# --- All stages in one call ----------------------------------------------------------------------

def build_trainer(family: Family, model_args: ModelArguments, data_args: DataArguments,
                  finetune_args: FinetuneArguments, training_args: TrainingArguments) -> Run:
    """The stages up to `trainer.train()`, as a recipe's main() calls them."""
    start_run(model_args, finetune_args, training_args)
    data = load_data(family, data_args, model_args)
    tokenizer = load_family_tokenizer(family, data, model_args, training_args)
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(family, data, model_args, batching)
    model = add_trainable_parameters(family, model, tokenizer, finetune_args, batching, training_args)
    return make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)


@exits_on_user_error
def finetune(family: Family, model_args: ModelArguments, data_args: DataArguments,
             finetune_args: FinetuneArguments, training_args: TrainingArguments) -> None:
    """Every stage of a recipe's main() in one call: build, train (or resume), save."""
    run = build_trainer(family, model_args, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, family, model_args, finetune_args)
    del run  # the trainer goes before torch.distributed does
    end_run()
