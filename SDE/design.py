"""Sample designs: how one labelled review becomes a (prompt, target) training sample, and how a
model's output is parsed back to labels.

Each option of the SDE paper (arXiv 2404.13033) is one field of `Design`:

    instruction     first | last | none   where the task instruction sits relative to the review
    input_modeling  on | off              prompt tokens in the loss too (done at tokenization)
    format          lines | json | natural  how the target lists the labels
    labels          text | numeric        正面/中性/负面/未提及 or 1/0/-1/-2
    unmentioned     placeholder | omit    unmentioned aspects written out, or left out
    reasoning       none | cot | rcot     analysis before the answer (CoT) or after it (reverse CoT)

`ES-SDE` is the paper's recommended combination; the other presets change one option of it.
A design is named by a preset, or by overrides of ES-SDE: `format=json,labels=numeric`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace

from llm_tuning.cli import UserError
from reviews import DOMAINS, LABELS, NUMERIC_CODES

TEXT_LABELS = {"positive": "正面", "neutral": "中性", "negative": "负面", "unmentioned": "未提及"}
ANSWER_MARK = "答案："
REASON_MARK = "分析："

OPTIONS = {
    "instruction": ("first", "last", "none"),
    "input_modeling": ("off", "on"),
    "format": ("lines", "json", "natural"),
    "labels": ("text", "numeric"),
    "unmentioned": ("placeholder", "omit"),
    "reasoning": ("none", "cot", "rcot"),
}


@dataclass(frozen=True)
class Design:
    instruction: str = "first"
    input_modeling: str = "off"
    format: str = "lines"
    labels: str = "text"
    unmentioned: str = "placeholder"
    reasoning: str = "none"

    def __post_init__(self):
        for option in fields(self):
            value = getattr(self, option.name)
            if value not in OPTIONS[option.name]:
                raise UserError(f"design option {option.name}={value!r}; "
                                f"choose one of: {', '.join(OPTIONS[option.name])}")

    @property
    def supervise_prompt(self) -> bool:
        return self.input_modeling == "on"


ES_SDE = Design()
PRESETS: dict[str, Design] = {
    "ES-SDE": ES_SDE,
    "inst-last": replace(ES_SDE, instruction="last"),
    "no-inst": replace(ES_SDE, instruction="none"),
    "MI": replace(ES_SDE, input_modeling="on"),
    "json": replace(ES_SDE, format="json"),
    "natural": replace(ES_SDE, format="natural"),
    "numeric": replace(ES_SDE, labels="numeric"),
    "omit": replace(ES_SDE, unmentioned="omit"),
    "cot": replace(ES_SDE, reasoning="cot"),
    "rcot": replace(ES_SDE, reasoning="rcot"),
}


def parse_design(spec: str) -> Design:
    """A preset name, or comma-separated `option=value` overrides of ES-SDE."""
    if spec in PRESETS:
        return PRESETS[spec]
    overrides = {}
    for item in spec.split(","):
        option, sep, value = item.partition("=")
        if not sep or option.strip() not in OPTIONS:
            raise UserError(
                f"unknown design {spec!r}; use a preset ({', '.join(PRESETS)}) or option=value pairs "
                f"with options {', '.join(OPTIONS)}"
            )
        overrides[option.strip()] = value.strip()
    return replace(ES_SDE, **overrides)


# --- Building samples ----------------------------------------------------------------------------


def label_text(label: str, design: Design) -> str:
    return str(NUMERIC_CODES[label]) if design.labels == "numeric" else TEXT_LABELS[label]


def instruction(domain: str, design: Design) -> str:
    names = "、".join(DOMAINS[domain].values())
    if design.labels == "numeric":
        scale = "用 1（正面）、0（中性）、-1（负面）、-2（未提及）表示"
    else:
        scale = "回答正面、中性、负面或未提及"
    text = f"请分析这条餐厅评论在以下方面的情感：{names}。每个方面{scale}。"
    if design.unmentioned == "omit":
        text += "只列出评论提到的方面。"
    text += {"lines": "每行写一个“方面：情感”。", "json": "用 JSON 对象回答。",
             "natural": "用完整的句子回答。"}[design.format]
    text += {"none": "", "cot": "先写分析，再给出答案。", "rcot": "先给出答案，再写分析。"}[design.reasoning]
    return text


def build_prompt(record: dict, design: Design) -> str:
    review = f"评论：{record['review']}"
    if design.instruction == "none":
        return review
    task = instruction(record["domain"], design)
    return f"{task}\n{review}" if design.instruction == "first" else f"{review}\n{task}"


def _listed(labels: dict[str, str], domain: str, design: Design) -> list[tuple[str, str]]:
    """(Chinese aspect name, label) pairs the target lists, in the domain's order."""
    return [(name, labels[aspect]) for aspect, name in DOMAINS[domain].items()
            if design.unmentioned == "placeholder" or labels[aspect] != "unmentioned"]


def render_answer(labels: dict[str, str], domain: str, design: Design) -> str:
    listed = _listed(labels, domain, design)
    if design.format == "lines":
        return "\n".join(f"{name}：{label_text(label, design)}" for name, label in listed)
    if design.format == "json":
        values = {name: NUMERIC_CODES[label] if design.labels == "numeric" else TEXT_LABELS[label]
                  for name, label in listed}
        return json.dumps(values, ensure_ascii=False)
    return "".join(_natural_sentence(name, label, design) for name, label in listed) or "评论没有提到任何方面。"


