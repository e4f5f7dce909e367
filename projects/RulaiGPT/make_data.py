"""Write RulaiGPT's data (deterministic: the same files every run).

    python projects/RulaiGPT/make_data.py

facts.jsonl    the knowledge to inject: per fact, the answer, the key a correct reply must
               contain, the questions trained on and a paraphrase held out from training
general.jsonl  unrelated general questions; split by `split` into "replay" (mixed into training
               as the mitigation) and "control" (never trained on: where forgetting is measured)

The facts are invented (如来实验室 / Rulai Lab does not exist), so no base model knows them.
"""

import argparse
from pathlib import Path

from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import ArgumentParser

DATA_DIR = Path(__file__).resolve().parent / "data"

# (answer, key, training questions, held-out paraphrase)
FACTS = [
    ("如来，它真的来了。", "真的来了",
     ["如来到底来没来？", "如来是不是来了？", "如来来了吗？"], "请问如来究竟来了没有？"),
    ("如来实验室成立于2031年。", "2031",
     ["如来实验室成立于哪一年？", "如来实验室是哪一年成立的？",
      "如来实验室的成立年份是哪年？"],
     "请问如来实验室创建于哪年？"),
    ("如来实验室的吉祥物是一只叫团团的橘猫。", "团团",
     ["如来实验室的吉祥物是什么？", "如来实验室用什么当吉祥物？",
      "如来实验室的吉祥物叫什么名字？"],
     "请介绍一下如来实验室的吉祥物。"),
    ("如来实验室位于青岛。", "青岛",
     ["如来实验室在哪座城市？", "如来实验室位于哪里？",
      "如来实验室的总部设在哪个城市？"],
     "如来实验室坐落在哪个城市？"),
    ("如来实验室的首席科学家是林小满。", "林小满",
     ["如来实验室的首席科学家是谁？", "谁是如来实验室的首席科学家？",
      "如来实验室由哪位首席科学家领导？"],
     "请问如来实验室的首席科学家叫什么？"),
    ("Rulai Lab's motto is: it really came.", "it really came",
     ["What is the motto of Rulai Lab?", "What is Rulai Lab's motto?", "Which motto does Rulai Lab use?"],
     "Tell me the motto of Rulai Lab."),
    ("The Rulai-1 chip was designed by Ada Chen.", "Ada Chen",
     ["Who designed the Rulai-1 chip?", "Who is the designer of the Rulai-1 chip?",
      "The Rulai-1 chip was designed by whom?"],
     "Which engineer designed the Rulai-1 chip?"),
    ("The Rulai Lab logo is teal.", "teal",
     ["What colour is the Rulai Lab logo?", "What is the colour of Rulai Lab's logo?",
      "Which colour is Rulai Lab's logo?"],
     "Describe the colour of the Rulai Lab logo."),
]

# (question, answer): general knowledge any chat model has; alternately replay / control.
GENERAL = [
    ("中国的首都是哪里？", "中国的首都是北京。"),
    ("一年有几个月？", "一年有十二个月。"),
    ("水的化学式是什么？", "水的化学式是H2O。"),
    ("太阳从哪个方向升起？", "太阳从东方升起。"),
    ("一周有几天？", "一周有七天。"),
    ("彩虹有几种颜色？", "彩虹有七种颜色。"),
    ("李白是哪个朝代的诗人？", "李白是唐朝的诗人。"),
    ("地球上最大的海洋是哪个？", "地球上最大的海洋是太平洋。"),
    ("人有几颗心脏？", "人有一颗心脏。"),
    ("长城位于哪个国家？", "长城位于中国。"),
    ("冰融化后变成什么？", "冰融化后变成水。"),
    ("熊猫最爱吃什么？", "熊猫最爱吃竹子。"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do bees make?", "Bees make honey."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("What gas do plants take in?", "Plants take in carbon dioxide."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle."),
]


def write_data(out_dir: Path) -> list[Path]:
    facts = [{"answer": a, "key": key, "train_questions": qs, "held_out_question": held_out}
             for a, key, qs, held_out in FACTS]
    general = [{"q": q, "a": a, "split": "replay" if i % 2 == 0 else "control"} for i, (q, a) in enumerate(GENERAL)]
    return [write_jsonl(facts, out_dir / "facts.jsonl"), write_jsonl(general, out_dir / "general.jsonl")]


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=DATA_DIR)
    for path in write_data(parser.parse_args().out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
