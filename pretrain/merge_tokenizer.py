"""Add the pieces of a new sentencepiece model to a base tokenizer, keeping every old token id.

    python pretrain/merge_tokenizer.py --base_tokenizer meta-llama/Llama-2-7b-hf \
        --sp_model weights/zh_sp/tokenizer.model --output_dir weights/llama2_zh_tokenizer

Works on sentencepiece LLaMA-style tokenizers (a `tokenizer.model`: the new pieces are appended to
it, as Chinese-LLaMA did) and on Hugging Face fast BPE tokenizers (a `tokenizer.json`: Qwen,
LLaMA-3, Mistral-Nemo …: each new piece becomes a token plus the BPE merges that build it).
New tokens get the ids after the last old one, so the base model's embeddings keep their meaning;
extend_embeddings.py then gives the new tokens their rows.

Prints how many pieces were added, the old and new vocabulary sizes, and how many tokens the
shipped Chinese and English samples (`--sample_files`) take before and after: the point of the
extension is fewer tokens per Chinese character (faster training and generation, a longer
effective context); English should stay the same.

When to extend: when the base tokenizer splits your language into bytes or single characters
(LLaMA-2 on Chinese: ~1.5 tokens a character) and you can afford enough continued pretraining
for the new embeddings to be learned (billions of tokens for a 7B model). A tokenizer that already
covers the language (Qwen, GLM-4 on Chinese) gains little; just continue pretraining.
"""

import argparse
from pathlib import Path

from llm_tuning.atomic import atomic_directory
from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error
from llm_tuning.modeling import load_tokenizer
from llm_tuning.pretrain.shards import read_texts
from llm_tuning.pretrain.vocab import (
    check_old_ids_unchanged,
    local_tokenizer_dir,
    merge_tokenizer_files,
    sentencepiece_pieces,
    token_count,
)

SAMPLE_FILES = ["pretrain/data/zh_general.jsonl", "pretrain/data/en_general.jsonl"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_tokenizer", required=True, help="hub id or folder of the base model's tokenizer")
    parser.add_argument("--sp_model", required=True, help="tokenizer.model written by train_tokenizer.py")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--sample_files", nargs="*", default=SAMPLE_FILES, help="jsonl texts to count tokens on")
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    if not Path(args.sp_model).is_file():
        raise UserError(f"{args.sp_model}: no such file; train one with pretrain/train_tokenizer.py")
    pieces = sentencepiece_pieces(Path(args.sp_model).read_bytes())
    base_dir = local_tokenizer_dir(args.base_tokenizer)
    old = load_tokenizer(str(base_dir))

    with atomic_directory(args.output_dir) as tmp:
        summary = merge_tokenizer_files(base_dir, pieces, tmp)
        new = load_tokenizer(str(tmp))
        check_old_ids_unchanged(old, new)
        new.save_pretrained(tmp)  # writes tokenizer.json (rebuilt from a merged tokenizer.model) and config

    print(f"{summary['kind']} base: added {len(summary['added'])} of {len(pieces)} pieces"
          + (f" (+{summary['intermediate']} intermediate BPE tokens)" if summary["intermediate"] else "")
          + f"; vocabulary {len(old)} -> {len(new)}; old ids unchanged")
    for path in args.sample_files:
        texts = list(read_texts(path))
        before, after = token_count(old, texts), token_count(new, texts)
        chars = sum(len(t) for t in texts)
        print(f"{Path(path).name}: {before} -> {after} tokens (ratio {after / before:.3f}; "
              f"{chars / before:.2f} -> {chars / after:.2f} characters per token)")
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main(parse_args())
