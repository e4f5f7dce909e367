"""Spans by position, reasoning traces and tool calls, on REAL tokenizers and their own templates.

What an assistant turn is comes from where the template renders it, never from searching for its
text: every short answer below also occurs in some template's markup. Reasoning is rendered by the
model's own template and supervised with the answer, in the context the template gives the turn at
inference (Qwen3 drops earlier turns' reasoning, so such a turn gets a row of its own). Tool calls
are rendered by the template with `tools=`; every assistant turn is supervised, all else masked.
"""

from __future__ import annotations

import json

import pytest

import tokenize_dataset_rows
from llm_tuning.cli import UserError
from llm_tuning.conversation import Conversation
from llm_tuning.data import IGNORE_INDEX, load_tokenized, tokenize_conversation
from llm_tuning.modeling import load_tokenizer
from llm_tuning.records import RecordKeys, load_conversations
from llm_tuning.templates import encode_chat, encode_conversation, get_template
from llm_tuning.tiny_models import build_tokenizer
from tests.real_tokenizers import REAL
from tests.test_real_tokenizers import supervised_runs

SHORT_ANSWERS = ["A", "B", "1", "2", "0", "yes", "no", "ok", "a", "d", "t", "s", "e", "i", "m", "end", "user",
                 "system", "assistant", "model", "<", ">", "|", "Yes.", "42", "start", "id", "ass", "er"]
NATIVE = get_template("native")


def supervised_texts(tokenizer, row) -> list[str]:
    return [tokenizer.decode(run) for run in supervised_runs(row.labels)]


@pytest.mark.parametrize("name", list(REAL))
@pytest.mark.parametrize("template", ["native", "registry"])
def test_every_short_answer_is_supervised_as_itself_plus_end_of_turn(template, name, real_tokenizer):
    tokenizer = real_tokenizer(name)
    _, registry, end_of_turn = REAL[name]
    chosen = NATIVE if template == "native" else get_template(registry)
    for answer in SHORT_ANSWERS:
        [row] = tokenize_conversation(tokenizer, chosen, Conversation.from_turns([("What is it?", answer)]), 512)
        assert supervised_texts(tokenizer, row) == [answer + end_of_turn], answer


@pytest.mark.parametrize("name", list(REAL))
def test_short_answers_in_a_multi_turn_conversation_each_get_their_own_span(name, real_tokenizer):
    tokenizer = real_tokenizer(name)
    end_of_turn = REAL[name][2]
    turns = [("Pick one: a, b, c, d.", answer) for answer in ("b", "d", "end", "|")]
    rows = tokenize_conversation(tokenizer, NATIVE, Conversation.from_turns(turns), 512)
    assert [text for row in rows for text in supervised_texts(tokenizer, row)] == [
        answer + end_of_turn for _, answer in turns]


@pytest.mark.parametrize(("name", "markup"), [("qwen3", "<|im_end|>"), ("llama3", "<|eot_id|>"),
                                              ("qwen3", "<|im_start|>")])
@pytest.mark.parametrize("template", ["native", "registry"])
def test_special_tokens_as_text_in_an_answer_are_refused_in_one_sentence(template, name, markup, real_tokenizer):
    tokenizer = real_tokenizer(name)
    chosen = NATIVE if template == "native" else get_template(REAL[name][1])
    conversation = Conversation.from_turns([("Write the end marker.", f"It is {markup} here.")])
    with pytest.raises(UserError, match=rf"^message 1 contains the special token '{markup}' as text, which would "
                                        r"be read as that token; remove it from the data$".replace("|", r"\|")):
        tokenize_conversation(tokenizer, chosen, conversation, 512)


# --- Reasoning -----------------------------------------------------------------------------------


def think(reasoning: str, answer: str) -> str:
    """How Qwen3 writes a turn with reasoning."""
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


REASONING_FORMS = {
    "reasoning_content": {"role": "assistant", "content": "7", "reasoning_content": "3 plus 4 makes 7."},
    "think-block": {"role": "assistant", "content": "<think>\n3 plus 4 makes 7.\n</think>\n\n7"},
}


