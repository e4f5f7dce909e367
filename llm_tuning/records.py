"""Reading instruction records: json/jsonl files, validated with `file:line` errors, in the
q/a, alpaca, OpenAI messages and ShareGPT layouts, turned into `Conversation`s (conversation.py).

`messages` records may carry what thinking models and agents are tuned on: an assistant
`reasoning_content` (or a reply that begins with `<think>…</think>`), assistant `tool_calls`
(arguments as a JSON string or object), `tool` messages with `tool_call_id`, and a record-level
`tools` list (JSON-schema functions). ShareGPT's `function_call` / `observation` turns and its
`tools` string (the LLaMA-Factory convention) map to the same."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .cli import UserError
from .conversation import Conversation

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
    return list(iter_records(path))


def iter_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """`read_records` one record at a time: a .jsonl file is read a line at a time, so memory does
    not grow with the file (a .json list is parsed whole)."""
    path = Path(path)
    if path.suffix not in {".json", ".jsonl"}:
        raise UserError(f"{path}: expected a .json or .jsonl file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    if path.suffix == ".json":
        yield from _json_list_records(path)
        return
    count = 0
    with path.open("rb") as lines:
        for lineno, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise not_utf8_error(path, [b""] * (lineno - 1) + [raw]) from None
            if line.strip():
                count += 1
                yield f"{path}:{lineno}", parse_json_line(line, f"{path}:{lineno}")
    if count == 0:  # blank lines only
        raise UserError(f"{path}: the file is empty")


def _json_list_records(path: Path) -> list[tuple[str, dict]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise not_utf8_error(path, raw.splitlines(keepends=True)) from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
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
    return Conversation.from_turns([*history, (query, answer)], _optional_system(record, keys.system, where))


def _alpaca_conversation(record: dict, keys: RecordKeys, where: str) -> Conversation:
    instruction = _text_field(record, "instruction", where, "question", "--format")
    extra_input = record.get("input") or ""
    if not isinstance(extra_input, str):
        raise UserError(f"{where}: 'input' must be a string, got {type(extra_input).__name__}")
    answer = _text_field(record, "output", where, "answer", "--format")
    query = f"{instruction}\n{extra_input}" if extra_input.strip() else instruction
    history = _history_pairs(record, keys.history or "history", where)
    return Conversation.from_turns([*history, (query, answer)],
                                   _optional_system(record, keys.system or "system", where))


def _role_conversation(messages, where: str, field: str, role_key: str, text_key: str,
                       roles: dict[str, str], system: str | None, tools: list[dict] | None) -> Conversation:
    """A conversation from role-tagged messages: an optional system message first, then user
    messages, each answered by the assistant, whose tool calls are followed by tool results and
    then more assistant messages. It ends with an assistant message (the last one supervised)."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: {field!r} must be a non-empty list of messages")
    out: list[dict] = []
    expected = ("user",)
    for index, message in enumerate(messages):
        here = f"{where}: {field}[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get(role_key), str):
            raise UserError(f"{here} must be an object with a {role_key!r} string")
        role = roles.get(message[role_key])
        if role is None:
            raise UserError(f"{here} has unknown {role_key} {message[role_key]!r}; expected one of: {', '.join(roles)}")
        if role == "system":
            if index != 0:
                raise UserError(f"{here}: a system message may only come first")
            system = _message_text(message, text_key, here)
            continue
        kind = "assistant" if role == "function_call" else role
        if kind not in expected:
            raise UserError(f"{here} has role {message[role_key]!r} where {' or '.join(map(repr, expected))} was "
                            "expected (user and assistant alternate; tool results follow an assistant's tool calls)")
        if role == "user":
            out.append({"role": "user", "content": _message_text(message, text_key, here)})
            expected = ("assistant",)
        elif role == "tool":
            out.append(_tool_result(message, text_key, here))
            expected = ("tool", "assistant")
        else:
            reply = (_function_call(message, text_key, here) if role == "function_call"
                     else _assistant_message(message, text_key, here))
            out.append(reply)
            expected = ("tool",) if reply.get("tool_calls") else ("user",)
    if out[-1]["role"] != "assistant":
        raise UserError(f"{where}: {field!r} must end with an assistant message")
    head = [{"role": "system", "content": system}] if system else []
    return Conversation(head + out, tools)


def _message_text(message: dict, key: str, here: str) -> str:
    text = message.get(key)
    if not isinstance(text, str):
        raise UserError(f"{here} {key!r} must be a string")
    return text


