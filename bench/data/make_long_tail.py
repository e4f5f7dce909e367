"""Write bench/data/long_tail.jsonl: q/a pairs whose lengths follow a long-tailed distribution, and
bench/data/long_tail_pairs.jsonl: the same rows as preference pairs.

    python bench/data/make_long_tail.py [--rows 1200] [--seed 7]

Real instruction sets are long-tailed: most rows are short chat turns, a few are long documents
to summarise or long explanations. That shape decides how much dynamic padding wastes, so the
throughput benchmark (bench/train_throughput.py) runs on it. Lengths are log-normal (median ~25
words per side, a tail past 600); half the rows are Chinese, half English. The text is filler
built from fixed phrases: it exercises the tokenizer and the model, it teaches nothing.

The preference pairs (the first 400 rows; the DPO table of train_throughput.py) take each row's
question and answer as prompt and chosen reply, and as the rejected reply the answer of the next
row in the same language: an answer to another question, whose length is drawn independently of
the chosen one's, as in real preference sets where the two replies differ in length.

It lives under bench/, not data/: llm_tuning.testing trains the tiny tokenizer on every file
under data/, and this set must not change it.
"""

import argparse
import json
import math
import random
from pathlib import Path

OUT_FILE = Path(__file__).resolve().parent / "long_tail.jsonl"
PAIRS_FILE = OUT_FILE.with_name("long_tail_pairs.jsonl")

PHRASES = {
    "en": ["the model reads the prompt", "each batch is padded", "memory grows with length",
           "a short answer is enough", "the report lists three causes", "training ends after two epochs",
           "the loss goes down slowly", "the river floods in spring", "prices rose in the third quarter",
           "the committee met on Friday", "a careful reader checks the numbers", "the data has a long tail"],
    "zh": ["模型读取提示", "每个批次都要补齐", "显存随长度增长", "简短的回答就够了", "报告列出了三个原因",
           "训练两轮后结束", "损失缓慢下降", "春天河水上涨", "第三季度价格上涨", "委员会周五开会",
           "细心的读者会核对数字", "数据有一条长尾"],
}
TASKS = {
    "en": [("Summarise the following text: {body}", "In short: {body}"),
           ("Explain why {topic}.", "{body}"),
           ("{topic}?", "{body}")],
    "zh": [("请总结下面这段话：{body}", "总结：{body}"),
           ("请解释为什么{topic}。", "{body}"),
           ("{topic}？", "{body}")],
}


def words(rng: random.Random, language: str, median: float, sigma: float, cap: int) -> str:
    """About `median` phrases' worth of filler, log-normally distributed, at most `cap` phrases."""
    count = max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))
    separator = "，" if language == "zh" else ", "
    end = "。" if language == "zh" else "."
    return separator.join(rng.choice(PHRASES[language]) for _ in range(count)) + end


def make_row(rng: random.Random) -> dict[str, str]:
    language = rng.choice(["en", "zh"])
    prompt_format, answer_format = rng.choice(TASKS[language])
    topic = rng.choice(PHRASES[language])
    long_prompt = "{body}" in prompt_format  # summarise: the document is in the prompt
    prompt_body = words(rng, language, 6, 1.0, 160) if long_prompt else ""
    answer_body = words(rng, language, 2 if long_prompt else 5, 1.0, 160)
    return {"q": prompt_format.format(body=prompt_body, topic=topic),
            "a": answer_format.format(body=answer_body)}


def preference_pairs(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each row's q/a as prompt and chosen reply; rejected: the next different answer in the same language."""
    def language(row):
        return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in row["q"]) else "en"

    pairs = []
    for i, row in enumerate(rows):
        later = (rows[(i + step) % len(rows)] for step in range(1, len(rows)))
        other = next((r for r in later if language(r) == language(row) and r["a"] != row["a"]), None)
        if other is not None:
            pairs.append({"prompt": row["q"], "chosen": row["a"], "rejected": other["a"]})
    return pairs


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    parser.add_argument("--pairs_out", type=Path, default=PAIRS_FILE)
    parser.add_argument("--pairs", type=int, default=400, help="preference pairs, from the first rows")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = [make_row(rng) for _ in range(args.rows)]
    write_jsonl(args.out, rows)
    pairs = preference_pairs(rows)[:args.pairs]
    write_jsonl(args.pairs_out, pairs)
    print(f"wrote {args.rows} rows to {args.out} and {len(pairs)} preference pairs to {args.pairs_out}")


if __name__ == "__main__":
    main()
