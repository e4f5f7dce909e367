"""Write the two tutorial sets for thinking models and agents, deterministically, in Chinese and English.

    python data/make_agent_data.py [--rows 48] [--seed 7]

- data/reasoning_math.jsonl: two-digit addition and subtraction; each answer comes with a short
  column-by-column reasoning trace in `reasoning_content`.
- data/tool_calls.jsonl: questions answered with two tools, `calculator` and `lookup` (a small fact
  table): one call, two calls in a row (look a number up, then compute with it), or no call at all.
  OpenAI `messages` with `tools`, assistant `tool_calls` and `tool` results.
"""

import argparse
import json
import operator
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}

TOOLS = [
    {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression. 计算算式。",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
    {"type": "function", "function": {
        "name": "lookup", "description": "Look up a fact. 查询事实。",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
]
# lookup facts: (English query, Chinese query, English value, Chinese value)
FACTS = [
    ("capital of France", "法国的首都", "Paris", "巴黎"),
    ("capital of Japan", "日本的首都", "Tokyo", "东京"),
    ("capital of China", "中国的首都", "Beijing", "北京"),
    ("largest planet", "最大的行星", "Jupiter", "木星"),
    ("boiling point of water in Celsius", "水的沸点（摄氏度）", "100", "100"),
    ("capital of Germany", "德国的首都", "Berlin", "柏林"),
    ("capital of Italy", "意大利的首都", "Rome", "罗马"),
    ("highest mountain", "最高的山", "Mount Everest", "珠穆朗玛峰"),
    ("number of continents", "大洲的数量", "7", "7"),
]
# units for the two-step questions: (English unit, Chinese unit, English lookup, Chinese lookup, per unit, target)
UNITS = [
    ("weeks", "周", "days in a week", "一周的天数", 7, ("days", "天")),
    ("days", "天", "hours in a day", "一天的小时数", 24, ("hours", "小时")),
    ("hours", "小时", "minutes in an hour", "一小时的分钟数", 60, ("minutes", "分钟")),
    ("dozens", "打", "items in a dozen", "一打的个数", 12, ("items", "个")),
]


def column_trace(a: int, b: int, op: str, chinese: bool) -> str:
    """Digit by digit, ones then tens, with the carry or borrow said out loud."""
    ones_a, ones_b, tens_a, tens_b = a % 10, b % 10, a // 10, b // 10
    if op == "+":
        ones = ones_a + ones_b
        carry = ones // 10
        tens = tens_a + tens_b + carry
        if chinese:
            return (f"个位：{ones_a} + {ones_b} = {ones}" + ("，写 " + str(ones % 10) + " 进 1。" if carry else "。")
                    + f"十位：{tens_a} + {tens_b}" + (" + 1" if carry else "") + f" = {tens}。")
        return (f"Ones: {ones_a} + {ones_b} = {ones}" + (f", write {ones % 10} carry 1. " if carry else ". ")
                + f"Tens: {tens_a} + {tens_b}" + (" + 1" if carry else "") + f" = {tens}.")
    borrow = int(ones_a < ones_b)
    ones = ones_a + 10 * borrow - ones_b
    tens = tens_a - borrow - tens_b
    if chinese:
        return (f"个位：{ones_a}" + (" 借 1 变成 " + str(ones_a + 10) if borrow else "") + f"，减 {ones_b} 得 {ones}。"
                + f"十位：{tens_a}" + (" - 1" if borrow else "") + f" - {tens_b} = {tens}。")
    return (f"Ones: {ones_a}" + (f" borrows 1 to make {ones_a + 10}" if borrow else "")
            + f", minus {ones_b} is {ones}. "
            + f"Tens: {tens_a}" + (" - 1" if borrow else "") + f" - {tens_b} = {tens}.")


def reasoning_row(rng: random.Random) -> dict:
    op = rng.choice("+-")
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if op == "-" and a < b:
        a, b = b, a
    result = OPERATIONS[op](a, b)
    chinese = rng.random() < 0.5
    question = f"计算 {a} {op} {b} 等于多少？" if chinese else f"What is {a} {op} {b}?"
    return {"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "reasoning_content": column_trace(a, b, op, chinese),
         "content": f"{a} {op} {b} = {result}"},
    ]}


def call(name: str, **arguments) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments}}]}


