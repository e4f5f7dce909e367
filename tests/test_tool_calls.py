"""Tool calls and reasoning read out of replies (llm_tuning/tool_calls.py, llm_tuning/reply_parts.py),
on what real templates render: Qwen3's Hermes blocks, Llama-3.1's JSON calls."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer

from llm_tuning.native_template import render
from llm_tuning.reply_parts import CONTENT, REASONING, ReplyParser, ReplyPiece, prompt_opens_reasoning, read_reply
from llm_tuning.tool_calls import HermesFormat, JsonFormat, ToolCall, call_opening, tool_call_format

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def qwen3(real_tokenizer_dir):
    return AutoTokenizer.from_pretrained(real_tokenizer_dir("qwen3"))


@pytest.fixture(scope="module")
def llama31(llama3_1_tools_dir):
    return AutoTokenizer.from_pretrained(llama3_1_tools_dir)


def call(name: str, arguments: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def rendered_turn(tokenizer, message: dict, tools: list[dict]) -> str:
    """What the template writes for assistant `message` after a question, up to its end-of-turn."""
    messages = [{"role": "user", "content": "Weather in Zürich and the time in Tokyo?"}, message]
    prompt = render(tokenizer, messages[:1], tools, generation_prompt=True)
    full = render(tokenizer, messages, tools, generation_prompt=False)
    assert full.startswith(prompt)
    end = min(i for stop in ("<|im_end|>", "<|eot_id|>") if (i := full.find(stop, len(prompt))) >= 0)
    return full[len(prompt):end]


def test_the_syntax_is_found_by_rendering_a_probe_call(qwen3, llama31, real_tokenizer_dir, tiny_model):
    assert isinstance(tool_call_format(qwen3), HermesFormat)
    assert isinstance(tool_call_format(llama31), JsonFormat)
    assert isinstance(tool_call_format(AutoTokenizer.from_pretrained(tiny_model("qwen3"))), HermesFormat)
    # templates that write no tool calls have no syntax
    assert tool_call_format(AutoTokenizer.from_pretrained(real_tokenizer_dir("llama3"))) is None
    assert tool_call_format(AutoTokenizer.from_pretrained(tiny_model("qwen2"))) is None


def test_qwen3_calls_are_read_back_from_its_own_rendering(qwen3):
    arguments = [{"city": "Zürich", "days": 2}, {"zone": "Asia/Tokyo"}]
    message = {"role": "assistant", "content": "Let me check both.",
               "tool_calls": [call("get_weather", arguments[0]), call("get_time", arguments[1])]}
    turn = rendered_turn(qwen3, message, [WEATHER, TIME])
    assert turn.count("<tool_call>") == 2
    reasoning, content, calls = read_reply(turn, tool_call_format(qwen3))
    assert reasoning is None and content == "Let me check both."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", arguments[0]),
                                                                   ("get_time", arguments[1])]


def test_llama31_json_call_is_read_back_from_its_own_rendering(llama31):
    message = {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Zürich", "days": 2})]}
    turn = rendered_turn(llama31, message, [WEATHER])
    assert turn.startswith('{"name": "get_weather", "parameters": ')
    for reply in (turn, "<|python_tag|>" + turn, turn + "; " + turn):  # tagged; two calls as vLLM reads them
        _, content, calls = read_reply(reply, tool_call_format(llama31))
        assert content == "" and all(c == ToolCall("get_weather", '{"city": "Zürich", "days": 2}') for c in calls)
        assert len(calls) == 1 + ("; " in reply)


def test_a_forced_call_opens_as_the_template_writes_it(qwen3, llama31):
    assert call_opening(qwen3, False) == '<tool_call>\n{"name": "'
    assert call_opening(qwen3, False, "get_time") == '<tool_call>\n{"name": "get_time", "arguments": '
    # thinking on: a call turn without reasoning opens with the empty think block, as Qwen3 writes it
    assert call_opening(qwen3, True, "get_time") == ('<think>\n\n</think>\n\n'
                                                     '<tool_call>\n{"name": "get_time", "arguments": ')
    assert call_opening(llama31, False, "get_time") == '{"name": "get_time", "parameters": '
    for tokenizer in (qwen3, llama31):
        turn = rendered_turn(tokenizer, {"role": "assistant", "content": "",
                                         "tool_calls": [call("get_time", {"zone": "UTC"})]},
                             [TIME])
        assert turn.startswith(call_opening(tokenizer, False, "get_time"))


MALFORMED_HERMES = [
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n',  # never closed (cut by max_tokens)
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC",}}\n</tool_call>',  # not JSON
    '<tool_call>\n{"arguments": {"zone": "UTC"}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": "get_time", "arguments": "UTC"}\n</tool_call>',  # arguments not an object
    '<tool_call>\n["get_time"]\n</tool_call>',
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call> and then more text',  # text after it
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": ',  # 2nd cut off
]
MALFORMED_JSON = [
    '{"name": "get_time", "parameters": {"zone": "UTC"}',  # cut off
    '{"answer": 42}',  # JSON, but no call
    '{"name": "get_time"}',  # no parameters
    '{"name": "get_time", "parameters": {}} is what I would call',
    'The time: {"name": "get_time", "parameters": {}}',  # Llama-3.1 writes a call as the whole reply
]


@pytest.mark.parametrize("tool_format, reply", [(HermesFormat(), r) for r in MALFORMED_HERMES]
                         + [(JsonFormat(), r) for r in MALFORMED_JSON])
def test_a_reply_that_does_not_parse_is_all_plain_content(tool_format, reply):
    assert tool_format.parse(reply) is None
    assert read_reply(reply, tool_format) == (None, reply, [])


def test_calls_to_functions_not_offered_leave_the_reply_plain():
    reply = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    assert read_reply(reply, HermesFormat(), ["get_time"]) == (None, reply, [])
    assert read_reply(reply, HermesFormat(), ["rm_rf"])[2] == [ToolCall("rm_rf", "{}")]


REPLIES = [  # (reply, prompt opened the think block, expected reasoning, content, call names)
    ("<think>\nFirst the city.\n</think>\n\nI will look.\n\n<tool_call>\n"
     '{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>', False,
     "First the city.", "I will look.", ["get_weather"]),
    ("<think>\n\n</think>\n\nIt is <b>sunny</b> </thinking> <tool_ 1 < 2", False, None,
     "It is <b>sunny</b> </thinking> <tool_ 1 < 2", []),
    ("<think>\nStill thinking when max_tokens ran out", False, "Still thinking when max_tokens ran out", "", []),
    ("Weighing it up.\n</think>\n\nNo.", True, "Weighing it up.", "No.", []),
    ("  <thinking is not a tag>", False, None, "  <thinking is not a tag>", []),
    ('<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>\n<tool_call>\n'
     '{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>', False, None, "", ["get_time", "get_time"]),
    ('<tool_call>\n{"name": "get_time", "arguments": {"zone"', False, None,
     '<tool_call>\n{"name": "get_time", "arguments": {"zone"', []),
]


@pytest.mark.parametrize("reply, opened, reasoning, content, names", REPLIES)
def test_streamed_parts_join_to_what_the_whole_reply_gives(reply, opened, reasoning, content, names):
    assert read_reply(reply, HermesFormat(), in_reasoning=opened)[:2] == (reasoning, content)
    assert [c.name for c in read_reply(reply, HermesFormat(), in_reasoning=opened)[2]] == names
    rng = random.Random(0)
    for split in ("characters", "random", "random", "random"):
        parser, pieces, cut = ReplyParser(HermesFormat(), in_reasoning=opened), [], 0
        while cut < len(reply):
            step = 1 if split == "characters" else rng.randint(1, 6)
            pieces += parser.feed(reply[cut:cut + step])
            cut += step
        rest, calls = parser.finish()
        pieces += rest
        assert "".join(p.text for p in pieces if p.kind == REASONING) == (reasoning or "")
        assert "".join(p.text for p in pieces if p.kind == CONTENT) == content
        assert [c.name for c in calls] == names
        # the parts come in order: no reasoning after the answer began
        kinds = [p.kind for p in pieces]
        assert kinds == sorted(kinds, key=[REASONING, CONTENT].index)


def test_json_syntax_streams_text_at_once_and_holds_back_a_reply_that_may_be_a_call():
    plain = ReplyParser(JsonFormat())
    assert plain.feed("The answer") == [ReplyPiece(CONTENT, "The answer")]  # not a call: no need to wait
    maybe = ReplyParser(JsonFormat())
    assert maybe.feed(' {"name": "get_time", ') == []
    assert maybe.finish() == ([ReplyPiece(CONTENT, ' {"name": "get_time", ')], [])  # cut off: plain after all


def test_a_prompt_that_opens_the_think_block_is_recognised(qwen3):
    question = [{"role": "user", "content": "Hi"}]
    for thinking in (False, True):  # Qwen3's own template never leaves the block open in the prompt
        prompt = render(qwen3, question, None, generation_prompt=True, thinking=thinking)
        assert not prompt_opens_reasoning(qwen3, qwen3(prompt)["input_ids"])
    opened = render(qwen3, question, None, generation_prompt=True, thinking=True) + "<think>\n"
    assert prompt_opens_reasoning(qwen3, qwen3(opened)["input_ids"])