@pytest.mark.parametrize("form", list(REASONING_FORMS))
@pytest.mark.parametrize("template", ["native", "registry"])
def test_single_turn_reasoning_is_rendered_and_supervised_with_the_answer(template, form, real_tokenizer):
    tokenizer = real_tokenizer("qwen3")
    chosen = NATIVE if template == "native" else get_template("qwen3")
    messages = [{"role": "user", "content": "3 + 4 = ?"}, REASONING_FORMS[form]]
    [row] = tokenize_conversation(tokenizer, chosen, Conversation(messages), 512)
    assert row.input_ids == tokenizer.apply_chat_template(messages)["input_ids"][:len(row.input_ids)]
    assert supervised_texts(tokenizer, row) == [think("3 plus 4 makes 7.", "7") + "<|im_end|>"]


@pytest.mark.parametrize("template", ["native", "registry"])
def test_each_reasoning_turn_is_trained_where_the_template_writes_its_reasoning(template, real_tokenizer):
    # Qwen3 writes no reasoning for turns before the last user message: turn 1 gets a row that ends
    # with it (its context at inference), the full conversation trains turn 2 (and plain turn 3).
    tokenizer = real_tokenizer("qwen3")
    chosen = NATIVE if template == "native" else get_template("qwen3")
    messages = [{"role": "user", "content": "1 + 1 = ?"},
                {"role": "assistant", "content": "2", "reasoning_content": "One and one."},
                {"role": "user", "content": "2 + 2 = ?"},
                {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
                {"role": "user", "content": "Thanks!"},
                {"role": "assistant", "content": "You are welcome."}]
    rows = tokenize_conversation(tokenizer, chosen, Conversation(messages), 1024)
    samples = [messages[:2], messages[:4], messages]
    assert [row.own_row for row in rows] == [True, True, False]
    for row, sample in zip(rows, samples, strict=True):
        assert (row.input_ids
                == tokenizer.apply_chat_template(sample, enable_thinking=False)["input_ids"][:len(row.input_ids)])
    assert supervised_texts(tokenizer, rows[0]) == [think("One and one.", "2") + "<|im_end|>"]
    assert supervised_texts(tokenizer, rows[1]) == [think("Two and two.", "4") + "<|im_end|>"]
    assert supervised_texts(tokenizer, rows[2]) == ["You are welcome.<|im_end|>"]
    assert "One and one" not in tokenizer.decode(rows[1].input_ids)  # history without its reasoning


def test_plain_data_trains_a_hybrid_models_no_think_mode(real_tokenizer):
    tokenizer = real_tokenizer("qwen3")
    [row] = tokenize_conversation(tokenizer, NATIVE, Conversation.from_turns([("Hi", "Hello!")]), 512)
    first = next(i for i, label in enumerate(row.labels) if label != IGNORE_INDEX)
    # the empty think block is the no-think prompt's end, not part of what is learnt
    assert tokenizer.decode(row.input_ids[:first]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert row.input_ids[:first] == encode_chat(tokenizer, NATIVE, [{"role": "user", "content": "Hi"}])


def test_a_template_that_drops_reasoning_refuses_it(real_tokenizer):
    tokenizer = real_tokenizer("llama3")
    conversation = Conversation([{"role": "user", "content": "3 + 4 = ?"}, REASONING_FORMS["reasoning_content"]])
    with pytest.raises(UserError, match=r"^the chat template of .* does not render `reasoning_content`, so the "
                                        r"reasoning would be lost; "):
        tokenize_conversation(tokenizer, NATIVE, conversation, 512)
    with pytest.raises(UserError, match=r"^template llama3 has no reasoning form, so the reasoning would be lost; "):
        tokenize_conversation(tokenizer, get_template("llama3"), conversation, 512)


def test_last_turn_only_trains_the_last_reasoning_turn_alone(real_tokenizer):
    tokenizer = real_tokenizer("qwen3")
    messages = [{"role": "user", "content": "1 + 1 = ?"},
                {"role": "assistant", "content": "2", "reasoning_content": "One and one."},
                {"role": "user", "content": "2 + 2 = ?"},
                {"role": "assistant", "content": "4", "reasoning_content": "Two and two."}]
    [row] = tokenize_conversation(tokenizer, NATIVE, Conversation(messages), 1024, last_turn_only=True)
    assert supervised_texts(tokenizer, row) == [think("Two and two.", "4") + "<|im_end|>"]


def test_truncation_into_a_reasoning_turn_is_reported(tiny_model, tmp_path, capsys):
    model = tiny_model("qwen3")
    data = tmp_path / "think.jsonl"
    long_reasoning = "Let me add them one by one. " * 30
    data.write_text(json.dumps({"messages": [
        {"role": "user", "content": "1 + 2 + 3 = ?"},
        {"role": "assistant", "content": "6", "reasoning_content": long_reasoning}]}) + "\n", encoding="utf-8")
    tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
        "--model_checkpoint", str(model), "--input_file", str(data), "--format", "messages",
        "--save_name", "think", "--output_dir", str(tmp_path / "out"), "--max_seq_length", "64"]))
    out = capsys.readouterr().out
    _, metadata = load_tokenized(tmp_path / "out" / "think")
    assert metadata["rows"]["truncated"] == 1 and metadata["rows"]["reasoning_cut"] == 1
    assert "1 of them cut into a turn's reasoning" in out


