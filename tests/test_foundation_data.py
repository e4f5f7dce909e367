"""Step 1 of the workflow: reading, validating, tokenizing with label masks, saving to disk."""

import json
import shutil
from pathlib import Path

import pytest

import tokenize_dataset_rows
from llm_tuning.batching import make_collator
from llm_tuning.conversation import Conversation
from llm_tuning.data import (
    IGNORE_INDEX,
    TokenizeConfig,
    load_tokenized,
    save_tokenized,
    supervised_ids,
    tokenize_conversation,
    tokenize_file,
)
from llm_tuning.modeling import load_tokenizer
from llm_tuning.records import RecordKeys, load_conversations
from llm_tuning.templates import chat_template_hash, encode_prompt, get_template

REPO = Path(__file__).resolve().parent.parent
MATH = REPO / "data" / "simple_math_4op.jsonl"
MULTI_TURN = REPO / "data" / "multi_turn_sample.jsonl"
QWEN = get_template("qwen")


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen2):
    return load_tokenizer(str(tiny_qwen2))


def config(tiny_qwen2, **overrides) -> TokenizeConfig:
    values = dict(tokenizer_path=str(tiny_qwen2), template="qwen", max_seq_length=512,
                  skip_overlength=False, last_turn_only=False, keys=RecordKeys(history="history"))
    return TokenizeConfig(**{**values, **overrides})


def tokenize_cli(tiny_qwen2, input_file, out_dir, *extra) -> None:
    tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
        "--model_checkpoint", str(tiny_qwen2), "--input_file", str(input_file),
        "--save_name", "data", "--output_dir", str(out_dir), *extra]))


# --- label masking -------------------------------------------------------------------------------

def test_supervised_tokens_are_exactly_the_answers_and_their_stop_tokens(tiny_qwen2, tokenizer):
    dataset, _ = tokenize_file(MULTI_TURN, tokenizer, config(tiny_qwen2))
    records = [json.loads(line) for line in MULTI_TURN.read_text(encoding="utf-8").splitlines()]
    for row, record in zip(dataset, records, strict=True):
        answers = [a for _, a in record["history"]] + [record["a"]]
        expected = "".join(answer + "<|im_end|>" for answer in answers)
        assert tokenizer.decode(supervised_ids(row["labels"])) == expected
        assert len(row["input_ids"]) == len(row["labels"])


def test_last_turn_only_supervises_the_last_answer_alone(tiny_qwen2, tokenizer):
    dataset, _ = tokenize_file(MULTI_TURN, tokenizer, config(tiny_qwen2, last_turn_only=True))
    records = [json.loads(line) for line in MULTI_TURN.read_text(encoding="utf-8").splitlines()]
    for row, record in zip(dataset, records, strict=True):
        assert tokenizer.decode(supervised_ids(row["labels"])) == record["a"] + "<|im_end|>"


def test_masked_positions_are_the_prompt_and_the_rest_is_the_answer(tokenizer):
    conversation = Conversation.from_turns([("计算 3 + 9 等于多少？", "3 + 9 = 12")])
    [row] = tokenize_conversation(tokenizer, QWEN, conversation, max_seq_length=512)
    prompt = encode_prompt(tokenizer, QWEN, "计算 3 + 9 等于多少？")
    assert row.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert row.input_ids[: len(prompt)] == prompt
    assert row.labels[len(prompt):] == row.input_ids[len(prompt):]
    assert row.labels[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


# --- template parity: the chat prompt is the training prompt ------------------------------------

def test_chat_prompt_is_token_for_token_the_training_prompt(tiny_qwen2, tokenizer):
    dataset, _ = tokenize_file(MULTI_TURN, tokenizer, config(tiny_qwen2, last_turn_only=True))
    records = [json.loads(line) for line in MULTI_TURN.read_text(encoding="utf-8").splitlines()]
    for row, record in zip(dataset, records, strict=True):
        first_supervised = next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX)
        history = [tuple(pair) for pair in record["history"]]
        assert encode_prompt(tokenizer, QWEN, record["q"], history) == row["input_ids"][:first_supervised]


