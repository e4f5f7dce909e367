"""Tools and reasoning through api_server.py, driven by the official `openai` client.

A tiny Qwen3 stand-in learns two tool exchanges (question -> call -> result -> answer) and two
reasoning traces (tests/inference_fixtures.py), so every reply the server reads is known. Replies
no model here would write (malformed calls, Llama-3.1's JSON calls) come from a scripted engine."""

from __future__ import annotations

import json

import openai
import pytest
from starlette.testclient import TestClient
from transformers import AutoTokenizer

from llm_tuning.generation import Delta
from llm_tuning.modeling import load_tokenizer
from llm_tuning.native_template import NativeTemplate
from llm_tuning.serve.openai_api import ServedModel, create_app
from llm_tuning.templates import encode_chat, get_template, prompt_text
from llm_tuning.tool_calls import call_opening
from tests.inference_fixtures import REASONING_EXCHANGES, TOOL_EXCHANGES, TOOLS, train_tool_adapter
from tests.test_api_server import running_server

API_KEY = "sk-test-key"
MODEL = "tiny-tools"


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    return train_tool_adapter(tiny_model("qwen3"), tmp_path_factory.mktemp("tool-adapter"))


@pytest.fixture(scope="module")
def server(adapter):
    """(base_url, served): api_server's app on a free port, as in tests/test_api_server.py."""
    argv = ["--adapter", str(adapter), "--model_name", MODEL, "--max_model_len", "1024"]
    with running_server(argv, API_KEY) as (base_url, _, served):
        yield base_url, served


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key=API_KEY, max_retries=0)


def ask(client, messages, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kwargs)


def streamed(client, messages, **kwargs) -> dict:
    """A streamed reply put together as a client does: reasoning, content, tool calls, finish reason."""
    reply = {"reasoning": "", "content": "", "calls": {}, "finish_reason": None, "chunks": 0}
    for chunk in ask(client, messages, stream=True, **kwargs):
        for choice in chunk.choices:
            reply["chunks"] += 1
            delta = choice.delta
            reply["reasoning"] += getattr(delta, "reasoning_content", None) or ""
            reply["content"] += delta.content or ""
            for call in delta.tool_calls or []:
                entry = reply["calls"].setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                entry["name"] += (call.function and call.function.name) or ""
                entry["arguments"] += (call.function and call.function.arguments) or ""
            reply["finish_reason"] = choice.finish_reason or reply["finish_reason"]
    return reply


@pytest.mark.parametrize("exchange", TOOL_EXCHANGES, ids=[e.function for e in TOOL_EXCHANGES])
def test_the_server_returns_the_learned_tool_call(client, exchange):
    choice = ask(client, exchange.messages("call")[:-1], tools=TOOLS).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == (exchange.function, exchange.arguments)


