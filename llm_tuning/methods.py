"""Every tuning method behind one switch, `--finetuning_type`: which parameters a run trains.

    lora           low-rank adapters on the family's (or --lora_target) linear layers; --use_rslora, --use_dora
    qlora          LoRA over a 4-bit (or --quantization_bit 8) bitsandbytes base
    adalora        LoRA whose ranks are pruned towards --adalora_target_rank during training
    prompt_tuning  --num_virtual_tokens learned input embeddings (optionally initialised from a text)
    prefix_tuning  learned key/value prefixes in every layer (--prefix_projection adds an MLP)
    p_tuning       virtual tokens produced by a small prompt encoder (P-tuning v1)
    freeze         the base model itself, but only its last --freeze_trainable_layers decoder layers
    full           every parameter

The first six save a small peft adapter; `freeze` and `full` save a whole model.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from .cli import UserError
from .modeling import resolve_lora_targets
from .training import FINETUNING_TYPES, FinetuneArguments

# peft types whose weights are low-rank deltas that can be added into the base weights.
MERGEABLE_PEFT_TYPES = {"LORA", "ADALORA"}


def check_method(args: FinetuneArguments, quantization_bit: int | None) -> int | None:
    """Validate the method and return the quantization it needs (qlora means 4-bit unless told)."""
    if args.finetuning_type not in FINETUNING_TYPES:
        raise UserError(f"--finetuning_type {args.finetuning_type!r} is unknown; "
                        f"choose one of: {', '.join(FINETUNING_TYPES)}")
    if args.finetuning_type == "qlora":
        return quantization_bit or 4
    if quantization_bit is not None and args.finetuning_type not in {"lora", "adalora"}:
        raise UserError(
            f"--quantization_bit {quantization_bit} freezes a quantized base, so it trains adapters only; "
            f"--finetuning_type {args.finetuning_type} would update quantized weights (use lora, qlora or adalora)"
        )
    return quantization_bit


def training_steps(num_rows: int, batch_size: int, grad_accum: int, world_size: int, epochs: float,
                   max_steps: int) -> int:
    """Optimizer steps a run will take, as Trainer counts them (AdaLoRA's schedule needs it up front)."""
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(math.ceil(num_rows / (batch_size * world_size)) / grad_accum * epochs))


def prepare_trainable(model, args: FinetuneArguments, default_targets: str, tokenizer=None,
                      total_steps: int = 1, gradient_checkpointing: bool = False,
                      modules_to_save: list[str] | None = None):
    """The model with exactly the method's parameters trainable (a peft model for adapter methods).
    LoRA also trains and saves `modules_to_save` whole (e.g. the embeddings of new tokens)."""
    method = args.finetuning_type
    if method in {"freeze", "full"}:
        if gradient_checkpointing:
            model.enable_input_require_grads()
        return freeze_all_but(model, args) if method == "freeze" else model.requires_grad_(True)

    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
    return get_peft_model(model, peft_config(model, args, default_targets, tokenizer, total_steps, modules_to_save))


def has_tied_embeddings(model) -> bool:
    """The output projection is the input embedding matrix itself."""
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def peft_config(model, args: FinetuneArguments, default_targets: str, tokenizer=None, total_steps: int = 1,
                modules_to_save: list[str] | None = None):
    import peft

    method = args.finetuning_type
    if method in {"prompt_tuning", "prefix_tuning", "p_tuning"}:
        common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": args.num_virtual_tokens}
        if method == "prefix_tuning":
            return peft.PrefixTuningConfig(**common, prefix_projection=args.prefix_projection,
                                           encoder_hidden_size=model.config.hidden_size)
        if method == "p_tuning":
            return peft.PromptEncoderConfig(**common, encoder_hidden_size=model.config.hidden_size)
        if args.prompt_tuning_init_text:
            return peft.PromptTuningConfig(**common, prompt_tuning_init="TEXT",
                                           prompt_tuning_init_text=args.prompt_tuning_init_text,
                                           tokenizer_name_or_path=tokenizer.name_or_path)
        return peft.PromptTuningConfig(**common)

    lora = {"task_type": "CAUSAL_LM", "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout,
            "target_modules": resolve_lora_targets(model, args.lora_target or default_targets)}
    if modules_to_save:
        # A tied input/output embedding (Qwen2.5-0.5B, Llama-3.2, Gemma) must stay one matrix: two
        # separate trained copies drift apart, and a save with the tie still in the config drops one.
        lora.update(modules_to_save=modules_to_save, ensure_weight_tying=has_tied_embeddings(model))
    if method == "adalora":
        # Warm up on the full rank for the first 10% of steps, prune until 80%, then settle.
        tinit, tfinal = (total_steps // 10, total_steps // 5) if total_steps >= 10 else (0, 0)
        return peft.AdaLoraConfig(**lora, init_r=args.lora_rank, target_r=args.adalora_target_rank,
                                  tinit=tinit, tfinal=tfinal, deltaT=max(1, total_steps // 20),
                                  total_step=total_steps)
    return peft.LoraConfig(**lora, r=args.lora_rank, use_rslora=args.use_rslora, use_dora=args.use_dora)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks (model.layers, transformer.h, transformer.encoder.layers …)."""
    stacks = [module for module in model.modules()
              if isinstance(module, torch.nn.ModuleList) and len(module) > 0]
    if not stacks:
        raise UserError("--finetuning_type freeze: found no stack of decoder layers in this model")
    return max(stacks, key=lambda stack: sum(p.numel() for p in stack.parameters()))


def freeze_all_but(model, args: FinetuneArguments):
    """Train only the last N decoder layers (and any --freeze_extra_modules); freeze the rest."""
    layers = decoder_layers(model)
    count = args.freeze_trainable_layers
    if not 1 <= count <= len(layers):
        raise UserError(f"--freeze_trainable_layers must be between 1 and {len(layers)} (the model's layers), "
                        f"got {count}")
    model.requires_grad_(False)
    for layer in layers[-count:]:
        layer.requires_grad_(True)
    extra = [name.strip() for name in (args.freeze_extra_modules or "").split(",") if name.strip()]
    for wanted in extra:
        matches = [module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == wanted]
        if not matches:
            raise UserError(f"--freeze_extra_modules: no module named {wanted!r} in this model")
        for module in matches:
            module.requires_grad_(True)
    return model


def method_callbacks(model, args: FinetuneArguments) -> list[TrainerCallback]:
    return [AdaLoraRankCallback(model)] if args.finetuning_type == "adalora" else []


class AdaLoraRankCallback(TrainerCallback):
    """AdaLoRA reallocates ranks from the gradients after each optimizer step; plain Trainer never
    calls it, so without this the ranks would stay at their initial value."""

    def __init__(self, model):
        self.model = model

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights counted as the weights they hold,
    and weights DeepSpeed ZeRO-3 partitioned (an empty shard on each rank) by their full size."""
    trainable = total = 0
    for param in model.parameters():
        count = getattr(param, "ds_numel", param.numel()) * (2 if type(param).__name__ == "Params4bit" else 1)
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total