# Messages that need no tool: (question, answer)
SMALL_TALK = {
    "zh": [("你好！", "你好！需要我查资料或者算数吗？"), ("谢谢你！", "不客气！"),
           ("你是谁？", "我是一个会用计算器和查询工具的助手。"),
           ("早上好！", "早上好！今天想算点什么？"), ("再见！", "再见！")],
    "en": [("Hello!", "Hello! Shall I look something up or compute something?"), ("Thank you!", "You are welcome!"),
           ("Who are you?", "An assistant with a calculator and a lookup tool."),
           ("Good morning!", "Good morning! What shall we compute today?"), ("Goodbye!", "Goodbye!")],
}
# Every 8 rows hold each kind of conversation, so any prefix of the file is a fair sample of it.
TOOL_KINDS = ("two-step", "calculator", "lookup", "none", "two-step", "calculator", "lookup", "two-step")


def tool_row(rng: random.Random, kind: str, chinese: bool) -> dict:
    if kind == "calculator":
        a, b, op = rng.randint(11, 99), rng.randint(3, 19), rng.choice("*+-")
        expression = f"{a} {op} {b}"
        result = str(OPERATIONS[op](a, b))
        question = f"请用计算器算 {expression}。" if chinese else f"Use the calculator: {expression}?"
        turns = [call("calculator", expression=expression), {"role": "tool", "content": result},
                 {"role": "assistant", "content": f"{expression} = {result}"}]
    elif kind == "lookup":
        en_query, zh_query, en_value, zh_value = rng.choice(FACTS)
        question = f"请查一下{zh_query}。" if chinese else f"Please look up the {en_query}."
        value = zh_value if chinese else en_value
        turns = [call("lookup", query=zh_query if chinese else en_query), {"role": "tool", "content": value},
                 {"role": "assistant",
                  "content": f"{zh_query}是{value}。" if chinese else f"The {en_query} is {value}."}]
    elif kind == "two-step":
        en_unit, zh_unit, en_lookup, zh_lookup, per_unit, (en_target, zh_target) = rng.choice(UNITS)
        count = rng.randint(2, 9)
        expression = f"{count} * {per_unit}"
        total = count * per_unit
        question = (f"{count} {zh_unit}有多少{zh_target}？" if chinese
                    else f"How many {en_target} are in {count} {en_unit}?")
        answer = (f"{count} {zh_unit}有 {total} {zh_target}。" if chinese
                  else f"There are {total} {en_target} in {count} {en_unit}.")
        turns = [call("lookup", query=zh_lookup if chinese else en_lookup), {"role": "tool", "content": str(per_unit)},
                 call("calculator", expression=expression), {"role": "tool", "content": str(total)},
                 {"role": "assistant", "content": answer}]
    else:
        question, answer = rng.choice(SMALL_TALK["zh" if chinese else "en"])
        turns = [{"role": "assistant", "content": answer}]
    return {"tools": TOOLS, "messages": [{"role": "user", "content": question}, *turns]}


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48, help="rows in each file")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    write(DATA_DIR / "reasoning_math.jsonl", distinct(lambda n: reasoning_row(rng), args.rows))
    write(DATA_DIR / "tool_calls.jsonl",
          distinct(lambda n: tool_row(rng, TOOL_KINDS[n % len(TOOL_KINDS)], chinese=(n + n // 8) % 2 == 0), args.rows))


def distinct(make, count: int) -> list[dict]:
    """`count` rows of `make(n)` whose questions all differ (a repeat is drawn again)."""
    rows, questions = [], set()
    for _ in range(100 * count):
        if len(rows) == count:
            break
        row = make(len(rows))
        question = row["messages"][0]["content"]
        if question not in questions:
            questions.add(question)
            rows.append(row)
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} distinct rows can be made; ask for fewer with --rows")
    return rows


if __name__ == "__main__":
    main()
