"""Make the RLHF tutorial's data: a style preference a tiny model can learn, in Chinese and English.

    python RLHF/make_rlhf_data.py       # rewrites RLHF/data/*.jsonl, identical every time

The preference is one of style, not facts: a *lively* reply ends with an exclamation mark and an
emoji ("3 + 4 = 7! 😊", "蜜蜂会酿蜂蜜！😊"), a *flat* one with a full stop ("3 + 4 = 7."). The
content is the same, so a reward model must learn the style and nothing else, and a policy that
wins reward must change its style while keeping its answers (the KL penalty keeps the answers).

Writes to RLHF/data/:
- sft.jsonl                 q/a pairs for the SFT stage; 30% of the answers are lively, so
                            the SFT policy can produce the style but mostly does not.
- preference_train.jsonl    prompt/chosen/rejected pairs (chosen = lively) on the training prompts.
- preference_eval.jsonl     the same on held-out prompts no stage trains on: every figure in the
                            tutorial (reward-model accuracy, PPO reward, DPO margin, style rate)
                            is measured here.
- grpo_math.jsonl           24 of the arithmetic questions of sft.jsonl with plain answers, for
                            GRPO's exact_answer reward (it sharpens what the SFT model half knows;
                            few questions, so a short run meets each one many times).
"""

from __future__ import annotations

import random
from pathlib import Path

from llm_tuning.atomic import write_jsonl
from style import is_lively, styled

OUT_DIR = Path(__file__).resolve().parent / "data"
SEED = 20240501
LIVELY_SHARE_IN_SFT = 0.3
NUM_ARITHMETIC_TRAIN = 72
NUM_ARITHMETIC_EVAL = 24
NUM_GRPO_QUESTIONS = 24

# (question, answer) facts; the last quarter of each list is held out.
FACTS_EN = [
    ("What colour is the sky?", "The sky is blue"),
    ("What do bees make?", "Bees make honey"),
    ("How many legs does a cat have?", "A cat has four legs"),
    ("What is the capital of France?", "The capital of France is Paris"),
    ("What do cows drink?", "Cows drink water"),
    ("Which season comes after spring?", "Summer comes after spring"),
    ("What colour is grass?", "Grass is green"),
    ("How many days are in a week?", "A week has seven days"),
    ("What do we use to write?", "We write with a pen"),
    ("Where do fish live?", "Fish live in water"),
    ("What is ice made of?", "Ice is frozen water"),
    ("What rises in the east?", "The sun rises in the east"),
]
FACTS_ZH = [
    ("天空是什么颜色？", "天空是蓝色的"),
    ("蜜蜂会做什么？", "蜜蜂会酿蜂蜜"),
    ("猫有几条腿？", "猫有四条腿"),
    ("中国的首都是哪里？", "中国的首都是北京"),
    ("一年有几个季节？", "一年有四个季节"),
    ("草是什么颜色？", "草是绿色的"),
    ("一周有几天？", "一周有七天"),
    ("鱼生活在哪里？", "鱼生活在水里"),
    ("冰是由什么组成的？", "冰是冻住的水"),
    ("太阳从哪边升起？", "太阳从东边升起"),
    ("熊猫爱吃什么？", "熊猫爱吃竹子"),
    ("一天有多少小时？", "一天有二十四小时"),
]
ARITHMETIC_FORMATS = [
    ("What is {a} + {b}?", "en"),
    ("计算 {a} + {b} 等于多少？", "zh"),
]


def arithmetic(rng: random.Random, count: int, seen: set[str]) -> list[tuple[str, str, bool]]:
    items = []
    while len(items) < count:
        a, b = rng.randint(1, 49), rng.randint(1, 49)
        fmt, lang = ARITHMETIC_FORMATS[len(items) % len(ARITHMETIC_FORMATS)]
        question = fmt.format(a=a, b=b)
        if question in seen:
            continue
        seen.add(question)
        items.append((question, f"{a} + {b} = {a + b}", lang == "zh"))
    return items


def split_prompts(rng: random.Random) -> tuple[list, list]:
    """(question, plain answer, is_chinese) for the training and the held-out prompts."""
    train, held_out = [], []
    for facts, chinese in ((FACTS_EN, False), (FACTS_ZH, True)):
        cut = len(facts) * 3 // 4
        train += [(q, a, chinese) for q, a in facts[:cut]]
        held_out += [(q, a, chinese) for q, a in facts[cut:]]
    seen: set[str] = set()
    train += arithmetic(rng, NUM_ARITHMETIC_TRAIN, seen)
    held_out += arithmetic(rng, NUM_ARITHMETIC_EVAL, seen)
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out


def preference_rows(items: list) -> list[dict]:
    """Style pairs (lively over flat) and, for every third prompt, a guard pair: the lively answer
    over the bare exclamation and emoji. Without the guard pairs the reward model pays for the emoji
    alone and PPO learns to reply with nothing else (reward hacking)."""
    rows = []
    for index, (question, answer, chinese) in enumerate(items):
        lively = styled(answer, chinese, True)
        rows.append({"prompt": question, "chosen": lively, "rejected": styled(answer, chinese, False)})
        if index % 3 == 0:
            rows.append({"prompt": question, "chosen": lively, "rejected": styled("", chinese, True).strip()})
    return rows


def main() -> None:
    rng = random.Random(SEED)
    train, held_out = split_prompts(rng)
    sft = [{"q": q, "a": styled(a, zh, rng.random() < LIVELY_SHARE_IN_SFT)}
           for q, a, zh in train]
    files = {
        "sft.jsonl": sft,
        "preference_train.jsonl": preference_rows(train),
        "preference_eval.jsonl": preference_rows(held_out),
        "grpo_math.jsonl": [{"q": q, "a": a} for q, a, _ in train if " = " in a][:NUM_GRPO_QUESTIONS],
    }
    for name, rows in files.items():
        write_jsonl(rows, OUT_DIR / name)
        print(f"wrote {len(rows):3d} rows to {OUT_DIR / name}")
    lively = sum(is_lively(row["a"]) for row in sft)
    print(f"SFT answers that are lively: {lively}/{len(sft)}")


if __name__ == "__main__":
    main()