def test_the_openai_tool_loop_reaches_the_final_answer(client):
    exchange = TOOL_EXCHANGES[0]
    messages = [{"role": "user", "content": exchange.question}]
    reply = ask(client, messages, tools=TOOLS).choices[0].message
    messages.append(reply)  # the client sends the call back as it came, as OpenAI's guide does
    for call in reply.tool_calls:
        assert call.function.name == "add"
        arguments = json.loads(call.function.arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": str(arguments["a"] + arguments["b"])})
    final = ask(client, messages, tools=TOOLS).choices[0]
    assert (final.message.content, final.message.tool_calls, final.finish_reason) == (exchange.answer, None, "stop")


def test_streamed_tool_calls_and_answer_match_the_whole_reply(client):
    exchange = TOOL_EXCHANGES[1]
    question = exchange.messages("call")[:-1]
    whole = ask(client, question, tools=TOOLS).choices[0].message.tool_calls[0]
    reply = streamed(client, question, tools=TOOLS)
    assert reply["finish_reason"] == "tool_calls" and reply["content"] == ""
    [call] = reply["calls"].values()
    assert call["id"].startswith("call_")
    assert (call["name"], call["arguments"]) == (whole.function.name, whole.function.arguments)
    answer = streamed(client, exchange.messages("result"), tools=TOOLS)  # the call sent back with its result
    assert (answer["content"], answer["calls"], answer["finish_reason"]) == (exchange.answer, {}, "stop")
    assert answer["chunks"] > 3, "the answer came in one piece: not streamed"


@pytest.mark.parametrize("question, reasoning, answer", REASONING_EXCHANGES)
def test_reasoning_comes_apart_from_the_answer(client, question, reasoning, answer):
    thinking = {"chat_template_kwargs": {"enable_thinking": True}}
    message = ask(client, [{"role": "user", "content": question}], extra_body=thinking).choices[0].message
    assert (message.reasoning_content, message.content) == (reasoning, answer)
    reply = streamed(client, [{"role": "user", "content": question}], extra_body=thinking)
    assert (reply["reasoning"], reply["content"], reply["finish_reason"]) == (reasoning, answer, "stop")


def test_reasoning_sent_back_goes_to_the_template(client, server):
    _, served = server
    (q1, r1, a1), (q2, _, _) = REASONING_EXCHANGES
    history = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1, "reasoning_content": r1},
               {"role": "user", "content": q2}]
    reply = ask(client, history, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    # Qwen3's template writes earlier turns without their reasoning: the prompt is the one without it
    thinking = served.template.with_thinking(True)
    assert reply.usage.prompt_tokens == len(encode_chat(served.tokenizer, thinking, history))
    assert len(encode_chat(served.tokenizer, thinking, history)) == len(encode_chat(
        served.tokenizer, thinking, [dict(m, reasoning_content=None) for m in history]))


def test_tool_choice_none_hides_the_tools_and_reads_no_calls(client, server):
    _, served = server
    question = TOOL_EXCHANGES[0].messages("call")[:-1]
    reply = ask(client, question, tools=TOOLS, tool_choice="none")
    assert reply.usage.prompt_tokens == len(encode_chat(served.tokenizer, served.template, question))
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("exchange", TOOL_EXCHANGES, ids=[e.function for e in TOOL_EXCHANGES])
def test_a_named_function_opens_the_reply_with_its_call(client, server, exchange):
    _, served = server
    question = exchange.messages("call")[:-1]
    choice = {"type": "function", "function": {"name": exchange.function}}
    reply = ask(client, question, tools=TOOLS, tool_choice=choice)
    [call] = reply.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (exchange.function, exchange.arguments)
    # the prompt ends with the template's own opening of a call to that function
    opening = call_opening(served.tokenizer, False, exchange.function)
    assert opening == f'<tool_call>\n{{"name": "{exchange.function}", "arguments": '
    prompt = prompt_text(served.tokenizer, served.template, question, TOOLS) + opening
    assert reply.usage.prompt_tokens == len(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_required_makes_the_model_call_even_where_it_would_answer(client, server):
    _, served = server
    question = [{"role": "user", "content": "Say hi"}]  # learned as a plain answer, with the tools offered
    assert ask(client, question, tools=TOOLS).choices[0].message.content == "Hi!"
    reply = ask(client, question, tools=TOOLS, tool_choice="required", max_tokens=40)
    opening = call_opening(served.tokenizer, False)
    assert opening == '<tool_call>\n{"name": "'
    prompt = prompt_text(served.tokenizer, served.template, question, TOOLS) + opening
    assert reply.usage.prompt_tokens == len(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # The tiny model never learned a call for this question, so what it writes after the opening
    # does not parse: the reply, opening included, comes back as plain text instead of an error.
    message = reply.choices[0].message
    assert message.tool_calls is None and message.content.startswith(opening)


# --- Replies no trained model gives: a scripted engine behind the real app ------------------------


class ScriptedEngine:
    """Writes `reply` (a few characters at a time) for every request, and keeps the prompts it got."""

    backend = "scripted"

    def __init__(self, reply: str):
        self.reply, self.prompts = reply, []

    async def generate(self, prompt_ids, settings, n=1):
        self.prompts.append(list(prompt_ids))
        pieces = [self.reply[i:i + 3] for i in range(0, len(self.reply), 3)] or [""]
        for row in range(n):
            for k, piece in enumerate(pieces):
                yield Delta(row, piece, "stop" if k == len(pieces) - 1 else None, k + 1)


def scripted_client(tokenizer, template, reply: str) -> tuple[openai.OpenAI, ScriptedEngine]:
    engine = ScriptedEngine(reply)
    served = ServedModel(MODEL, tokenizer, template, context_length=4096)
    http = TestClient(create_app(engine, served))
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0), engine


@pytest.fixture(scope="module")
def tiny_qwen3_tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model("qwen3")))


@pytest.mark.parametrize("reply", [
    '<tool_call>\n{"name": "add", "arguments": {"a": 3,}}\n</tool_call>',  # not JSON
    '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}',  # never closed
    '<tool_call>\n{"name": "delete_everything", "arguments": {}}\n</tool_call>',  # not offered
])
def test_a_malformed_call_comes_back_as_plain_content(tiny_qwen3_tokenizer, reply):
    client, _ = scripted_client(tiny_qwen3_tokenizer, NativeTemplate(), reply)
    whole = ask(client, [{"role": "user", "content": "What is 3 + 4?"}], tools=TOOLS).choices[0]
    assert (whole.message.content, whole.message.tool_calls, whole.finish_reason) == (reply, None, "stop")
    parts = streamed(client, [{"role": "user", "content": "What is 3 + 4?"}], tools=TOOLS)
    assert (parts["content"], parts["calls"], parts["finish_reason"]) == (reply, {}, "stop")


