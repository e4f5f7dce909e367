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

from llm_tuning.cli import ArgumentParser, exits_on_user_error, parse_bool
from llm_tuning.merging import merge_adapter


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="base model (default: the one recorded in the adapter)")
    parser.add_argument("--adapter", required=True, help="LoRA adapter directory")
    parser.add_argument("--output", required=True, help="directory for the merged model")
    parser.add_argument("--dtype", default="float32", help="float32 (exact), bfloat16 or float16")
    parser.add_argument("--trust_remote_code", type=parse_bool, default=None,
                        help="default: as the adapter was trained (remote-code families need it)")
    parser.add_argument("--save_quantized", type=int, choices=(4, 8), default=None,
                        help="also quantize the merged model to 4 or 8 bits (bitsandbytes) before saving")
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    max_diff = merge_adapter(args.adapter, args.output, args.base, args.dtype, args.trust_remote_code,
                             args.save_quantized)
    print(f"max |logit difference| adapter vs merged on the probe: {max_diff:.3g}")
    print(f"saved the merged model to {args.output}")


if __name__ == "__main__":
    main(parse_args())