# --- Tool calls ------------------------------------------------------------------------------------

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
LOOKUP = {"type": "function", "function": {
    "name": "lookup", "description": "Look up a fact.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


def call(name: str, **arguments) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments}}]}


TOOL_CONVERSATION = [
    {"role": "user", "content": "How many days are in 3 weeks? 三周有多少天？"},
    call("lookup", query="days in a week"),
    {"role": "tool", "content": "7"},
    call("calculator", expression="3 * 7"),
    {"role": "tool", "content": "21"},
    {"role": "assistant", "content": "21 days. 二十一天。"},
]
# How each real template writes the assistant turns of TOOL_CONVERSATION, end-of-turn included.
TOOL_TURNS = {
    "qwen3": ['<tool_call>\n{"name": "lookup", "arguments": {"query": "days in a week"}}\n</tool_call><|im_end|>',
              '<tool_call>\n{"name": "calculator", "arguments": {"expression": "3 * 7"}}\n</tool_call><|im_end|>',
              "21 days. 二十一天。<|im_end|>"],
    "llama3_1_tools": ['{"name": "lookup", "parameters": {"query": "days in a week"}}<|eot_id|>',
                       '{"name": "calculator", "parameters": {"expression": "3 * 7"}}<|eot_id|>',
                       "21 days. 二十一天。<|eot_id|>"],
}


@pytest.fixture(scope="module")
def tool_tokenizer(real_tokenizer, real_tokenizer_dir):
    def load(name: str):
        return real_tokenizer(name) if name in REAL else load_tokenizer(str(real_tokenizer_dir(name)))

    return load


@pytest.mark.parametrize("name", list(TOOL_TURNS))
def test_a_multi_step_tool_conversation_supervises_exactly_the_assistant_turns(name, tool_tokenizer):
    tokenizer = tool_tokenizer(name)
    tools = [CALCULATOR, LOOKUP]
    rows = tokenize_conversation(tokenizer, NATIVE, Conversation(TOOL_CONVERSATION, tools), 2048)
    # Llama-3.1 writes every turn as at inference: one row. Qwen3 writes a call without the no-think
    # block once its result follows: a row ends with each call, as the model sees it when it calls.
    ends = [1, 3, 5] if name == "qwen3" else [5]
    assert len(rows) == len(ends)
    for row, end in zip(rows, ends, strict=True):
        expected = tokenizer.apply_chat_template(TOOL_CONVERSATION[:end + 1], tools=tools)["input_ids"]
        assert row.input_ids == expected[:len(row.input_ids)]
    assert [text for row in rows for text in supervised_texts(tokenizer, row)] == TOOL_TURNS[name]


