"""The shared decoding loop: parity with transformers' generate, batching, stops, penalties, seeds."""

from __future__ import annotations

import pytest
import torch

from llm_tuning.cli import UserError
from llm_tuning.generation import (
    BatchDecoder, GenerationSettings, ReplyText, adjust_logits, check_messages, fit_history, generate_batch,
    sample_token,
)
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.templates import encode_prompt, get_template, stop_token_ids

QUESTIONS = ["你好，请介绍一下你自己。", "What is 75 + 54?", "计算 3 + 94 等于多少？请一步一步地算。"]


@pytest.fixture(scope="module")
def qwen(tiny_qwen2):
    model = load_model(str(tiny_qwen2)).eval()
    return model, load_tokenizer(str(tiny_qwen2)), get_template("qwen")


def hf_greedy(model, tokenizer, template, prompt, max_new_tokens):
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=stop_token_ids(tokenizer, template),
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)


def test_greedy_batch_equals_transformers_generate_one_by_one(qwen):
    model, tokenizer, template = qwen
    prompts = [encode_prompt(tokenizer, template, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == 3  # different lengths: the batch is left-padded
    settings = GenerationSettings(max_new_tokens=24)
    batched = generate_batch(model, tokenizer, prompts, [settings] * 3, stop_token_ids(tokenizer, template))
    assert batched == [hf_greedy(model, tokenizer, template, p, 24) for p in prompts]


def test_stream_pieces_form_the_reply_and_length_ends_it(qwen):
    model, tokenizer, template = qwen
    prompt = encode_prompt(tokenizer, template, QUESTIONS[1])
    deltas = [d for step in BatchDecoder(model, tokenizer, [prompt], [GenerationSettings(max_new_tokens=10)])
              for d in step]
    assert len(deltas) == 10 and deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 10
    assert "".join(d.text for d in deltas) == hf_greedy(model, tokenizer, template, prompt, 10)


def test_reply_text_holds_back_partial_stop_strings_and_half_characters(qwen):
    _, tokenizer, _ = qwen
    text = ReplyText(tokenizer, stop=("= 9",))
    pieces = [text.push(i) for i in tokenizer.encode("3 + 94 = 97")]
    assert text.stopped and "".join(pieces) == "3 + 94 "
    # A rare character is three byte-level tokens: it appears only once its last byte arrives.
    ids = tokenizer.encode("龘")
    assert len(ids) == 3
    whole = ReplyText(tokenizer)
    assert [whole.push(i) for i in ids] == ["", "", "龘"]


def test_penalties_match_hand_computed_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    seen = torch.tensor([[True, True, False, False]])
    counts = torch.tensor([[0.0, 2.0, 1.0, 0.0]])
    settings = [GenerationSettings(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)]
    # repetition: 2/2 = 1, -1*2 = -2 on seen tokens; then - 0.5*count - 0.25*[count>0]
    expected = torch.tensor([[1.0, -2.0 - 1.0 - 0.25, 0.5 - 0.5 - 0.25, 1.0]])
    assert torch.allclose(adjust_logits(logits, seen, counts, settings), expected)


def test_sampling_respects_top_k_top_p_and_seed():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    draw = lambda s, seed: [sample_token(logits, s, torch.Generator().manual_seed(seed + i)) for i in range(200)]  # noqa: E731
    assert set(draw(GenerationSettings(temperature=1.0, top_k=2), 0)) == {0, 1}
    assert set(draw(GenerationSettings(temperature=1.0, top_p=0.7), 0)) == {0, 1}  # 0.5 + 0.3 reaches 0.7
    assert set(draw(GenerationSettings(temperature=1.0), 0)) == {0, 1, 2, 3}
    assert draw(GenerationSettings(temperature=1.0), 5) == draw(GenerationSettings(temperature=1.0), 5)
    assert sample_token(logits, GenerationSettings(temperature=0), None) == 0


def test_a_seeded_row_samples_the_same_whatever_it_is_batched_with(qwen):
    model, tokenizer, template = qwen
    prompts = [encode_prompt(tokenizer, template, q) for q in QUESTIONS]
    seeded = GenerationSettings(max_new_tokens=12, temperature=1.0, seed=3)
    alone = generate_batch(model, tokenizer, prompts[:1], [seeded])
    other = GenerationSettings(max_new_tokens=12, temperature=1.0, seed=99)
    together = generate_batch(model, tokenizer, prompts, [seeded, other, other])
    assert together[0] == alone[0]


def test_fit_history_forgets_oldest_turns_first(qwen):
    _, tokenizer, template = qwen
    history = [("第一个问题", "第一个回答"), ("second question", "second answer"), ("third", "third answer")]
    full = len(encode_prompt(tokenizer, template, "now", history))
    without_first = len(encode_prompt(tokenizer, template, "now", history[1:]))
    assert fit_history(tokenizer, template, "now", history, None, full) == history
    assert fit_history(tokenizer, template, "now", history, None, full - 1) == history[1:]
    assert fit_history(tokenizer, template, "now", history, None, without_first - 1) == history[2:]
    with pytest.raises(UserError, match="longer than the 3 prompt tokens"):
        fit_history(tokenizer, template, "now", history, None, 3)


def test_check_messages_accepts_tool_exchanges_and_says_what_is_out_of_order():
    system, user = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}
    answer = {"role": "assistant", "content": "Hello"}
    calls = {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {}}},
                                                                 {"id": "c2", "function": {"name": "g", "arguments": {}}}]}
    result = {"role": "tool", "tool_call_id": "c1", "content": "1"}
    for messages in ([system, user], [system, user, answer, user], [user, calls, result, dict(result, tool_call_id="c2")],
                     [user, calls, result, answer, user], [user, calls, result, calls, result]):
        check_messages(messages)
    for messages, says in [
        ([system, user, answer], "the last message must be a user message or a tool result"),
        ([system], "messages must contain a user message"),
        ([system, user, user], r"messages\[2\] has role 'user', but after a user message comes 'assistant'"),
        ([user, answer, system, user], r"messages\[2\] has role 'system'"),
        ([user, calls, user], r"messages\[2\] has role 'user', but after an assistant's tool calls comes 'tool'"),
        ([user, result], r"messages\[1\] has role 'tool'"),
        ([user, calls, dict(result, tool_call_id="c9")], "answers tool call 'c9', but the assistant's calls before it "
                                                         "have the ids c1, c2"),
    ]:
        with pytest.raises(UserError, match=says):
            check_messages(messages)


@pytest.mark.parametrize("bad, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
])
def test_bad_settings_are_user_errors(bad, message):
    with pytest.raises(UserError, match=message):
        GenerationSettings(**bad)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_adapters_decode_like_peft_generate(tiny_qwen2, method):
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    config = {"prompt_tuning": PromptTuningConfig, "prefix_tuning": PrefixTuningConfig}[method]
    torch.manual_seed(0)
    model = get_peft_model(load_model(str(tiny_qwen2)), config(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    tokenizer, template = load_tokenizer(str(tiny_qwen2)), get_template("qwen")
    prompt = encode_prompt(tokenizer, template, QUESTIONS[1])
    ours = generate_batch(model, tokenizer, [prompt], [GenerationSettings(max_new_tokens=12)],
                          stop_token_ids(tokenizer, template))[0]
    ids = torch.tensor([prompt])
    # peft re-runs its virtual tokens each step; compare with its uncached generate, token for token.
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         use_cache=False, eos_token_id=stop_token_ids(tokenizer, template),
                         pad_token_id=tokenizer.pad_token_id)
    assert ours == tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
