"""Reading instruction records: json/jsonl files, validated with `file:line` errors, in the
q/a, alpaca, OpenAI messages and ShareGPT layouts, turned into `Conversation`s."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .cli import UserError


@dataclass
class Conversation:
    """One training sample: (question, answer) turns in order, and an optional system prompt."""

    turns: list[tuple[str, str]]
    system: str | None = None


RECORD_FORMATS = ("auto", "qa", "alpaca", "messages", "sharegpt")


@dataclass
class RecordKeys:
    """How records are laid out. `qa` uses the keys below; the other formats have fixed keys:
    alpaca `instruction/input/output` (+ `history` pairs, `system`), messages (OpenAI `messages`
    with system/user/assistant roles), sharegpt (`conversations` of `from`/`value`, + `system`).
    `auto` picks the format from the first record's keys."""

    prompt: str = "q"
    target: str = "a"
    history: str | None = None
    system: str | None = None
    format: str = "qa"


def not_utf8_error(path: str | Path, lines: Iterable[bytes]) -> UserError:
    """`file:line:column: not UTF-8 text (byte 0x..)`, for the first undecodable byte of `lines`
    (the file's raw lines; a newline byte never occurs inside a multi-byte UTF-8 character)."""
    for lineno, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            column = len(line[:err.start].decode("utf-8")) + 1
            return UserError(f"{path}:{lineno}:{column}: not UTF-8 text (byte 0x{line[err.start]:02x}); "
                             "re-save the file as UTF-8")
    return UserError(f"{path}: not UTF-8 text; re-save the file as UTF-8")


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a .jsonl (one object a line) or .json (a list of objects) file, each with its
    location for error messages (`file:line` or `file: record N`)."""
    path = Path(path)
    if path.suffix not in {".json", ".jsonl"}:
        raise UserError(f"{path}: expected a .json or .jsonl file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise not_utf8_error(path, raw.splitlines(keepends=True)) from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty")

    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(records, list):
            raise UserError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
        located = [(f"{path}: record {i}", record) for i, record in enumerate(records, start=1)]
        for where, record in located:
            if not isinstance(record, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    else:
        located = [(f"{path}:{lineno}", parse_json_line(line, f"{path}:{lineno}"))
                   for lineno, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not located:
        raise UserError(f"{path}: no records in the file")
    return located


def parse_json_line(line: str, where: str) -> dict:
    """One jsonl line as a JSON object, or a UserError located at `where` (`file:line`)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _text_field(record: dict, key: str, where: str, what: str, flag: str) -> str:
    if key not in record:
        found = ", ".join(record) or "no keys"
        raise UserError(f"{where}: no key {key!r} (found: {found}); pass {flag} <key>")
    value = record[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if what == "answer" and not value.strip():
        raise UserError(f"{where}: empty answer in {key!r}")
    return value


def _history_pairs(record: dict, key: str, where: str) -> list[tuple[str, str]]:
    history = record.get(key) or []
    if not isinstance(history, list) or not all(
        isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
        for pair in history
    ):
        raise UserError(f"{where}: {key!r} must be a list of [question, answer] string pairs")
    for _, past_answer in history:
        if not past_answer.strip():
            raise UserError(f"{where}: empty answer in {key!r}")
    return [tuple(pair) for pair in history]


def _optional_system(record: dict, key: str | None, where: str) -> str | None:
    if key is None or record.get(key) is None:
        return None
    return _text_field(record, key, where, "system", "--system_key")


def _qa_conversation(record: dict, keys: RecordKeys, where: str) -> Conversation:
    query = _text_field(record, keys.prompt, where, "question", "--prompt_key")
    answer = _text_field(record, keys.target, where, "answer", "--target_key")
    history = _history_pairs(record, keys.history, where) if keys.history is not None else []
    return Conversation(turns=[*history, (query, answer)], system=_optional_system(record, keys.system, where))


def _alpaca_conversation(record: dict, keys: RecordKeys, where: str) -> Conversation:
    instruction = _text_field(record, "instruction", where, "question", "--format")
    extra_input = record.get("input") or ""
    if not isinstance(extra_input, str):
        raise UserError(f"{where}: 'input' must be a string, got {type(extra_input).__name__}")
    answer = _text_field(record, "output", where, "answer", "--format")
    query = f"{instruction}\n{extra_input}" if extra_input.strip() else instruction
    history = _history_pairs(record, keys.history or "history", where)
    return Conversation(turns=[*history, (query, answer)], system=_optional_system(record, keys.system or "system", where))


def _role_conversation(messages, where: str, field: str, role_key: str, text_key: str,
                       roles: dict[str, str], system: str | None) -> Conversation:
    """Turns from a list of role-tagged messages: an optional system message first, then
    alternating user/assistant messages that end with the assistant."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: {field!r} must be a non-empty list of messages")
    turns: list[tuple[str, str]] = []
    expected = "user"
    pending_query = None
    for index, message in enumerate(messages):
        here = f"{where}: {field}[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get(role_key), str):
            raise UserError(f"{here} must be an object with a {role_key!r} string")
        role = roles.get(message[role_key])
        if role is None:
            raise UserError(f"{here} has unknown {role_key} {message[role_key]!r}; expected one of: {', '.join(roles)}")
        text = message.get(text_key)
        if not isinstance(text, str):
            raise UserError(f"{here} {text_key!r} must be a string")
        if role == "system":
            if index != 0:
                raise UserError(f"{here}: a system message may only come first")
            system = text
            continue
        if role != expected:
            raise UserError(f"{here} has role {role!r} where {expected!r} was expected (turns alternate user, assistant)")
        if role == "user":
            pending_query, expected = text, "assistant"
        else:
            if not text.strip():
                raise UserError(f"{here}: empty assistant message")
            turns.append((pending_query, text))
            expected = "user"
    if expected == "assistant" or not turns:
        raise UserError(f"{where}: {field!r} must end with an assistant message")
    return Conversation(turns=turns, system=system)


OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def detect_format(record: dict) -> str:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return "qa"


def record_to_conversation(record: dict, keys: RecordKeys, where: str) -> Conversation:
    """Validate one record in the format `keys.format` and return its turns."""
    record_format = detect_format(record) if keys.format == "auto" else keys.format
    if record_format == "qa":
        return _qa_conversation(record, keys, where)
    if record_format == "alpaca":
        return _alpaca_conversation(record, keys, where)
    if record_format == "messages":
        return _role_conversation(record.get("messages"), where, "messages", "role", "content", OPENAI_ROLES,
                                  _optional_system(record, keys.system, where))
    if record_format == "sharegpt":
        return _role_conversation(record.get("conversations"), where, "conversations", "from", "value",
                                  SHAREGPT_ROLES, _optional_system(record, keys.system or "system", where))
    raise UserError(f"unknown --format {keys.format!r}; choose one of: {', '.join(RECORD_FORMATS)}")


def load_conversations(path: str | Path, keys: RecordKeys) -> list[Conversation]:
    records = read_records(path)
    if keys.format == "auto":  # one format per file, chosen by its first record
        keys = RecordKeys(keys.prompt, keys.target, keys.history, keys.system, detect_format(records[0][1]))
    warn_unused_history(path, [record for _, record in records], keys)
    return [record_to_conversation(record, keys, where) for where, record in records]


def warn_unused_history(path: str | Path, records: list[dict], keys: RecordKeys) -> None:
    """q/a records read without --history_key lose their earlier turns: say so if they have some."""
    if keys.format != "qa" or keys.history is not None:
        return
    with_history = sum(1 for record in records if record.get("history"))
    if with_history:
        print(f"warning: {with_history} of {len(records)} records in {path} have a 'history' key that is not "
              f"used, so their earlier turns are dropped; pass --history_key history to train on them",
              file=sys.stderr)