def _assistant_message(message: dict, key: str, here: str) -> dict:
    calls = message.get("tool_calls")
    text = message.get(key)
    if text is not None and not isinstance(text, str):
        raise UserError(f"{here} {key!r} must be a string")
    reply = {"role": "assistant", "content": text or ""}
    if calls is not None:
        if not isinstance(calls, list) or not calls:
            raise UserError(f"{here} 'tool_calls' must be a non-empty list")
        reply["tool_calls"] = [_tool_call(call, f"{here} tool_calls[{i}]") for i, call in enumerate(calls)]
    elif not (text or "").strip():
        raise UserError(f"{here}: empty assistant message")
    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise UserError(f"{here} 'reasoning_content' must be a string")
        if reasoning.strip():
            reply["reasoning_content"] = reasoning
    return reply


def _tool_call(call, here: str) -> dict:
    """One OpenAI tool call, its arguments parsed into an object."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise UserError(f"{here} must be "
                        f"{{\"type\": \"function\", \"function\": {{\"name\": ..., \"arguments\": ...}}}}")
    normalized = {"type": "function", "function": {"name": function["name"],
                                                   "arguments": _arguments(function.get("arguments", {}), here)}}
    if isinstance(call.get("id"), str):
        normalized["id"] = call["id"]
    return normalized


def _arguments(arguments, here: str) -> dict:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            raise UserError(f"{here} arguments are not valid JSON ({err.msg})") from None
    if not isinstance(arguments, dict):
        raise UserError(f"{here} arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments


def _function_call(message: dict, key: str, here: str) -> dict:
    """ShareGPT's `function_call` turn: a JSON object (or list of them) with `name` and `arguments`."""
    text = _message_text(message, key, here)
    try:
        calls = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{here} is not valid JSON ({err.msg}); a function_call holds "
                        '{"name": ..., "arguments": {...}}') from None
    calls = calls if isinstance(calls, list) else [calls]
    return {"role": "assistant", "content": "", "tool_calls": [
        _tool_call({"function": call if isinstance(call, dict) else None}, f"{here} call {i}")
        for i, call in enumerate(calls)]}


def _tool_result(message: dict, key: str, here: str) -> dict:
    result = {"role": "tool", "content": _message_text(message, key, here)}
    if isinstance(message.get("tool_call_id"), str):
        result["tool_call_id"] = message["tool_call_id"]
    if isinstance(message.get("name"), str):
        result["name"] = message["name"]
    return result


def _tools(record: dict, where: str) -> list[dict] | None:
    """The record's `tools`: a list (or a JSON string of one) of functions, in OpenAI's
    `{"type": "function", "function": {...}}` form or as bare `{"name", "description", "parameters"}`."""
    tools = record.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: 'tools' is not valid JSON ({err.msg})") from None
    if not isinstance(tools, list):
        raise UserError(f"{where}: 'tools' must be a list of functions")
    normalized = []
    for index, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UserError(f"{where}: tools[{index}] must be a function with a 'name' "
                            '({"type": "function", "function": {"name": ..., "parameters": {...}}})')
        normalized.append({"type": "function", "function": function})
    return normalized


OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "function_call", "observation": "tool", "tool": "tool"}


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
                                  _optional_system(record, keys.system, where), _tools(record, where))
    if record_format == "sharegpt":
        return _role_conversation(record.get("conversations"), where, "conversations", "from", "value",
                                  SHAREGPT_ROLES, _optional_system(record, keys.system or "system", where),
                                  _tools(record, where))
    raise UserError(f"unknown --format {keys.format!r}; choose one of: {', '.join(RECORD_FORMATS)}")


def iter_located_conversations(path: str | Path, keys: RecordKeys,
                               limit: int | None = None) -> Iterator[tuple[str, Conversation]]:
    """Each record of the file (the first `limit`) as (its location for error messages, its
    conversation), read one at a time; with `--format auto` the first record decides the format."""
    with_history = read = 0
    for where, record in itertools.islice(iter_records(path), limit):
        if keys.format == "auto":  # one format per file, chosen by its first record
            keys = RecordKeys(keys.prompt, keys.target, keys.history, keys.system, detect_format(record))
        read += 1
        with_history += bool(keys.format == "qa" and keys.history is None and record.get("history"))
        yield where, record_to_conversation(record, keys, where)
    warn_unused_history(path, with_history, read)


def load_located_conversations(path: str | Path, keys: RecordKeys) -> list[tuple[str, Conversation]]:
    return list(iter_located_conversations(path, keys))


def load_conversations(path: str | Path, keys: RecordKeys) -> list[Conversation]:
    return [conversation for _, conversation in iter_located_conversations(path, keys)]


def warn_unused_history(path: str | Path, with_history: int, read: int) -> None:
    """q/a records read without --history_key lose their earlier turns: say so if some had them."""
    if with_history:
        print(f"warning: {with_history} of {read} records in {path} have a 'history' key that is not "
              f"used, so their earlier turns are dropped; pass --history_key history to train on them",
              file=sys.stderr)