def test_qwen_template_matches_the_tokenizers_own_chat_template(tokenizer):
    history = [("你好，请问法国在哪个洲？", "法国位于欧洲西部。")]
    messages = [{"role": "user", "content": history[0][0]}, {"role": "assistant", "content": history[0][1]},
                {"role": "user", "content": "那它的首都是哪里？"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert encode_prompt(tokenizer, QWEN, "那它的首都是哪里？", history) == expected


# --- over-long rows --------------------------------------------------------------------------------

def test_truncation_shortens_the_prompt_first_and_keeps_the_answer_start(tokenizer):
    question = "请把下面的数字加起来：" + " + ".join(str(i) for i in range(60)) + "，结果是多少？"
    answer = "结果是 1770。"
    [row] = tokenize_conversation(tokenizer, QWEN, Conversation.from_turns([(question, answer)]), max_seq_length=64)
    assert row.truncated and len(row.input_ids) == 64
    supervised = tokenizer.decode(supervised_ids(row.labels))
    assert supervised == answer + "<|im_end|>"  # the answer fits whole once the prompt is cut
    prompt_text = tokenizer.decode(row.input_ids[: row.labels.index(supervised_ids(row.labels)[0])])
    # the question's middle goes; the template header and the question's end stay
    assert prompt_text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert prompt_text.endswith("多少？<|im_end|>\n<|im_start|>assistant\n")
    assert "请把下面的数字加起来" not in prompt_text


def test_a_long_answer_keeps_its_start(tokenizer):
    answer = "".join(f"第{i}步。" for i in range(80))
    [row] = tokenize_conversation(tokenizer, QWEN, Conversation.from_turns([("讲一讲步骤。", answer)]),
                                  max_seq_length=48)
    assert len(row.input_ids) == 48
    assert answer.startswith(tokenizer.decode(supervised_ids(row.labels)))


def test_multi_turn_rows_lose_their_oldest_turns_first(tokenizer):
    turns = [(f"问题{i}：" + "很长的背景。" * 6, f"回答{i}") for i in range(5)]
    [row] = tokenize_conversation(tokenizer, QWEN, Conversation.from_turns(turns), max_seq_length=80)
    text = tokenizer.decode(row.input_ids)
    assert len(row.input_ids) <= 80 and "回答4<|im_end|>" in text and "问题0" not in text


@pytest.fixture(scope="module")
def math_lengths(tiny_qwen2, tokenizer) -> list[int]:
    dataset, _ = tokenize_file(MATH, tokenizer, config(tiny_qwen2))
    return [len(ids) for ids in dataset["input_ids"]]


def test_skip_overlength_drops_rows_and_counts_them(tiny_qwen2, math_lengths, tmp_path):
    limit = sorted(math_lengths)[len(math_lengths) // 2]
    too_long = sum(length > limit for length in math_lengths)
    tokenize_cli(tiny_qwen2, MATH, tmp_path, "--max_seq_length", str(limit), "--skip_overlength", "true")
    dataset, metadata = load_tokenized(tmp_path / "data")
    assert too_long > 0
    assert metadata["rows"] == {"read": 1000, "kept": 1000 - too_long, "skipped": too_long, "truncated": 0,
                                "turn_rows": 0, "reasoning_cut": 0}
    assert len(dataset) == 1000 - too_long and max(len(ids) for ids in dataset["input_ids"]) <= limit


def test_skip_overlength_false_is_false(tiny_qwen2, math_lengths, tmp_path):
    # The original script's `type=bool` read the string "False" as true.
    limit = sorted(math_lengths)[len(math_lengths) // 2]
    too_long = sum(length > limit for length in math_lengths)
    tokenize_cli(tiny_qwen2, MATH, tmp_path, "--max_seq_length", str(limit), "--skip_overlength", "False")
    dataset, metadata = load_tokenized(tmp_path / "data")
    assert metadata["skip_overlength"] is False
    assert metadata["rows"] == {"read": 1000, "kept": 1000, "skipped": 0, "truncated": too_long,
                                "turn_rows": 0, "reasoning_cut": 0}
    assert max(len(ids) for ids in dataset["input_ids"]) == limit


# --- the on-disk format ----------------------------------------------------------------------------

def test_metadata_records_tokenizer_template_and_source(tiny_qwen2, tokenizer, tmp_path):
    tokenize_cli(tiny_qwen2, MULTI_TURN, tmp_path, "--history_key", "history", "--num_proc", "2")
    dataset, metadata = load_tokenized(tmp_path / "data")
    assert len(dataset) == 10 and dataset.column_names == ["input_ids", "labels"]
    # --template auto: the tokenizer's own chat template, recorded with a hash of its text.
    assert metadata["template"] == "native"
    assert metadata["template_source"] == {"kind": "native", "chat_template_sha256": chat_template_hash(tokenizer)}
    assert metadata["tokenizer"] == str(tiny_qwen2) and len(metadata["tokenizer_fingerprint"]) == 16
    assert metadata["source"]["path"] == str(MULTI_TURN) and len(metadata["source"]["sha256"]) == 64
    assert metadata["rows"] == {"read": 10, "kept": 10, "skipped": 0, "truncated": 0, "turn_rows": 0,
                                "reasoning_cut": 0}


def test_a_failed_save_leaves_nothing_half_written(tiny_qwen2, tokenizer, tmp_path):
    dataset, metadata = tokenize_file(MATH, tokenizer, config(tiny_qwen2, max_samples=4))
    out = save_tokenized(dataset, metadata, tmp_path / "data")
    before = sorted(p.name for p in out.iterdir())

    class Interrupted(Exception):
        pass

    def interrupted_save(path):
        Path(path, "partial.arrow").write_text("x")
        raise Interrupted

    dataset.save_to_disk = interrupted_save
    with pytest.raises(Interrupted):
        save_tokenized(dataset, metadata, tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp dirs left behind
    assert sorted(p.name for p in out.iterdir()) == before  # the old dataset is intact


def test_collator_pads_dynamically_with_ignored_labels(tokenizer):
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = make_collator(tokenizer)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, tokenizer.pad_token_id, tokenizer.pad_token_id]]
    assert "attention_mask" not in batch  # right padding: the causal mask hides it (llm_tuning/batching.py)
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


# --- bad input: one clear line, exit code 2 --------------------------------------------------------

def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


GOOD_LINE = '{"q": "1 + 1 等于几？", "a": "1 + 1 = 2"}\n'
BAD_INPUTS = [
    ("bad.jsonl", GOOD_LINE * 16 + '{"q": "x", "a": }\n', ":17: not valid JSON"),
    ("keys.jsonl", GOOD_LINE * 4 + '{"question": "x", "answer": "y"}\n',
     ":5: no key 'q' (found: question, answer); pass --prompt_key <key>"),
    ("empty_answer.jsonl", '{"q": "x", "a": "  "}\n', ":1: empty answer in 'a'"),
    ("number.jsonl", GOOD_LINE + '{"q": "x", "a": 42}\n', ":2: 'a' must be a string, got int"),
    ("empty.jsonl", "\n\n", ": the file is empty"),
    ("latin1.jsonl", '{"q": "caf\xe9", "a": "x"}\n'.encode("latin-1"), ":1:11: not UTF-8 text (byte 0xe9)"),
    ("object.json", '{"q": "x", "a": "y"}', ": expected a JSON list of records, got dict"),
    ("record.json", '[{"q": "x", "a": "y"}, ["x", "y"]]', ": record 2: expected a JSON object, got list"),
    ("history.jsonl", '{"q": "x", "a": "y", "history": [["only one"]]}\n',
     ":1: 'history' must be a list of [question, answer] string pairs"),
    ("data.csv", "q,a\n", ": expected a .json or .jsonl file"),
]


@pytest.mark.parametrize("name,content,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_one_clear_line_and_exit_code_2(tiny_qwen2, tmp_path, capsys, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(SystemExit) as exit_info:
        tokenize_cli(tiny_qwen2, path, tmp_path / "out", "--history_key", "history")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}{message}")
    assert not (tmp_path / "out").exists()


def test_command_line_errors_carry_no_traceback(tiny_qwen2, tmp_path, run):
    path = write(tmp_path, "keys.jsonl", GOOD_LINE * 4 + '{"question": "x", "answer": "y"}\n')
    result = run("tokenize_dataset_rows.py", "--model_checkpoint", tiny_qwen2, "--input_file", path,
                 "--save_name", "x", "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}:5: no key 'q' (found: question, answer); pass --prompt_key <key>")
    assert "Traceback" not in result.stderr


def test_unknown_template_and_missing_model_are_user_errors(tiny_qwen2, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tokenize_cli(tiny_qwen2, MATH, tmp_path, "--template", "nope")
    assert exit_info.value.code == 2 and "unknown template 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        tokenize_cli(tmp_path / "no-model", MATH, tmp_path)
    assert exit_info.value.code == 2
    assert "cannot load a tokenizer from" in (err := capsys.readouterr().err) and "no such local directory" in err


def test_tokenize_sh_says_how_to_build_the_missing_demo_model(tmp_path, run):
    shutil.copy(REPO / "tokenize.sh", tmp_path)
    result = run("tokenize.sh", cwd=tmp_path)
    assert result.returncode == 2
    assert "python -m llm_tuning.testing --arch qwen2 --out models/tiny-qwen2" in result.stderr


def test_json_list_files_read_like_jsonl(tmp_path):
    records = [{"q": "你好", "a": "你好！"}, {"q": "Hi", "a": "Hello!"}]
    path = write(tmp_path, "list.json", json.dumps(records, ensure_ascii=False))
    conversations = load_conversations(path, RecordKeys())
    assert [c.turns for c in conversations] == [[("你好", "你好！")], [("Hi", "Hello!")]]


# --- record formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("alpaca_sample.jsonl", (None, [("写一句关于春天的诗。", "春风又绿江南岸。"),
                                    ("再写一句关于秋天的。", "停车坐爱枫林晚，霜叶红于二月花。")])),
    ("messages_sample.jsonl", ("你是一个简洁的数学助手。", [("计算 6 * 7 等于多少？", "6 * 7 = 42")])),
    ("sharegpt_sample.jsonl", (None, [("你好！", "你好！有什么可以帮你的吗？"),
                                      ("推荐一本书。", "推荐《活着》，余华的作品。")])),
])
def test_each_record_format_reads_into_turns(name, expected):
    conversations = load_conversations(REPO / "data" / name, RecordKeys(format="auto"))
    picked = conversations[3] if name.startswith("alpaca") else conversations[0]
    assert (picked.system, picked.turns) == expected


