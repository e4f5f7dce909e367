"""Compress pretraining text into zstd jsonl shards, one folder per source.

    python pretrain/compress_data.py \
        --inputs pretrain/data/zh_general.jsonl pretrain/data/zh_medical.jsonl pretrain/data/en_general.jsonl \
        --output_dir data/tokenized_data/pretrain_corpus --lines_per_shard 200 --heldout_lines 40

Each input is one source (named after the file: `zh_general`), a jsonl file with one text per
line under `--text_key` (default `text`). Writes `<output_dir>/<source>/<source>-00000.jsonl.zst`
… of `--lines_per_shard` lines each, in input order; the first `--heldout_lines` lines of each
source go to `<source>/heldout.jsonl.zst` for evaluation and are never trained on. manifest.json
lists the sources, their line counts and shards; the mixture calculator and
continue_pretraining.py read it. Prints lines and shards per source.

A bad line stops the run with `file:line: what is wrong` (exit code 2) and writes nothing: the
corpus is built in a temporary folder and renamed into place when complete. Rerunning replaces it.
Real corpora: 10k–100k lines a shard keeps each shard a few MB to a few tens of MB, and a resumed
run re-reads at most one shard per source.
"""

import argparse

from llm_tuning.cli import ArgumentParser, exits_on_user_error
from llm_tuning.pretrain.shards import write_shards


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True, help="jsonl files, one per source")
    parser.add_argument("--output_dir", required=True, help="the corpus folder to (re)write")
    parser.add_argument("--text_key", default="text", help="the key holding each line's text")
    parser.add_argument("--lines_per_shard", type=int, default=10000)
    parser.add_argument("--heldout_lines", type=int, default=0, help="lines per source kept for eval loss")
    parser.add_argument("--level", type=int, default=10, help="zstd level (1 fast … 19 small)")
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    manifest = write_shards(args.inputs, args.output_dir, lines_per_shard=args.lines_per_shard,
                            heldout_lines=args.heldout_lines, text_key=args.text_key, level=args.level)
    print(f"{'source':<20} {'lines':>10} {'shards':>7} {'held out':>9}")
    for name, stats in manifest["sources"].items():
        print(f"{name:<20} {stats['lines']:>10,} {len(stats['shards']):>7} {stats['heldout_lines']:>9,}")
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main(parse_args())
