"""The tokenize step streams: records are read one at a time and tokenized in batches, in one
process or several, and the dataset is exactly the rows `tokenize_conversation` gives each record,
in file order, with the same metadata. A killed run leaves the previous dataset as it was.
Memory against file size is measured by bench/tokenize_throughput.py --scale."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_tuning.data import TokenizeConfig, load_tokenized, tokenize_conversation, tokenize_file
from llm_tuning.modeling import load_tokenizer
from llm_tuning.records import RecordKeys, load_conversations
from llm_tuning.templates import get_template

REPO = Path(__file__).resolve().parent.parent

CASES = {  # data file, tiny model, max_seq_length, skip_overlength: truncation, skipping and extra rows
    "long q/a, truncated": ("bench/data/long_tail.jsonl", "qwen2", 200, False),
    "long q/a, skipped": ("bench/data/long_tail.jsonl", "qwen2", 200, True),
    "tool calls (Qwen3: a row per call)": ("data/tool_calls.jsonl", "qwen3", 1024, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_streamed_dataset_is_each_records_rows_in_file_order(case, tiny_model):
    path, arch, max_seq_length, skip = CASES[case]
    model = str(tiny_model(arch))
    tokenizer = load_tokenizer(model)
    expected = [(row.input_ids, row.labels)
                for conversation in load_conversations(REPO / path, RecordKeys(format="auto"))
                for row in tokenize_conversation(tokenizer, get_template("native"), conversation, max_seq_length, skip)]
    results = []
    for num_proc in (1, 2):
        config = TokenizeConfig(model, "native", max_seq_length, skip, last_turn_only=False,
                                keys=RecordKeys(format="auto"), num_proc=num_proc)
        dataset, metadata = tokenize_file(REPO / path, tokenizer, config)
        assert list(zip(dataset["input_ids"], dataset["labels"])) == expected
        results.append(metadata)
    assert results[0] == results[1]
    assert results[0]["rows"]["kept"] == len(expected)


def test_a_killed_run_leaves_the_previous_dataset_as_it_was(tiny_qwen2, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text((REPO / "bench/data/long_tail.jsonl").read_text(encoding="utf-8") * 40, encoding="utf-8")
    command = [sys.executable, str(REPO / "tokenize_dataset_rows.py"), "--model_checkpoint", str(tiny_qwen2),
               "--save_name", "rows", "--output_dir", str(tmp_path / "out"), "--max_seq_length", "256"]
    subprocess.run([*command, "--input_file", str(REPO / "data/simple_math_4op.jsonl")], check=True,
                   capture_output=True, cwd=REPO)
    before, _ = load_tokenized(tmp_path / "out" / "rows")
    before_rows = before["input_ids"]

    process = subprocess.Popen([*command, "--input_file", str(big)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    for line in iter(process.stderr.readline, ""):  # kill it while it tokenizes the 48,000 records
        if "Tokenizing" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    with contextlib.suppress(ProcessLookupError):  # its tokenizing workers, orphaned: they would run on
        os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL

    after, metadata = load_tokenized(tmp_path / "out" / "rows")
    assert after["input_ids"] == before_rows and metadata["source"]["path"].endswith("simple_math_4op.jsonl")
