"""Write data/simple_math_4op.jsonl: four-operation arithmetic as q/a pairs, deterministically.

    python data/make_simple_math.py [--rows 1000] [--seed 42]

Most questions are Chinese, one in four English, so the sample trains and chats in both.
"""

import argparse
import json
import random
from pathlib import Path

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
QUESTION_FORMATS = {
    "zh": ["计算 {expr} 等于多少？", "{expr} 等于几？", "请算一下 {expr}。"],
    "en": ["What is {expr}?", "Compute {expr}."],
}


def make_pair(rng: random.Random) -> dict[str, str]:
    op = rng.choice("+-*/")
    if op == "/":
        b = rng.randint(1, 12)
        result = rng.randint(0, 12)
        a = b * result  # only exact divisions
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if op == "*":
            b = rng.randint(0, 12)
        result = OPERATIONS[op](a, b)
    expr = f"{a} {op} {b}"
    language = "en" if rng.random() < 0.25 else "zh"
    question = rng.choice(QUESTION_FORMATS[language]).format(expr=expr)
    return {"q": question, "a": f"{expr} = {result}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(Path(__file__).with_name("simple_math_4op.jsonl")))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for _ in range(args.rows):
            f.write(json.dumps(make_pair(rng), ensure_ascii=False) + "\n")
    print(f"wrote {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
