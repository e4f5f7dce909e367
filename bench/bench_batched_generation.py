"""Tokens per second of the shared decoding loop, one request at a time vs batched (as the server does).

    python bench/bench_batched_generation.py                      # a tiny random Qwen2, offline
    python bench/bench_batched_generation.py --model Qwen/Qwen2.5-0.5B-Instruct --requests 16

Prints generated tokens/s for sequential requests and for one batch of all of them.
"""

import argparse
import tempfile
import time

import torch

from llm_tuning.generation import BatchDecoder, GenerationSettings
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.templates import encode_prompt, get_template, guess_template
from llm_tuning.tiny_models import save_tiny_model

QUESTIONS = ["计算 3 + 94 等于多少？", "What is 75 + 54?", "请介绍一下长城。", "Say hello in Chinese."]


def generated_tokens(model, tokenizer, prompts, settings) -> int:
    total = 0
    for deltas in BatchDecoder(model, tokenizer, prompts, [settings] * len(prompts)):
        total += len(deltas)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: a tiny random Qwen2 built on the fly")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args()
    path = args.model or str(save_tiny_model("qwen2", tempfile.mkdtemp()))
    model, tokenizer = load_model(path).eval(), load_tokenizer(path)
    template = get_template(guess_template(model.config.model_type, path))
    prompts = [encode_prompt(tokenizer, template, QUESTIONS[i % len(QUESTIONS)]) for i in range(args.requests)]
    # No stop tokens: every request generates exactly max_new_tokens, so the two runs do equal work.
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    generated_tokens(model, tokenizer, prompts[:1], settings)  # warm-up

    start = time.perf_counter()
    sequential = sum(generated_tokens(model, tokenizer, [p], settings) for p in prompts)
    sequential_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = generated_tokens(model, tokenizer, prompts, settings)
    batched_s = time.perf_counter() - start
    print(f"model: {path} ({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{args.requests} requests x {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"one at a time: {sequential / sequential_s:8.1f} tokens/s ({sequential_s:.2f} s)")
    print(f"one batch:     {batched / batched_s:8.1f} tokens/s ({batched_s:.2f} s), "
          f"{sequential_s / batched_s:.1f}x")


if __name__ == "__main__":
    main()