def test_llama31_json_calls_through_the_server(llama3_1_tools_dir):
    tokenizer = AutoTokenizer.from_pretrained(llama3_1_tools_dir)
    question = [{"role": "user", "content": "What time is it in Tokyo?"}]
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}}}}]
    client, engine = scripted_client(tokenizer, NativeTemplate(),
                                     '{"name": "get_time", "parameters": {"zone": "Asia/Tokyo"}}')
    for reply in (ask(client, question, tools=tools).choices[0], None):
        if reply is None:
            parts = streamed(client, question, tools=tools)
            calls = [(c["name"], c["arguments"]) for c in parts["calls"].values()]
            assert parts["finish_reason"] == "tool_calls" and parts["content"] == ""
        else:
            calls = [(c.function.name, c.function.arguments) for c in reply.message.tool_calls]
            assert reply.finish_reason == "tool_calls" and reply.message.content is None
        assert calls == [("get_time", '{"zone": "Asia/Tokyo"}')]
    # Llama-3.1's template puts the tools into the first user message
    assert '"name": "get_time"' in tokenizer.decode(engine.prompts[0])
    # a named function: the prompt holds the call's opening, the model writes the arguments
    client, engine = scripted_client(tokenizer, NativeTemplate(), '{"zone": "UTC"}}')
    named = ask(client, question, tools=tools, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [(c.function.name, c.function.arguments) for c in named.choices[0].message.tool_calls] == [
        ("get_time", '{"zone": "UTC"}')]
    assert tokenizer.decode(engine.prompts[0]).endswith('<|end_header_id|>\n\n{"name": "get_time", "parameters": ')


def bad_request(client, messages, **kwargs) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, messages, **kwargs)
    assert err.value.status_code == 400 and err.value.body["type"] == "invalid_request_error"
    return err.value


def test_templates_that_cannot_render_tools_are_refused_in_one_sentence(tiny_model, real_tokenizer_dir):
    hi = [{"role": "user", "content": "Hi"}]
    qwen2, _ = scripted_client(load_tokenizer(str(tiny_model("qwen2"))), get_template("qwen"), "")
    error = bad_request(qwen2, hi, tools=TOOLS)
    assert error.body["param"] == "tools"
    assert error.body["message"] == ("template qwen cannot render tools or tool calls; use a model whose own chat "
                                     "template supports tools (--template native)")
    llama3_dir = real_tokenizer_dir("llama3")
    llama3, _ = scripted_client(AutoTokenizer.from_pretrained(llama3_dir), NativeTemplate(), "")
    error = bad_request(llama3, hi, tools=TOOLS)
    assert error.body["message"].startswith(f"the chat template of {llama3_dir} does not render tool definitions")
    assert error.body["message"].count(". ") == 0
    # tool_choice none asks for no tools: the same request is served
    assert ask(llama3, hi, tools=TOOLS, tool_choice="none").choices[0].finish_reason == "stop"
    # reasoning sent back to a template without a reasoning form is dropped, not refused
    history = [*hi, {"role": "assistant", "content": "Hello", "reasoning_content": "They greet me."}, *hi]
    assert ask(llama3, history).usage.prompt_tokens == ask(llama3, [*hi, history[1] | {"reasoning_content": None}, *hi]
                                                           ).usage.prompt_tokens


@pytest.mark.parametrize("messages, kwargs, param, says", [
    ([{"role": "user", "content": "Hi"}], {"tool_choice": "required"}, "tool_choice", "only when the request gives"),
    ([{"role": "user", "content": "Hi"}],
     {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "'nope' is not among"),
    ([{"role": "user", "content": "Hi"}], {"extra_body": {"chat_template_kwargs": {"add_vision_id": True}}},
     "chat_template_kwargs", "only enable_thinking"),
    ([{"role": "user", "content": "Hi"},
      {"role": "assistant",
       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{a: 1}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "1"}], {"tools": TOOLS},
     "messages.1.tool_calls.0.function.arguments", "must be a JSON object"),
    ([{"role": "user", "content": "Hi"},
      {"role": "assistant",
       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c2", "content": "1"}], {"tools": TOOLS}, "messages", "answers tool call 'c2'"),
    ([{"role": "user", "content": "Hi"},
      {"role": "assistant",
       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
      {"role": "user", "content": "and?"}], {"tools": TOOLS}, "messages", "comes 'tool'"),
    ([{"role": "user", "content": "Hi"}, {"role": "tool", "tool_call_id": "c1", "content": "1"}], {}, "messages",
     "has role 'tool'"),
])
def test_bad_tool_requests_get_400_saying_what_is_wrong(tiny_qwen3_tokenizer, messages, kwargs, param, says):
    client, _ = scripted_client(tiny_qwen3_tokenizer, NativeTemplate(), "ok")
    error = bad_request(client, messages, **kwargs)
    assert error.body["param"] == param and says in error.body["message"]
