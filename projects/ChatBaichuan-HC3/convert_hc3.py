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
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error
from llm_tuning.records import read_records
from llm_tuning.atomic import write_jsonl

ANSWER_KEYS = {"chatgpt": ("chatgpt_answers",), "human": ("human_answers",),
               "both": ("chatgpt_answers", "human_answers")}


@dataclass
class Counts:
    records: int = 0
    answers: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    pairs: int = 0
    questions: int = 0
    train: int = 0
    test: int = 0


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


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def to_pairs(located_records: list[tuple[str, dict]], answers: str, min_answer_chars: int) -> tuple[list[dict], Counts]:
    """Validated, cleaned, de-duplicated {"q", "a"} rows in input order, and what was dropped."""
    counts = Counts(records=len(located_records))
    seen: set[tuple[str, str]] = set()
    pairs = []
    for where, record in located_records:
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}: 'question' must be a non-empty string")
        for key in ANSWER_KEYS[answers]:
            values = record.get(key)
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise UserError(f"{where}: {key!r} must be a list of strings (the HC3 schema)")
            for answer in values:
                counts.answers += 1
                answer = answer.strip()
                if len(answer) < min_answer_chars:
                    counts.dropped_empty += 1
                    continue
                identity = (_normalise(question), _normalise(answer))
                if identity in seen:
                    counts.dropped_duplicate += 1
                    continue
                seen.add(identity)
                pairs.append({"q": question.strip(), "a": answer})
    counts.pairs = len(pairs)
    if not pairs:
        raise UserError(f"no usable {answers} answers in the input; try --answers both")
    return pairs, counts


def split_by_question(pairs: list[dict], test_ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """All rows of a question go to the same side; round(test_ratio x questions) go to test."""
    if not 0 <= test_ratio < 1:
        raise UserError(f"--test_ratio must be in [0, 1), got {test_ratio}")
    questions = sorted({_normalise(p["q"]) for p in pairs})
    random.Random(seed).shuffle(questions)
    n_test = min(len(questions) - 1, math.ceil(test_ratio * len(questions))) if test_ratio > 0 else 0
    test_questions = set(questions[:n_test])
    train = [p for p in pairs if _normalise(p["q"]) not in test_questions]
    test = [p for p in pairs if _normalise(p["q"]) in test_questions]
    return train, test


@exits_on_user_error
def main(args: argparse.Namespace) -> Counts:
    pairs, counts = to_pairs(read_records(args.input_file), args.answers, args.min_answer_chars)
    train, test = split_by_question(pairs, args.test_ratio, args.seed)
    counts.questions = len({_normalise(p["q"]) for p in pairs})
    counts.train, counts.test = len(train), len(test)
    out_dir = Path(args.output_dir)
    write_jsonl(train, out_dir / "train.jsonl")
    write_jsonl(test, out_dir / "test.jsonl")
    print(", ".join(f"{name} {value}" for name, value in asdict(counts).items()))
    print(f"wrote {out_dir / 'train.jsonl'} and {out_dir / 'test.jsonl'}")
    return counts


if __name__ == "__main__":
    main(parse_args())
