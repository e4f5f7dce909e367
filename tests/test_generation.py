"""The shared decoding loop: parity with transformers' generate, batching, stops, penalties, seeds."""

from __future__ import annotations

import pytest
import torch

from llm_tuning.cli import UserError
from llm_tuning.generation import (
    BatchDecoder, GenerationSettings, ReplyText, adjust_logits, check_messages, fit_history, generate_batch,
    generate_in_batches, length_sorted_batches, sample_token, sample_tokens,
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


LONG_TEXT = ("The Great Wall 长城 stretches over 21,000 km 🧱; it was built over centuries.\n\n"
             "Q: 3 + 94 = ?  A: 97. 龘 is a rare character, 😀 an emoji, and   spaces   stay.")


@pytest.mark.parametrize("name", ["tiny", "llama2"])
def test_reply_text_pieces_join_to_the_whole_decode_past_its_window(qwen, real_tokenizer_dir, name):
    """Byte-level BPE (the tiny tokenizer) and sentencepiece with byte fallback and a stripped
    leading space (Llama-2): the windowed decoding gives what one decode of the reply gives."""
    tokenizer = qwen[1] if name == "tiny" else load_tokenizer(str(real_tokenizer_dir(name)))
    ids = tokenizer.encode(LONG_TEXT, add_special_tokens=False)
    assert len(ids) > 3 * ReplyText.WINDOW  # the window moves several times
    text = ReplyText(tokenizer)
    assert "".join(text.push(i) for i in ids) + text.finish() == tokenizer.decode(ids, skip_special_tokens=True)
    # A stop string far past the first window cuts the reply exactly before it.
    text = ReplyText(tokenizer, stop=("A: 97",))
    pieces = []
    for i in ids:
        pieces.append(text.push(i))
        if text.stopped:
            break
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) + text.finish() == whole[:whole.index("A: 97")]


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


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    rows = 4000

    def frequencies(settings):
        tokens = sample_tokens(logits.expand(rows, -1), [settings] * rows,
                               [torch.Generator().manual_seed(i) for i in range(rows)])
        return torch.bincount(tokens, minlength=4).float() / rows

    # 4,000 draws: a frequency is within 0.03 of its probability (over 4 standard deviations).
    plain = frequencies(GenerationSettings(temperature=1.0))
    assert torch.allclose(plain, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    top_k = frequencies(GenerationSettings(temperature=1.0, top_k=3))
    assert torch.allclose(top_k, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.03)
    top_p = frequencies(GenerationSettings(temperature=1.0, top_p=0.7))
    assert torch.allclose(top_p, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.03)
    # temperature 0.5 squares the probabilities before normalising
    squared = torch.tensor([0.25, 0.09, 0.0225, 0.0025])
    assert torch.allclose(frequencies(GenerationSettings(temperature=0.5)), squared / squared.sum(), atol=0.03)


def test_top_k_top_p_on_the_best_candidates_pick_what_a_full_sort_picks():
    """A large vocabulary: rows cut by top-k/top-p draw among their best 256 tokens (or sort all of
    them when the cut lies further down); the pick must be the one the whole sorted vocabulary gives."""

    def full_sort_pick(logits, s, uniform):
        scores = logits / s.temperature
        if 0 < s.top_k < len(scores):
            scores = scores.masked_fill(scores < torch.topk(scores, s.top_k).values[-1], float("-inf"))
        ordered, order = torch.sort(scores, descending=True)
        if s.top_p < 1:
            probs = ordered.softmax(-1)
            ordered = ordered.masked_fill(probs.cumsum(-1) - probs >= s.top_p, float("-inf"))
        cdf = ordered.softmax(-1).cumsum(-1)
        return int(order[torch.searchsorted(cdf, uniform * cdf[-1], right=True)])

    torch.manual_seed(0)
    settings = [GenerationSettings(temperature=0.7, top_p=0.9), GenerationSettings(temperature=1.0, top_k=40),
                GenerationSettings(temperature=1.3, top_k=40, top_p=0.5),
                GenerationSettings(temperature=1.0, top_k=1000, top_p=0.8), GenerationSettings(temperature=0.9, top_k=300)]
    for trial in range(60):
        logits = torch.randn(5000) * (0.5, 3.0, 8.0)[trial % 3]  # flat to peaked
        batch = sample_tokens(logits.expand(len(settings), -1), settings,
                              [torch.Generator().manual_seed(trial) for _ in settings])
        uniform = torch.rand((), generator=torch.Generator().manual_seed(trial))
        assert batch.tolist() == [full_sort_pick(logits, s, uniform) for s in settings]


def test_a_seeded_row_samples_the_same_whatever_it_is_batched_with(qwen):
    model, tokenizer, template = qwen
    prompts = [encode_prompt(tokenizer, template, q) for q in QUESTIONS]
    seeded = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    alone = generate_batch(model, tokenizer, prompts[:1], [seeded])
    other = GenerationSettings(max_new_tokens=12, temperature=1.0, seed=99)
    together = generate_batch(model, tokenizer, prompts, [seeded, other, other])
    assert together[0] == alone[0]
    # Batch-mates that are greedy, or end early and leave the batch, change nothing either.
    short = GenerationSettings(max_new_tokens=3, temperature=0.8, top_k=5, seed=7)
    mixed = generate_batch(model, tokenizer, prompts[::-1], [GenerationSettings(max_new_tokens=2), short, seeded])
    assert mixed[2] == alone[0]


def test_finished_rows_leave_the_batch_and_the_others_decode_as_alone(qwen):
    model, tokenizer, template = qwen
    prompts = [encode_prompt(tokenizer, template, q) for q in QUESTIONS]
    settings = [GenerationSettings(max_new_tokens=n) for n in (2, 6, 12)]
    rows_per_forward = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: rows_per_forward.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        together = generate_batch(model, tokenizer, prompts, settings)
    finally:
        hook.remove()
    # The prompt, then one forward per new token: row 0 leaves after its 2nd, row 1 after its 6th.
    assert rows_per_forward == [3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert together == [generate_batch(model, tokenizer, [p], [s])[0] for p, s in zip(prompts, settings)]


def test_a_cancelled_row_stops_and_the_others_go_on_unchanged(qwen):
    model, tokenizer, template = qwen
    prompts = [encode_prompt(tokenizer, template, q) for q in QUESTIONS[:2]]
    settings = [GenerationSettings(max_new_tokens=10)] * 2
    decoder = BatchDecoder(model, tokenizer, prompts, settings)
    seen_rows, reply = [], ""
    for step, deltas in enumerate(decoder):
        seen_rows.append([d.row for d in deltas])
        reply += "".join(d.text for d in deltas if d.row == 1)
        if step == 2:
            decoder.cancel(0)
    assert seen_rows == [[0, 1]] * 3 + [[1]] * 7
    assert reply == generate_batch(model, tokenizer, prompts[1:], settings[1:])[0]


def test_generate_in_batches_sorts_by_length_and_keeps_the_input_order(qwen):
    model, tokenizer, template = qwen
    assert length_sorted_batches([3, 1, 2, 5, 4], 2) == [[3, 4], [0, 2], [1]]
    questions = ["1 + 1?", QUESTIONS[2], "Hi", QUESTIONS[0], QUESTIONS[1] * 3]
    prompts = [encode_prompt(tokenizer, template, q) for q in questions]
    settings = [GenerationSettings(max_new_tokens=8)] * len(prompts)
    stops = stop_token_ids(tokenizer, template)
    replies = generate_in_batches(model, tokenizer, prompts, settings, stops, batch_size=2)
    assert replies == [generate_batch(model, tokenizer, [p], settings[:1], stops)[0] for p in prompts]


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
