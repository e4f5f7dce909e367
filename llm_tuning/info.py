"""What a model is and what training it will cost, before you download weights or rent a GPU.

    python -m llm_tuning.info Qwen/Qwen2.5-7B-Instruct --batch_size 4 --seq_len 1024
    python -m llm_tuning.info models/tiny-qwen2 --adapter weights/simple_math_4op
    python -m llm_tuning.info meta-llama/Meta-Llama-3-8B-Instruct --template llama3

Reads only the config and the tokenizer (the model is built on the `meta` device: no weights are
loaded), then prints the architecture, the parameter count, how many parameters each tuning method
trains, an estimate of the GPU memory training needs with full fine-tuning, LoRA and QLoRA, and
the chat format training will use (`--template auto`: the tokenizer's own chat template, else the
registry's for the model type) with a rendered sample whose supervised part is marked [[ ]].

The estimate, in bytes (AdamW, bf16 weights and activations, fp32 optimizer states):
  full   16 per parameter (2 weight + 2 gradient + 4 master copy + 8 Adam moments)
  LoRA    2 per frozen parameter + 16 per trainable one
  QLoRA   0.5 per frozen parameter (NF4; double quantization makes the constants negligible) + 16 per trainable
  + activations b*s*L*(34*h + 5*a*s) (Korthikanti et al. 2022, no recomputation; --gradient_checkpointing
    keeps only 2*b*s*h per layer) + fp32 logits and their gradient 8*b*s*V.
Real use adds framework overhead (CUDA context ~1 GB, fragmentation): treat it as a lower bound.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .cli import ArgumentParser, UserError, exits_on_user_error, parse_bool
from .conversation import Conversation
from .modeling import first_line, linear_module_names, load_tokenizer
from .native_template import traits_of
from .templates import NativeTemplate, describe_template, encode_conversation, resolve_template

# Rendered by `template_report`: two turns, Chinese and English, so both supervised spans show.
SAMPLE_TURNS = (("你好，你是谁？", "我是小助手。"), ("What is 3 + 4?", "3 + 4 = 7"))
# Shown when the template renders tools: a call, its result, and the answer after it.
SAMPLE_TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]
SAMPLE_TOOL_CALL = Conversation([
    {"role": "user", "content": "What is 12 * 7?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12 * 7"}}}]},
    {"role": "tool", "content": "84"},
    {"role": "assistant", "content": "12 * 7 = 84"},
], SAMPLE_TOOLS)

GIB = 1024**3


@dataclass
class Shape:
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int


def build_on_meta(model_path: str, trust_remote_code: bool = False):
    """The model's modules with no storage: shapes and counts without loading a byte of weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the model config of {model_path}: {first_line(err)}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return model


def model_shape(model) -> Shape:
    config = model.config
    return Shape(config.model_type, config.hidden_size, config.num_hidden_layers,
                 config.num_attention_heads, config.vocab_size)


