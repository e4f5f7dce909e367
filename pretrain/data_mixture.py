"""Data mixture calculator: how often each source is drawn during continued pretraining.

    python pretrain/data_mixture.py --corpus_dir data/tokenized_data/pretrain_corpus \
        --mixture_weights zh_medical=3 --alpha 1.0 --total_draws 20000 \
        --plot data/tokenized_data/pretrain_corpus/mixture.png

Probability of drawing the next text from source i:  p_i ∝ weight_i × lines_i ** alpha.
All weights 1 and alpha 1 mean "in proportion to size". `--mixture_weights zh_medical=3`
triples the domain's share (upsampling); `--alpha 0.3` flattens the mixture towards uniform.
continue_pretraining.py takes the same two flags and computes the same probabilities.

Prints a table: lines per source, its weight, its share of the corpus, its sampling probability
and, with `--total_draws`, how many times each source would be read through (epochs > 1 means
the source repeats: more than ~4 passes over a small source risks memorising it). Saves a bar
chart of shares against probabilities with `--plot`.
"""

import argparse

from llm_tuning.cli import ArgumentParser, exits_on_user_error
from llm_tuning.pretrain.mixture import (
    format_table,
    mixture_probabilities,
    mixture_table,
    parse_weights,
    plot_mixture,
)
from llm_tuning.pretrain.shards import load_manifest


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_dir", required=True, help="written by compress_data.py")
    parser.add_argument("--mixture_weights", default=None, help="source=weight,… (unnamed sources weigh 1)")
    parser.add_argument("--alpha", type=float, default=1.0, help="size exponent: 1 proportional, 0 uniform")
    parser.add_argument("--total_draws", type=int, default=None, help="texts the run will draw, for the epochs column")
    parser.add_argument("--plot", default=None, help="save a bar chart png here")
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    sizes = {name: stats["lines"] for name, stats in load_manifest(args.corpus_dir)["sources"].items()}
    weights = parse_weights(args.mixture_weights, list(sizes))
    probabilities = mixture_probabilities(sizes, weights, args.alpha)
    rows = mixture_table(sizes, weights, probabilities, args.total_draws)
    print(format_table(rows))
    if args.plot:
        print(f"saved {plot_mixture(rows, args.plot)}")


if __name__ == "__main__":
    main(parse_args())
