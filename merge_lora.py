"""Merge a LoRA adapter into its base model and save a standalone model (safetensors + tokenizer).

    python merge_lora.py --adapter weights/simple_math_4op --output weights/simple_math_4op-merged
    python merge_lora.py --base Qwen/Qwen2.5-7B-Instruct --adapter weights/x --output weights/x-merged --dtype bfloat16

Works for adapters whose weights are low-rank deltas (LoRA, DoRA, QLoRA, AdaLoRA) of every family;
prompt, prefix and p-tuning adapters add virtual tokens instead and are refused with a reason
(use them with chat.py --adapter). `--save_quantized 4|8` saves the merged model in bitsandbytes
4-bit NF4 / 8-bit (bitsandbytes 0.45+, CPU or GPU). RoPE scaling the adapter was trained with
is kept in the merged config.

Merging happens in the dtype you load the base in (float32 by default, exact; bfloat16 halves the
memory). The script reports the largest |logit difference| between the adapter model and the
merged model on a probe prompt, so you can see the merge is faithful before you ship it.
The output is written to a temporary directory and renamed when complete.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch

from llm_tuning.atomic import atomic_directory
from llm_tuning.cli import UserError, exits_on_user_error, parse_bool
from llm_tuning.methods import MERGEABLE_PEFT_TYPES
from llm_tuning.modeling import adapter_base_model, load_adapters, load_model, load_tokenizer
from llm_tuning.templates import encode_prompt, get_template, stop_token_ids
from llm_tuning.run_config import read_run_config, save_run_config

PROBE_QUERY = "你好！Please introduce yourself."


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="base model (default: the one recorded in the adapter)")
    parser.add_argument("--adapter", required=True, help="LoRA adapter directory")
    parser.add_argument("--output", required=True, help="directory for the merged model")
    parser.add_argument("--dtype", default="float32", help="float32 (exact), bfloat16 or float16")
    parser.add_argument("--trust_remote_code", type=parse_bool, default=None,
                        help="default: as the adapter was trained (remote-code families need it)")
    parser.add_argument("--save_quantized", type=int, choices=(4, 8), default=None,
                        help="also quantize the merged model to 4 or 8 bits (bitsandbytes) before saving")
    return parser.parse_args(argv)


@torch.no_grad()
def probe_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids).logits.float()


def check_mergeable(adapter: str) -> None:
    """Only weight deltas can be added into the base; say why anything else cannot."""
    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file() and (Path(adapter) / "config.json").is_file():
        raise UserError(f"{adapter} is a whole model (freeze or full fine-tuning), not an adapter: "
                        "there is nothing to merge; use it directly (chat.py --base)")
    peft_type = json.loads(config_file.read_text(encoding="utf-8")).get("peft_type") if config_file.is_file() else None
    if peft_type is not None and peft_type not in MERGEABLE_PEFT_TYPES:
        raise UserError(f"{adapter} is a {peft_type} adapter: it adds learned virtual tokens, not weight "
                        "changes, so it cannot be merged into the base; use it with chat.py --adapter")


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    output = Path(args.output)
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output} exists and is not empty; choose a new --output or remove it")
    check_mergeable(args.adapter)
    base = args.base or adapter_base_model(args.adapter)
    run_config = read_run_config(args.adapter)
    remote_code = run_config.get("trust_remote_code", False) if args.trust_remote_code is None else args.trust_remote_code
    tokenizer = load_tokenizer(args.adapter, remote_code)
    base_model = load_model(base, args.dtype, remote_code, rope_scaling=run_config.get("rope_scaling"),
                            rope_factor=run_config.get("rope_factor", 2.0))
    model = load_adapters(base_model, [args.adapter])
    template_name = run_config.get("template")
    if template_name:
        probe = encode_prompt(tokenizer, get_template(template_name), PROBE_QUERY)
    else:
        probe = tokenizer.encode(PROBE_QUERY)
    input_ids = torch.tensor([probe], device=model.device)
    adapter_logits = probe_logits(model, input_ids)

    merged = model.merge_and_unload()
    max_diff = (probe_logits(merged, input_ids) - adapter_logits).abs().max().item()
    print(f"max |logit difference| adapter vs merged on the probe: {max_diff:.3g}")

    if template_name:  # so generate() stops where chat.py stops
        stops = stop_token_ids(tokenizer, get_template(template_name))
        merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]

    with atomic_directory(output) as tmp_dir:  # an empty `output` is replaced once all is written
        if args.save_quantized:  # bitsandbytes quantizes while loading: reload the merge through it
            float_dir = tmp_dir / "unquantized"
            merged.save_pretrained(float_dir)
            load_model(str(float_dir), "float32", remote_code, quantization_bit=args.save_quantized).save_pretrained(tmp_dir)
            shutil.rmtree(float_dir)
        else:
            merged.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        if run_config:
            save_run_config(str(tmp_dir), **{**run_config, "merged_from": {"base": base, "adapter": args.adapter}})
    print(f"saved the merged model to {output}")


if __name__ == "__main__":
    main(parse_args())