def test_the_same_tool_conversation_in_sharegpt_form_gives_the_same_rows(real_tokenizer, tmp_path):
    tokenizer = real_tokenizer("qwen3")
    sharegpt = {"tools": json.dumps([CALCULATOR["function"], LOOKUP["function"]]), "conversations": [
        {"from": "human", "value": TOOL_CONVERSATION[0]["content"]},
        {"from": "function_call", "value": json.dumps({"name": "lookup", "arguments": {"query": "days in a week"}})},
        {"from": "observation", "value": "7"},
        {"from": "function_call", "value": json.dumps({"name": "calculator", "arguments": {"expression": "3 * 7"}})},
        {"from": "observation", "value": "21"},
        {"from": "gpt", "value": TOOL_CONVERSATION[-1]["content"]}]}
    openai = {"tools": [CALCULATOR, LOOKUP], "messages": [
        *TOOL_CONVERSATION[:3],
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "calculator", "arguments": json.dumps({"expression": "3 * 7"})}}]},  # arguments as a string
        {"role": "tool", "tool_call_id": "call_1", "content": "21"}, TOOL_CONVERSATION[-1]]}
    rows = []
    for record in (sharegpt, openai):
        path = tmp_path / "record.jsonl"
        path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        [conversation] = load_conversations(path, RecordKeys(format="auto"))
        rows.append([(row.input_ids, row.labels)
                     for row in tokenize_conversation(tokenizer, NATIVE, conversation, 2048)])
    assert rows[0] == rows[1]


def test_a_template_without_tools_refuses_them_in_one_sentence_naming_the_model(real_tokenizer):
    tokenizer = real_tokenizer("llama3")
    with pytest.raises(UserError, match=r"^the chat template of \S+ does not render tool definitions \(`tools`\); "):
        tokenize_conversation(tokenizer, NATIVE, Conversation(TOOL_CONVERSATION, [CALCULATOR]), 2048)
    with pytest.raises(UserError, match=r"^the chat template of \S+ cannot render tool calls \(`tool_calls`\); "):
        tokenize_conversation(tokenizer, NATIVE, Conversation(TOOL_CONVERSATION), 2048)
    with pytest.raises(UserError, match=r"^template llama3 cannot render tools or tool calls; "):
        tokenize_conversation(tokenizer, get_template("llama3"), Conversation(TOOL_CONVERSATION), 2048)


def test_tool_prompts_at_inference_are_the_training_prompts(real_tokenizer):
    tokenizer = real_tokenizer("qwen3")
    conversation = Conversation(TOOL_CONVERSATION, [CALCULATOR, LOOKUP])
    for sample in encode_conversation(tokenizer, NATIVE, conversation):
        for span in sample.spans:
            prompt = encode_chat(tokenizer, NATIVE, TOOL_CONVERSATION[:span.message], [CALCULATOR, LOOKUP])
            assert sample.input_ids[:span.start] == prompt


def test_the_tiny_qwen3_stand_in_writes_reasoning_and_tools_as_qwen3_does(real_tokenizer):
    # Its tool preamble is worded here; everything after the system block must match the real template.
    stand_in, real = build_tokenizer("qwen3"), real_tokenizer("qwen3")
    conversations = [
        TOOL_CONVERSATION,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1 = ?"},
         REASONING_FORMS["reasoning_content"], {"role": "user", "content": "2 + 2 = ?"},
         REASONING_FORMS["think-block"]],
    ]
    for messages in conversations:
        for generation_prompt, thinking in ((False, False), (True, True), (True, False)):
            shown = messages[:-1] if generation_prompt else messages
            texts = [tokenizer.apply_chat_template(shown, tools=[CALCULATOR], tokenize=False, enable_thinking=thinking,
                                                   add_generation_prompt=generation_prompt)
                     for tokenizer in (stand_in, real)]
            body = [text[text.index("<|im_start|>user"):] for text in texts]
            assert body[0] == body[1]
