"""chat.py's interactive loop: streaming replies, clear/exit, history trimmed to the context."""

from __future__ import annotations

import builtins

import pytest

import chat
from llm_tuning.modeling import load_tokenizer
from llm_tuning.templates import encode_prompt, get_template
from tests.inference_fixtures import REASONING_EXCHANGES, train_tiny_adapter, train_tool_adapter, training_pairs

PAIRS = training_pairs()


@pytest.fixture(scope="module")
def adapter(tiny_qwen2, tmp_path_factory):
    return train_tiny_adapter(tiny_qwen2, tmp_path_factory.mktemp("adapter"), PAIRS)


def chat_session(monkeypatch, capsys, argv, lines):
    feed = iter(lines)
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(feed))
    chat.main(chat.parse_args(argv))
    return capsys.readouterr().out


def test_interactive_chat_answers_clears_forgets_and_exits(adapter, monkeypatch, capsys):
    (q1, a1), (q2, a2) = PAIRS[0], PAIRS[2]
    tokenizer, template = load_tokenizer(str(adapter)), get_template("qwen")
    alone = len(encode_prompt(tokenizer, template, q2))
    with_history = len(encode_prompt(tokenizer, template, q2, [(q1, a1)]))
    assert alone < with_history
    max_new_tokens = 16
    context = max_new_tokens + alone  # room for q2 alone, not for q2 after q1
    out = chat_session(monkeypatch, capsys,
                       ["--adapter", str(adapter), "--max_new_tokens", str(max_new_tokens),
                        "--max_context_tokens", str(context)],
                       [q1, "clear", q1, q2, "x" * 400, "exit", "never read"])
    assert out.count(f"Assistant: {a1}\n") == 2
    assert "(history cleared)" in out
    # q2 came after q1 in the same conversation: q1 was forgotten, so q2 got exactly its trained answer
    assert "(forgot the 1 oldest turn(s) to fit the context)" in out
    assert f"Assistant: {a2}\n" in out
    assert "(not sent: the message alone is longer than" in out


def test_end_of_input_quits_cleanly(adapter, monkeypatch, capsys):
    def no_more(prompt=""):
        raise EOFError

    monkeypatch.setattr(builtins, "input", no_more)
    chat.main(chat.parse_args(["--adapter", str(adapter)]))
    assert "Type a message" in capsys.readouterr().out


def test_reply_budget_larger_than_the_context_is_a_user_error(adapter, monkeypatch, capsys):
    monkeypatch.setattr(builtins, "input", lambda prompt="": "exit")
    with pytest.raises(SystemExit) as exit_info:
        chat.main(chat.parse_args(["--adapter", str(adapter), "--max_new_tokens", "64", "--max_context_tokens", "64"]))
    assert exit_info.value.code == 2
    assert "leaves no room for the prompt" in capsys.readouterr().err


def test_adapter_command_switches_between_adapters_their_mix_and_the_base(tiny_qwen2, tmp_path_factory,
                                                                           monkeypatch, capsys):
    first = train_tiny_adapter(tiny_qwen2, tmp_path_factory.mktemp("first"), PAIRS[:4])
    second = train_tiny_adapter(tiny_qwen2, tmp_path_factory.mktemp("second"), PAIRS[4:])
    (q_first, a_first), (q_second, a_second) = PAIRS[0], PAIRS[4]
    out = chat_session(monkeypatch, capsys,
                       ["--adapter", str(first), "--adapter", str(second), "--max_new_tokens", "24"],
                       ["adapter", f"adapter {first.name}", q_first, "clear", f"adapter {second.name}", q_second,
                        "clear", "adapter base", q_first, "adapter nope", "exit"])
    assert f"(adapters: {first.name}, {second.name}, *mixed, base)" in out  # the mix is active first
    replies = [line.removeprefix("Assistant: ") for line in out.splitlines() if line.startswith("Assistant: ")]
    assert replies[:2] == [a_first, a_second]  # each adapter answers what it was trained on
    assert replies[2] != a_first  # the base model never learned it
    assert "(no adapter 'nope'; choose one of:" in out


def test_reasoning_is_printed_apart_before_the_answer_and_left_out_of_the_history(tiny_model, tmp_path_factory,
                                                                                 monkeypatch, capsys):
    adapter = train_tool_adapter(tiny_model("qwen3"), tmp_path_factory.mktemp("tools"))
    (q1, r1, a1), (q2, r2, a2) = REASONING_EXCHANGES
    thinking = ["--adapter", str(adapter), "--enable_thinking", "true", "--max_new_tokens", "40"]
    out = chat_session(monkeypatch, capsys, [*thinking, "--query", q1, "--query", q2], [])
    assert out.endswith(f"User: {q1}\nReasoning: {r1}\nAssistant: {a1}\nUser: {q2}\nReasoning: {r2}\nAssistant: {a2}\n")
    histories = []
    real = chat.stream_reply_parts
    monkeypatch.setattr(chat, "stream_reply_parts", lambda *args, **kwargs: histories.append(list(args[4])) or real(
        *args, **kwargs))
    out = chat_session(monkeypatch, capsys, thinking, [q1, "exit"])
    assert f"Reasoning: {r1}\nAssistant: {a1}\n" in out
    chat_session(monkeypatch, capsys, thinking, [q1, q2, "exit"])
    assert histories[-1] == [(q1, a1)]  # the answer only: Qwen3's template drops earlier reasoning anyway
