"""Write a small sample in the HC3 schema (deterministic: the same file every run).

    python projects/ChatBaichuan-HC3/make_sample.py   # -> projects/ChatBaichuan-HC3/data/hc3_sample.jsonl

HC3 (Hello-SimpleAI/HC3 and HC3-Chinese) pairs each question with human answers and ChatGPT
answers, one JSON object a line:

    {"id": 0, "question": "…", "human_answers": ["…"], "chatgpt_answers": ["…"], "source": "open_qa"}

The sample keeps the real data's warts on purpose, so the converter's cleaning is visible: a
question asked twice, an answer repeated, an empty answer, stray whitespace.
"""

import argparse
from pathlib import Path

from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import ArgumentParser

DATA_DIR = Path(__file__).resolve().parent / "data"

# (question, human answers, chatgpt answers, source)
SAMPLE = [
    ("为什么天空是蓝色的？", ["因为空气散射蓝光最多。"],
     ["天空呈蓝色，是因为大气对波长较短的蓝光散射得更强。"], "open_qa"),
    ("怎样才能睡得更好？", ["睡前别玩手机。", "  睡前别玩手机。 "],
     ["保持规律作息，睡前一小时远离屏幕，卧室保持安静和黑暗。"], "open_qa"),
    ("什么是人工智能？", ["就是让机器像人一样思考。"],
     ["人工智能是让计算机完成通常需要人类智能的任务的技术，例如理解语言和识别图像。"], "baike"),
    ("如何学好英语？", ["多听多说。"],
     ["每天坚持听说读写，多读原版材料，并大胆开口练习。"], "open_qa"),
    ("喝咖啡有什么好处？", ["提神。"],
     ["适量喝咖啡可以提神醒脑，还可能改善注意力。"], "open_qa"),
    ("为什么要多喝水？", ["身体需要水。"], [""], "open_qa"),
    ("怎么煮米饭？", ["米和水一比一点二，电饭煲煮。"],
     ["把米洗净，按一比一点二的比例加水，用电饭煲煮约三十分钟。"], "open_qa"),
    ("什么是人工智能？", ["就是让机器像人一样思考。"],
     ["人工智能是让计算机完成通常需要人类智能的任务的技术，例如理解语言和识别图像。"], "baike"),
    ("Why do leaves change colour in autumn?", ["Less sunlight."],
     ["In autumn, trees stop making chlorophyll, so the yellow and red pigments show through."], "reddit_eli5"),
    ("How can I focus better when studying?", ["Put your phone away."],
     ["Study in short blocks with breaks, remove distractions, and set one clear goal per session."],
     "reddit_eli5"),
    ("What is machine learning?", ["Computers learning from data."],
     ["Machine learning is a way for computers to learn patterns from data instead of following fixed rules."],
     "wiki_csai"),
    ("Is it healthy to skip breakfast?", ["Depends on the person."],
     ["It depends: some people do well without breakfast, but a balanced morning meal helps many stay focused."],
     "medicine"),
]


def write_sample(out_dir: Path) -> Path:
    records = [{"id": i, "question": q, "human_answers": human, "chatgpt_answers": chatgpt, "source": source}
               for i, (q, human, chatgpt, source) in enumerate(SAMPLE)]
    return write_jsonl(records, out_dir / "hc3_sample.jsonl")


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=DATA_DIR)
    print(f"wrote {write_sample(parser.parse_args().out_dir)}")


if __name__ == "__main__":
    main()
