"""Write bench/data/long_tail.jsonl: q/a pairs whose lengths follow a long-tailed distribution.

    python bench/data/make_long_tail.py [--rows 1200] [--seed 7]

Real instruction sets are long-tailed: most rows are short chat turns, a few are long documents
to summarise or long explanations. That shape decides how much dynamic padding wastes, so the
throughput benchmark (bench/train_throughput.py) runs on it. Lengths are log-normal (median ~25
words per side, a tail past 600); half the rows are Chinese, half English. The text is filler
built from fixed phrases: it exercises the tokenizer and the model, it teaches nothing.

It lives under bench/, not data/: llm_tuning.testing trains the tiny tokenizer on every file
under data/, and this set must not change it.
"""

import argparse
import json
import math
import random
from pathlib import Path

OUT_FILE = Path(__file__).resolve().parent / "long_tail.jsonl"

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    lines = [json.dumps(make_row(rng), ensure_ascii=False) for _ in range(args.rows)]
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
