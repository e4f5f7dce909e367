"""HC3 → q/a rows: the conversion convert_hc3.py runs and run_hc3.py reuses (a module of this
folder, not a command).

Each (question, chosen answer) becomes {"q": question, "a": answer}; answers are stripped, empty
or short ones and repeated pairs are dropped; the train/test split is by question and seeded.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import UserError
from llm_tuning.records import read_records

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

    def __str__(self) -> str:
        """The line convert_hc3.py and run_hc3.py print: `records 12, answers 12, …`."""
        return ", ".join(f"{name} {value}" for name, value in vars(self).items())


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


def convert(input_file: str | Path, answers: str, min_answer_chars: int, test_ratio: float, seed: int,
            out_dir: str | Path) -> Counts:
    """Read HC3 records, write train.jsonl and test.jsonl to `out_dir`; the counts of each step."""
    pairs, counts = to_pairs(read_records(input_file), answers, min_answer_chars)
    train, test = split_by_question(pairs, test_ratio, seed)
    counts.questions = len({_normalise(p["q"]) for p in pairs})
    counts.train, counts.test = len(train), len(test)
    write_jsonl(train, Path(out_dir) / "train.jsonl")
    write_jsonl(test, Path(out_dir) / "test.jsonl")
    return counts