def test_alpaca_input_joins_the_instruction_and_sharegpt_system_is_read():
    alpaca = load_conversations(REPO / "data" / "alpaca_sample.jsonl", RecordKeys(format="alpaca"))
    assert alpaca[0].turns == [("把下面的句子翻译成英文。\n今天天气很好。", "The weather is nice today.")]
    sharegpt = load_conversations(REPO / "data" / "sharegpt_sample.jsonl", RecordKeys(format="sharegpt"))
    assert sharegpt[1].system == "You are a friendly assistant."


def test_messages_rows_supervise_every_assistant_turn(tiny_qwen2, tokenizer, tmp_path):
    tokenize_cli(tiny_qwen2, REPO / "data" / "messages_sample.jsonl", tmp_path, "--format", "messages")
    dataset, metadata = load_tokenized(tmp_path / "data")
    assert metadata["keys"]["format"] == "messages"
    assert tokenizer.decode(supervised_ids(dataset[1]["labels"])) == "Red.<|im_end|>Blue.<|im_end|>"
    assert "<|im_start|>system\n你是一个简洁的数学助手。<|im_end|>" in tokenizer.decode(dataset[0]["input_ids"])


BAD_MESSAGES = [
    ('{"messages": [{"role": "user", "content": "hi"}]}', ":1: 'messages' must end with an assistant message"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}',
     ":1: messages[0] has role 'assistant' where 'user' was expected"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', ":1: messages[0] has unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}',
     ":1: messages[1]: a system message may only come first"),
    ('{"messages": []}', ":1: 'messages' must be a non-empty list of messages"),
]


@pytest.mark.parametrize("content,message", BAD_MESSAGES)
def test_bad_messages_records_are_located(tiny_qwen2, tmp_path, capsys, content, message):
    path = write(tmp_path, "chat.jsonl", content + "\n")
    with pytest.raises(SystemExit) as exit_info:
        tokenize_cli(tiny_qwen2, path, tmp_path / "out", "--format", "messages")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {path}{message}")
