"""The shipped reasoning and tool-call sets train a model that thinks, calls tools and answers after them.

A tiny Qwen3 stand-in (Qwen3's format: `<think>` blocks, `<tool_call>` calls, `<tool_response>`
results) is tokenized from the first records of data/tool_calls.jsonl and data/reasoning_math.jsonl
with the real command, fully fine-tuned by the Qwen recipe (a random tiny model memorises these
longer replies only when every weight trains; LoRA stays near loss 6), and then, one step at a time
as an agent loop runs: it calls the right tool with the right arguments, answers after the results,
and writes its reasoning before the answer. eval.py's exact match scores the answer without it, and
the README's `openai` tool loop, run as written against api_server.py, reaches the final answer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import openai
import pytest

import eval as eval_script
import tokenize_dataset_rows
from llm_tuning.conversation import split_reasoning
from llm_tuning.generation import GenerationSettings, generate_batch
from llm_tuning.inference import load_for_inference
from llm_tuning.templates import encode_chat, stop_token_ids
from llm_tuning.tiny_models import save_tiny_model
from tests.test_api_server import running_server
from tests.test_recipes import run_recipe

pytestmark = pytest.mark.timeout(1200)  # the module's training (~1 min on 2 quiet cores) runs in its first test

REPO = Path(__file__).resolve().parent.parent
# The first records of each file: tool conversations with two calls, one call and none, in Chinese
# and English (the generator cycles through every kind), and answers with reasoning.
RECORDS = {"tool_calls.jsonl": 5, "reasoning_math.jsonl": 4}


def first_records(name: str) -> list[dict]:
    lines = (REPO / "data" / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:RECORDS[name]]]


@pytest.fixture(scope="module")
def agent_model(tmp_path_factory) -> Path:
    # Its tokenizer also learns the words of data/ (tool schemas included), which shortens the rows.
    work = tmp_path_factory.mktemp("agent")
    base = save_tiny_model("qwen3", work / "base", corpus_dir=REPO / "data")
    data = work / "agent.jsonl"
    records = first_records("tool_calls.jsonl") + first_records("reasoning_math.jsonl")
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tokenize_dataset_rows.main(tokenize_dataset_rows.parse_args([
        "--model_checkpoint", str(base), "--input_file", str(data), "--format", "messages",
        "--save_name", "agent", "--output_dir", str(work / "data"), "--max_seq_length", "1024"]))
    run_recipe("qwen_lora_tuning.py", "--tokenized_dataset", str(work / "data" / "agent"),
               "--output_dir", str(work / "model"), "--finetuning_type", "full", "--learning_rate", "4e-3",
               "--max_steps", "150", "--per_device_train_batch_size", "16", "--report_to", "none",
               "--save_strategy", "no", "--use_cpu", "true", "--disable_tqdm", "true", "--seed", "0")
    return work / "model"


def reply(model, tokenizer, template, messages, tools=None) -> str:
    prompt = encode_chat(tokenizer, template, messages, tools)
    [text] = generate_batch(model, tokenizer, [prompt], [GenerationSettings(max_new_tokens=96)],
                            stop_token_ids(tokenizer, template))
    return text


def tool_call_text(message: dict) -> str:
    """How Qwen3's format writes an assistant tool call."""
    function = message["tool_calls"][0]["function"]
    call = json.dumps({"name": function["name"], "arguments": function["arguments"]}, ensure_ascii=False)
    return f"<tool_call>\n{call}\n</tool_call>"


def test_it_calls_the_right_tools_and_answers_after_their_results(agent_model):
    model, tokenizer, template = load_for_inference(base=str(agent_model))
    steps = 0
    for record in first_records("tool_calls.jsonl"):
        messages, tools = record["messages"], record["tools"]
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            # the conversation so far, tool results included, as the agent loop sends it
            expected = tool_call_text(message) if message.get("tool_calls") else message["content"]
            assert reply(model, tokenizer, template, messages[:index], tools) == expected
            steps += 1
    assert steps == 11  # 5 conversations: their calls (two, one or none each) and the answers after them


def test_it_writes_its_reasoning_before_the_answer(agent_model):
    model, tokenizer, template = load_for_inference(base=str(agent_model))
    thinking = template.with_thinking(True)
    for record in first_records("reasoning_math.jsonl"):
        question, answer = record["messages"]
        text = reply(model, tokenizer, thinking, [question])
        assert split_reasoning(text) == (answer["reasoning_content"], answer["content"])


def test_eval_exact_match_scores_the_answer_without_its_reasoning(agent_model, tmp_path):
    data = tmp_path / "think.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in first_records("reasoning_math.jsonl")),
                    encoding="utf-8")
    metrics = eval_script.main(eval_script.parse_args([
        "generate", "--base", str(agent_model), "--data", str(data), "--enable_thinking", "true",
        "--output", str(tmp_path / "rows.jsonl"), "--progress", "false"]))
    assert metrics["exact_match"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(row["reasoning"] and row["prediction"] == row["reference"] for row in rows)


def readme_python_block(starts_with: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    return next(block for block in blocks if block.startswith(starts_with))


def test_the_readmes_openai_tool_loop_reaches_the_answer(agent_model, capsys):
    """The README's client code, as written, against api_server.py serving the trained model."""
    argv = ["--base", str(agent_model), "--model_name", "tool_calls", "--max_model_len", "2048"]
    with running_server(argv, None) as (base_url, _, _):
        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
        namespace = {"client": client, "open": lambda path, **kw: open(REPO / path, **kw)}
        capsys.readouterr()
        exec(readme_python_block("import json\nimport operator\nrecord = "), namespace)  # noqa: S102 (the README's own code)
    record = first_records("tool_calls.jsonl")[0]
    assert capsys.readouterr().out.strip() == record["messages"][-1]["content"]
    calls = [m for m in namespace["messages"] if getattr(m, "tool_calls", None)]
    assert [c.tool_calls[0].function.name for c in calls] == ["lookup", "calculator"]  # two steps, then the answer
