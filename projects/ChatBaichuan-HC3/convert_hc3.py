"""Convert HC3-style data (question, human_answers, chatgpt_answers) to q/a training rows.

    python projects/ChatBaichuan-HC3/convert_hc3.py \
        --input_file projects/ChatBaichuan-HC3/data/hc3_sample.jsonl \
        --answers chatgpt --test_ratio 0.2 --output_dir data/hc3

    # the real data: HC3-Chinese's all.jsonl (or any of its per-source files), both kinds of answers
    python projects/ChatBaichuan-HC3/convert_hc3.py --input_file HC3-Chinese/all.jsonl \
        --answers both --test_ratio 0.05 --output_dir data/hc3_zh

Each (question, chosen answer) becomes a row {"q": question, "a": answer}. Answers are stripped;
empty or shorter than --min_answer_chars ones are dropped; a pair seen before (whitespace
ignored) is dropped. The split is by question, so no test question is ever trained on; it is
deterministic for a given --seed. Writes train.jsonl and test.jsonl to --output_dir and prints
the counts. A malformed record stops the run with `file:line: what is wrong` and exit code 2.
"""

import argparse
from pathlib import Path

from hc3 import ANSWER_KEYS, Counts, convert
from llm_tuning.cli import ArgumentParser, exits_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_file", required=True, help="HC3 .jsonl (one record a line) or .json (a list)")
    parser.add_argument("--answers", choices=sorted(ANSWER_KEYS), default="chatgpt",
                        help="which answers to train on: chatgpt, human or both")
    parser.add_argument("--min_answer_chars", type=int, default=2)
    parser.add_argument("--test_ratio", type=float, default=0.1, help="share of questions held out for testing")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", required=True)
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> Counts:
    counts = convert(args.input_file, args.answers, args.min_answer_chars, args.test_ratio, args.seed, args.output_dir)
    out_dir = Path(args.output_dir)
    print(counts)
    print(f"wrote {out_dir / 'train.jsonl'} and {out_dir / 'test.jsonl'}")
    return counts


if __name__ == "__main__":
    main(parse_args())
