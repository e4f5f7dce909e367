"""Write the small shipped pretraining corpus: three sources, Chinese and English, one `text` a line.

    python pretrain/data/make_corpus.py            # rewrites pretrain/data/*.jsonl

Deterministic (a fixed seed, no model, no network), so the files in the repository are exactly
what this script prints. The sentences are templated, which is what lets a tiny random model's
held-out loss fall within a few dozen steps; they stand in for a real corpus (Wikipedia, news,
a domain's documents) that you would put in the same format.

Sources:
  zh_general.jsonl   general Chinese (people, cities, seasons, study and work)
  zh_medical.jsonl   a Chinese domain (health and medicine), the kind of data domain adaptation uses
  en_general.jsonl   general English, to keep the base model's English while it learns Chinese
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240601

ZH_PEOPLE = ["学生", "老师", "工程师", "医生", "科学家", "作家", "农民", "记者", "设计师", "程序员"]
ZH_CITIES = ["北京", "上海", "杭州", "成都", "广州", "西安", "南京", "武汉", "深圳", "重庆"]
ZH_SEASONS = ["春天", "夏天", "秋天", "冬天"]
ZH_WEATHER = ["天气很暖和", "阳光很好", "经常下雨", "风很大", "有点冷", "非常凉快"]
ZH_ACTIVITIES = ["读书", "写作业", "做实验", "开会", "跑步", "学习英语", "写代码", "看电影", "种花", "做饭"]
ZH_TEMPLATES = [
    "{city}的{season}{weather}，很多{person}喜欢在公园里{activity}。",
    "一位来自{city}的{person}说，每天{activity}是一个好习惯。",
    "在{season}，{city}的{person}常常一起{activity}，然后去吃晚饭。",
    "{person}认为{activity}可以让生活更加有意思，所以他每周都在{city}{activity}。",
    "今年{season}，我们去{city}旅行，那里{weather}，我们还和一位{person}聊了很久。",
]

ZH_ORGANS = ["心脏", "肝脏", "肺部", "肾脏", "胃", "皮肤", "血管", "大脑"]
ZH_DISEASES = ["高血压", "糖尿病", "感冒", "胃炎", "肺炎", "失眠", "贫血", "过敏"]
ZH_SYMPTOMS = ["头痛", "发烧", "咳嗽", "乏力", "胸闷", "食欲不振", "皮疹", "心慌"]
ZH_ADVICE = ["按时服药", "多喝温水", "保持充足睡眠", "减少盐的摄入", "适当运动", "定期复查", "清淡饮食"]
ZH_MEDICAL_TEMPLATES = [
    "{disease}的常见症状包括{symptom}和{symptom2}，患者应当{advice}。",
    "医生建议，{disease}患者除了{advice}以外，还要注意{organ}的健康。",
    "如果出现{symptom}，并且持续三天以上，应及时就医，排查{disease}。",
    "{organ}是人体重要的器官，{advice}有助于预防{disease}。",
    "研究表明，长期{symptom}可能与{organ}功能异常有关，建议{advice}。",
]

EN_PEOPLE = ["students", "teachers", "engineers", "doctors", "farmers", "writers", "nurses", "pilots"]
EN_CITIES = ["London", "Paris", "Boston", "Sydney", "Toronto", "Berlin", "Tokyo", "Madrid"]
EN_SEASONS = ["spring", "summer", "autumn", "winter"]
EN_ACTIVITIES = ["read books", "go running", "cook dinner", "write code", "visit museums", "plant trees"]
EN_TEMPLATES = [
    "In {season}, many {person} in {city} like to {activity} after work.",
    "A group of {person} from {city} said that they {activity} every weekend.",
    "The weather in {city} is pleasant in {season}, so people often {activity} outside.",
    "Most {person} agree that it is healthy to {activity} at least twice a week.",
    "Last {season} we travelled to {city}, where we met {person} who {activity} together.",
]


def zh_general(rng: random.Random) -> str:
    return rng.choice(ZH_TEMPLATES).format(
        city=rng.choice(ZH_CITIES), season=rng.choice(ZH_SEASONS), weather=rng.choice(ZH_WEATHER),
        person=rng.choice(ZH_PEOPLE), activity=rng.choice(ZH_ACTIVITIES))


def zh_medical(rng: random.Random) -> str:
    symptom, symptom2 = rng.sample(ZH_SYMPTOMS, 2)
    return rng.choice(ZH_MEDICAL_TEMPLATES).format(
        disease=rng.choice(ZH_DISEASES), symptom=symptom, symptom2=symptom2,
        organ=rng.choice(ZH_ORGANS), advice=rng.choice(ZH_ADVICE))


def en_general(rng: random.Random) -> str:
    return rng.choice(EN_TEMPLATES).format(
        city=rng.choice(EN_CITIES), season=rng.choice(EN_SEASONS), person=rng.choice(EN_PEOPLE),
        activity=rng.choice(EN_ACTIVITIES))


# source name -> (sentence maker, lines, sentences per line)
SOURCES = {
    "zh_general": (zh_general, 600, 3),
    "zh_medical": (zh_medical, 300, 2),
    "en_general": (en_general, 400, 2),
}


def make_lines(make, lines: int, sentences: int, seed: int, joiner: str) -> list[str]:
    rng = random.Random(seed)
    return [joiner.join(make(rng) for _ in range(sentences)) for _ in range(lines)]


def main() -> None:
    for index, (name, (make, lines, sentences)) in enumerate(SOURCES.items()):
        joiner = "" if name.startswith("zh") else " "  # Chinese runs sentences together
        texts = make_lines(make, lines, sentences, SEED + index, joiner)
        path = HERE / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
        print(f"{path.name}: {len(texts)} lines")


if __name__ == "__main__":
    main()