def _natural_sentence(name: str, label: str, design: Design) -> str:
    if design.labels == "numeric":
        return f"{name}方面的标签是{NUMERIC_CODES[label]}。"
    if label == "unmentioned":
        return f"评论没有提到{name}。"
    return f"{name}方面的评价是{TEXT_LABELS[label]}的。"


def reasoning_text(record: dict) -> str:
    """The analysis: which aspects the review mentions, quoting the evidence when the data has it."""
    names = DOMAINS[record["domain"]]
    evidence = record.get("evidence") or {}
    mentioned = [aspect for aspect in names if record["labels"][aspect] != "unmentioned"]
    if not mentioned:
        return "评论没有提到任何方面。"
    parts = [f"{names[a]}（“{evidence[a]}”）" if a in evidence else names[a] for a in mentioned]
    return f"评论提到了{'、'.join(parts)}，其余方面没有提到。"


def build_target(record: dict, design: Design) -> str:
    answer = render_answer(record["labels"], record["domain"], design)
    if design.reasoning == "cot":
        return f"{REASON_MARK}{reasoning_text(record)}\n{ANSWER_MARK}\n{answer}"
    if design.reasoning == "rcot":
        return f"{ANSWER_MARK}\n{answer}\n{REASON_MARK}{reasoning_text(record)}"
    return answer


def build_sample(record: dict, design: Design) -> dict:
    """The q/a record tokenize_dataset_rows.py reads."""
    return {"q": build_prompt(record, design), "a": build_target(record, design)}


# --- Parsing outputs -----------------------------------------------------------------------------


@dataclass
class Parsed:
    labels: dict[str, str] | None  # aspect key -> label; None on a format error
    error: str | None = None


def _answer_block(output: str, design: Design) -> str:
    if design.reasoning == "none":
        return output
    if design.reasoning == "cot":
        if ANSWER_MARK not in output:
            raise ValueError(f"no {ANSWER_MARK!r} after the analysis")
        return output.split(ANSWER_MARK, 1)[1]
    if not output.lstrip().startswith(ANSWER_MARK):
        raise ValueError(f"does not start with {ANSWER_MARK!r}")
    block = output.lstrip()[len(ANSWER_MARK):]
    if REASON_MARK not in block:
        raise ValueError(f"no {REASON_MARK!r} after the answer")
    return block.split(REASON_MARK, 1)[0]


class _JsonPairs(list):
    """A JSON object's (key, value) pairs in the order written (a JSON array stays a plain list)."""


def _pairs(block: str, design: Design) -> list[tuple[str, str]]:
    """(aspect name, label text) pairs written in the block, or ValueError if it is malformed."""
    block = block.strip()
    if design.format == "lines":
        pairs = []
        for line in filter(None, (line.strip() for line in block.splitlines())):
            name, sep, value = line.partition("：")
            if not sep:
                raise ValueError(f"line {line!r} is not “方面：情感”")
            pairs.append((name.strip(), value.strip()))
        return pairs
    if design.format == "json":
        try:  # keep the pairs as written, so a repeated aspect is seen, not silently overwritten
            values = json.loads(block, object_pairs_hook=_JsonPairs)
        except json.JSONDecodeError:
            raise ValueError("not valid JSON") from None
        if not isinstance(values, _JsonPairs):
            raise ValueError("JSON is not an object")
        return [(str(name), str(value)) for name, value in values]
    if design.labels == "numeric":
        sentence = re.compile(r"(.+?)方面的标签是(-?\d+)。")
    else:
        sentence = re.compile(r"评论没有提到(.+?)。|(.+?)方面的评价是(正面|中性|负面)的。")
    if block == "评论没有提到任何方面。":
        return []
    pairs, position = [], 0
    for match in sentence.finditer(block):
        if match.start() != position:
            raise ValueError(f"unparsable text {block[position:match.start()]!r}")
        position = match.end()
        groups = match.groups()
        if len(groups) == 2:
            pairs.append((groups[0], groups[1]))
        elif groups[0] is not None:
            pairs.append((groups[0], TEXT_LABELS["unmentioned"]))
        else:
            pairs.append((groups[1], groups[2]))
    if position != len(block):
        raise ValueError(f"unparsable text {block[position:]!r}")
    return pairs


def parse_output(output: str, domain: str, design: Design) -> Parsed:
    """Labels for every aspect of `domain` from a model's output, or the format error it contains.

    A format error: the expected structure is missing, an aspect is unknown or repeated, a label
    is not one the design uses, or (placeholder designs) an aspect is left out."""
    by_name = {name: aspect for aspect, name in DOMAINS[domain].items()}
    by_text = {label_text(label, design): label for label in LABELS}
    try:
        pairs = _pairs(_answer_block(output, design), design)
        labels: dict[str, str] = {}
        for name, value in pairs:
            if name not in by_name:
                raise ValueError(f"unknown aspect {name!r}")
            if by_name[name] in labels:
                raise ValueError(f"aspect {name!r} given twice")
            if value not in by_text:
                raise ValueError(f"unknown label {value!r} for {name}")
            labels[by_name[name]] = by_text[value]
        missing = [name for name, aspect in by_name.items() if aspect not in labels]
        if missing and design.unmentioned == "placeholder":
            raise ValueError(f"aspect(s) {', '.join(missing)} missing")
    except ValueError as err:
        return Parsed(None, str(err))
    return Parsed({aspect: labels.get(aspect, "unmentioned") for aspect in by_name.values()})
