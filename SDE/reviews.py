"""Multi-aspect sentiment data for the SDE experiments: the schema, a synthetic generator, loaders.

A record (one line of a .jsonl file):

    {"id": "d1-train-0001", "domain": "d1", "review": "菜很好吃，停车位很难找。",
     "labels": {"food": "positive", "drinks": "unmentioned", ..., "parking": "negative"},
     "evidence": {"food": "菜很好吃", "parking": "停车位很难找"}}

Every aspect of the record's domain has a label in LABELS; `evidence` (optional) is the part of
the review that decides each mentioned aspect, used by the CoT designs' reasoning text.
Real data in the ASAP style (a CSV with a review column and one column per aspect holding
1 / 0 / -1 / -2) loads with `load_asap_csv`.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from llm_tuning.cli import UserError
from llm_tuning.records import read_records

LABELS = ("positive", "neutral", "negative", "unmentioned")
# The numeric codes of the ASAP data set (and of the paper's numeric-label design).
NUMERIC_CODES = {"positive": 1, "neutral": 0, "negative": -1, "unmentioned": -2}

# Aspect key -> Chinese name, in the order outputs list them.
DOMAINS: dict[str, dict[str, str]] = {
    # d1: the aspects the models are trained on (in-domain).
    "d1": {"food": "食物", "drinks": "饮品", "price": "价格", "hygiene": "卫生", "staff": "服务", "parking": "停车"},
    # d2: a second aspect set, only evaluated (out-of-domain: aspects never seen in training).
    "d2": {"transport": "交通", "queue": "排队", "speed": "上菜速度", "decor": "装修", "noise": "噪音"},
}

# Review clauses per aspect and sentiment; the generator picks one per mentioned aspect.
CLAUSES: dict[str, dict[str, tuple[str, ...]]] = {
    "food": {"positive": ("菜很好吃", "招牌菜味道一流", "牛肉面特别香"),
             "neutral": ("菜的味道一般", "菜品中规中矩", "口味还行"),
             "negative": ("菜又咸又油", "鱼不新鲜", "饭菜很难吃")},
    "drinks": {"positive": ("奶茶很好喝", "果汁很新鲜", "咖啡香浓"),
               "neutral": ("饮料普普通通", "酸梅汤一般", "茶水没什么特别"),
               "negative": ("奶茶太甜了", "啤酒不冰", "果汁像兑了水")},
    "price": {"positive": ("价格很实惠", "性价比超高", "人均才五十块"),
              "neutral": ("价格还算正常", "价格不贵也不便宜", "人均一百左右"),
              "negative": ("价格太贵了", "性价比很低", "一盘青菜要六十块")},
    "hygiene": {"positive": ("店里很干净", "餐具消毒得很好", "桌面一尘不染"),
                "neutral": ("卫生条件一般", "环境卫生还过得去", "干净程度一般"),
                "negative": ("桌子油乎乎的", "碗里有头发", "地上很脏")},
    "staff": {"positive": ("服务员很热情", "服务态度特别好", "老板很客气"),
              "neutral": ("服务一般般", "服务员态度平平", "服务不冷不热"),
              "negative": ("服务员态度很差", "叫了三次都没人理", "老板脾气很冲")},
    "parking": {"positive": ("停车很方便", "门口就有免费停车场", "车位很多"),
                "neutral": ("停车还算可以", "附近有收费停车场", "停车不算难"),
                "negative": ("停车位很难找", "根本没地方停车", "停车费太贵")},
    "transport": {"positive": ("地铁站出来就到", "交通很便利", "公交直达"),
                  "neutral": ("交通一般", "离地铁站有点距离", "打车还算方便"),
                  "negative": ("位置太偏了", "交通很不方便", "附近没有公交")},
    "queue": {"positive": ("不用排队", "去了直接有位子", "等位很快"),
              "neutral": ("排队半小时左右", "等位时间正常", "需要稍微等一会"),
              "negative": ("排了两个小时队", "等位等到崩溃", "排队的人太多了")},
    "speed": {"positive": ("上菜很快", "十分钟就上齐了", "出菜速度惊人"),
              "neutral": ("上菜速度一般", "上菜不快不慢", "出菜速度正常"),
              "negative": ("上菜太慢了", "等了一个小时才上菜", "菜迟迟不上")},
    "decor": {"positive": ("装修很有格调", "环境布置得很漂亮", "装潢很精致"),
              "neutral": ("装修普通", "装修风格一般", "装修没什么特色"),
              "negative": ("装修很陈旧", "装修简陋", "墙皮都掉了")},
    "noise": {"positive": ("店里很安静", "适合聊天", "环境很安静"),
              "neutral": ("有点吵但能接受", "噪音一般", "声音不大不小"),
              "negative": ("吵得听不见说话", "音乐声太大", "店里非常嘈杂")},
}
OPENINGS = ("", "周末和朋友来吃饭，", "第二次来了，", "路过进来尝尝，", "公司聚餐选了这家，")


@dataclass(frozen=True)
class Split:
    name: str
    domain: str
    size: int
    seed: int


# The shipped splits: train and in-domain test on d1, out-of-domain test on d2.
DEFAULT_SPLITS = (Split("d1_train", "d1", 240, 1), Split("d1_test", "d1", 60, 2), Split("d2_test", "d2", 60, 3))


def generate_review(rng: random.Random, domain: str, index: int, split: str) -> dict:
    """One synthetic review: 1-4 mentioned aspects with random sentiments, clauses shuffled."""
    aspects = list(DOMAINS[domain])
    mentioned = rng.sample(aspects, rng.randint(1, min(4, len(aspects))))
    labels = {aspect: "unmentioned" for aspect in aspects}
    evidence = {}
    for aspect in mentioned:
        labels[aspect] = rng.choice(LABELS[:3])
        evidence[aspect] = rng.choice(CLAUSES[aspect][labels[aspect]])
    clauses = list(evidence.values())
    rng.shuffle(clauses)
    review = rng.choice(OPENINGS) + "，".join(clauses) + "。"
    return {"id": f"{split}-{index:04d}", "domain": domain, "review": review, "labels": labels,
            "evidence": {aspect: evidence[aspect] for aspect in aspects if aspect in evidence}}


def generate_split(split: Split) -> list[dict]:
    rng = random.Random(split.seed)
    return [generate_review(rng, split.domain, index, split.name) for index in range(1, split.size + 1)]


def validate_record(record: dict, where: str) -> dict:
    """Check one record against the schema; returns it, or raises a UserError naming `where`."""
    for key in ("review", "domain", "labels"):
        if key not in record:
            raise UserError(f"{where}: no key {key!r}; a record needs review, domain and labels")
    if record["domain"] not in DOMAINS:
        raise UserError(f"{where}: unknown domain {record['domain']!r}; known: {', '.join(DOMAINS)}")
    aspects = DOMAINS[record["domain"]]
    labels = record["labels"]
    if not isinstance(labels, dict) or set(labels) != set(aspects):
        raise UserError(f"{where}: labels must give every aspect of {record['domain']}: {', '.join(aspects)}")
    bad = {a: v for a, v in labels.items() if v not in LABELS}
    if bad:
        raise UserError(f"{where}: unknown label(s) {bad}; use one of {', '.join(LABELS)}")
    return record


def load_reviews(path: str | Path) -> list[dict]:
    """Records of a .json/.jsonl file in the schema above, validated with file:line errors."""
    return [validate_record(record, where) for where, record in read_records(path)]


def load_asap_csv(path: str | Path, domain: str, columns: dict[str, str], review_column: str = "review") -> list[dict]:
    """Real data in the ASAP style: `columns` maps each aspect of `domain` to its CSV column
    (e.g. food=Food#Taste); cells hold 1 / 0 / -1 / -2 as in NUMERIC_CODES."""
    if domain not in DOMAINS:
        raise UserError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    missing = set(DOMAINS[domain]) - set(columns)
    if missing:
        raise UserError(f"no CSV column given for aspect(s) {', '.join(sorted(missing))} of {domain}")
    by_code = {str(code): label for label, code in NUMERIC_CODES.items()}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    records = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        for lineno, row in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            for column in [review_column, *columns.values()]:
                if column not in row:
                    raise UserError(f"{where}: no column {column!r} (found: {', '.join(row)})")
            labels = {}
            for aspect, column in columns.items():
                cell = row[column].strip()
                if cell not in by_code:
                    raise UserError(f"{where}: column {column!r} holds {cell!r}; expected 1, 0, -1 or -2")
                labels[aspect] = by_code[cell]
            records.append({"id": f"{path.stem}-{lineno}", "domain": domain, "review": row[review_column],
                            "labels": labels})
    if not records:
        raise UserError(f"{path}: no rows")
    return records