def count_params(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def lora_params(model, rank: int, targets: str = "all-linear") -> int:
    """r * (in + out) for each targeted linear layer: the A (r x in) and B (out x r) matrices."""
    wanted = set(linear_module_names(model)) if targets == "all-linear" else {t.strip() for t in targets.split(",")}
    return sum(rank * (module.in_features + module.out_features)
               for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted
               and not name.endswith("lm_head"))


def last_layers_params(model, count: int) -> int:
    from .methods import decoder_layers

    return sum(p.numel() for layer in decoder_layers(model)[-count:] for p in layer.parameters())


def trainable_by_method(model, rank: int = 8, targets: str = "all-linear", virtual_tokens: int = 16,
                        freeze_layers: int = 2) -> dict[str, int]:
    shape = model_shape(model)
    lora = lora_params(model, rank, targets)
    return {
        "full": count_params(model),
        f"freeze (last {freeze_layers} layers)": last_layers_params(model, freeze_layers),
        f"lora / qlora (r={rank}, {targets})": lora,
        f"prompt_tuning ({virtual_tokens} tokens)": virtual_tokens * shape.hidden_size,
    }


def activation_bytes(shape: Shape, batch_size: int, seq_len: int, gradient_checkpointing: bool) -> int:
    b, s, h = batch_size, seq_len, shape.hidden_size
    per_layer = 2 * b * s * h if gradient_checkpointing else b * s * (34 * h + 5 * shape.num_heads * s)
    return shape.num_layers * per_layer + 8 * b * s * shape.vocab_size


def memory_estimate(total: int, lora: int, shape: Shape, batch_size: int, seq_len: int,
                    gradient_checkpointing: bool = False) -> dict[str, float]:
    """GiB of training memory for full fine-tuning, LoRA and QLoRA (see the module docstring)."""
    activations = activation_bytes(shape, batch_size, seq_len, gradient_checkpointing)
    return {
        "full": (16 * total + activations) / GIB,
        "lora": (2 * total + 16 * lora + activations) / GIB,
        "qlora": (0.5 * total + 16 * lora + activations) / GIB,
    }


def adapter_summary(adapter: str) -> str:
    from safetensors.torch import load_file

    config_file = Path(adapter) / "adapter_config.json"
    weights_file = Path(adapter) / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise UserError(f"{adapter}: no adapter here (adapter_config.json / adapter_model.safetensors missing)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    count = sum(t.numel() for t in load_file(str(weights_file)).values())  # adapters are small
    details = (f"r={config['r']}, targets {', '.join(sorted(config['target_modules']))}" if config.get("r")
               else f"{config.get('num_virtual_tokens')} virtual tokens")
    return f"adapter {adapter}: {config['peft_type']} ({details}), {count:,} parameters"


def template_report(model_path: str, template_name: str = "auto", trust_remote_code: bool = False) -> list[str]:
    """Which chat template training uses, where it comes from, and a sample with the labels marked."""
    try:
        tokenizer = load_tokenizer(model_path, trust_remote_code)
        template = resolve_template(template_name, tokenizer, model_path, trust_remote_code)
        lines = [describe_template(tokenizer, template),
                 "sample as trained (supervised part in [[ ]], everything else masked):",
                 marked_sample(tokenizer, template, Conversation.from_turns(SAMPLE_TURNS))]
        if isinstance(template, NativeTemplate) and traits_of(tokenizer).renders_tool_calls:
            lines += ["a tool call as trained:", marked_sample(tokenizer, template, SAMPLE_TOOL_CALL)]
    except UserError as err:
        return [f"chat template: {err}"]
    return lines


def marked_sample(tokenizer, template, conversation: Conversation) -> str:
    """The rows of a conversation as text, each supervised span in [[ ]]."""
    rows = []
    for sample in encode_conversation(tokenizer, template, conversation):
        text, cursor = "", 0
        for span in sample.spans:
            text += tokenizer.decode(sample.input_ids[cursor:span.start])
            text += "[[" + tokenizer.decode(sample.input_ids[span.start:span.stop]) + "]]"
            cursor = span.stop
        rows.append(text)
    return "\n--- next row ---\n".join(rows)


def report(args: argparse.Namespace) -> str:
    model = build_on_meta(args.model, args.trust_remote_code)
    shape = model_shape(model)
    total = count_params(model)
    methods = trainable_by_method(model, args.lora_rank, args.lora_target, args.num_virtual_tokens, args.freeze_layers)
    lora = next(count for name, count in methods.items() if name.startswith("lora"))
    lines = [f"{args.model}: {type(model).__name__} (model_type {shape.model_type}), {shape.num_layers} layers, "
             f"hidden {shape.hidden_size}, {shape.num_heads} heads, vocab {shape.vocab_size}",
             f"parameters: {total:,}", "trainable parameters by method:"]
    lines += [f"  {name:<44} {count:>16,}  ({100 * count / total:.3f}%)" for name, count in methods.items()]
    lines.append(f"training memory estimate, batch {args.batch_size} x {args.seq_len} tokens"
                 f"{' with gradient checkpointing' if args.gradient_checkpointing else ''}:")
    for method, gib in memory_estimate(total, lora, shape, args.batch_size, args.seq_len,
                                       args.gradient_checkpointing).items():
        lines.append(f"  {method:<6} {gib:10.2f} GiB" if gib >= 1 else f"  {method:<6} {gib * 1024:10.2f} MiB")
    if args.adapter:
        lines.append(adapter_summary(args.adapter))
    lines += template_report(args.model, args.template, args.trust_remote_code)
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m llm_tuning.info", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="hub id or local path (only its config is read)")
    parser.add_argument("--adapter", default=None, help="also describe this adapter directory")
    parser.add_argument("--template", default="auto",
                        help="chat template to show (auto: as tokenize_dataset_rows.py picks it)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--gradient_checkpointing", type=parse_bool, default=False)
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--lora_target", default="all-linear")
    parser.add_argument("--num_virtual_tokens", type=int, default=16)
    parser.add_argument("--freeze_layers", type=int, default=2)
    parser.add_argument("--trust_remote_code", type=parse_bool, default=False)
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    print(report(args))


if __name__ == "__main__":
    main(parse_args())
