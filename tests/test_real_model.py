"""A real pretrained model through the commands a user runs: SmolLM2-135M-Instruct, offline.

The tests marked `real` share one training run: `REAL=1 bash demo.sh`, once per session, in a copy
of the repository (the model comes from a PyPI wheel, converted once into .cache/real_models/; the
demo tokenizes the first 96 rows of data/simple_math_4op.jsonl with the 24 general questions of
data/general_replay.jsonl, and trains LoRA for 45 steps).
What they check on that adapter, with the commands of the README:

- eval.py: exact match on the file's last 50 rows (never trained on) rises by at least 0.2. The base
  model answers in sentences ("To add 37 and 85, ..."), so it scores 0.00; the trained format plus
  the 135M model's own arithmetic gave 0.46-0.56 at seeds 0, 1, 2 (scripts/reproduce_figures.py
  --only real), so 0.2 fails a run that learned nothing and leaves room for the seed's spread;
- eval.py: of 10 general questions the base answers (all 10), the tuned model still gets at least 9
  right: the base's count less one. Arithmetic alone teaches a terse one-line answer, and with it the
  model loses some of what it knew ("Who painted the Mona Lisa?" -> "... a woman named Lisa
  Gherardini."): 7, 8 and 7 of 10 at seeds 0, 1, 2 with the 96 arithmetic rows only (12 steps at lr
  2e-3). The replayed questions (none of them asked here) and a lower learning rate keep them: 9 at
  each of seeds 0, 1, 2 (scripts/reproduce_figures.py --only real), exact match 0.46-0.56; either
  change alone kept 8 at some seed. Seeds 0 and 1 gave the same replies on 1 thread as on 2;
- merge_lora.py: the merged model gives the adapter's greedy answers, logits within 1e-3;
- api_server.py: the official openai client gets the trained answer;
- RLHF/dpo.py on the merged model: the held-out preference margin rises, as in RLHF/README.md's table;
- the hub id `HuggingFaceTB/SmolLM2-135M-Instruct`, from a hub cache holding the converted folder,
  loads and tokenizes as the folder does (the base model's scores are measured through it).

A missing network and an empty cache fail the fetch with its reason, never a skip. `pytest -m real`
runs only this tier, `-m "not real"` leaves it out. The tests without the mark are quick unit tests
of what the real model needed fixed in the library.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT
from llm_tuning.real_model import HELD_OUT_ROWS, REAL_MODELS, RealScores, score_real_replies, write_real_eval_file
from llm_tuning.run_logs import TRAINER_LOG_FILE

HUB_ID = REAL_MODELS["smollm2"].hub_id
MODEL_DIR = "models/smollm2-135m-instruct"  # demo.sh's REAL=1 model
ADAPTER_DIR = "weights/demo_math_real"      # and the adapter it trains
TRAINED_FORMAT = re.compile(r"^\d+ [-+*/] \d+ = -?\d+$")  # "37 + 85 = 122"
MIN_EXACT_MATCH_GAIN = 0.2
MAX_GENERAL_ANSWERS_LOST = 1
MAX_LOGIT_DIFF = 1e-3
# The first test pays for the shared demo run: about 3 minutes on 2 idle cores, 13 on 2 cores shared
# with three other test runs (measured here).
pytestmark = pytest.mark.timeout(2400)


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: int = 900) -> str:
        """Run a command in the sandbox as a user would; fail the test with its output if it fails."""
        command = ["bash", *args] if args[0].endswith(".sh") else [sys.executable, *args]
        done = subprocess.run(command, cwd=self.root, env={**self.env, **(env or {})}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-40:])
            pytest.fail(f"`{' '.join(args)}` exited {done.returncode}:\n{tail}", pytrace=False)
        return done.stdout


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Sandbox:
    from test_docs import make_sandbox

    root = make_sandbox(tmp_path_factory.mktemp("real"))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTEST"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(root),
               LLM_TUNING_CACHE=str(REPO_ROOT / ".cache"),  # the checkout's cache: fetch and convert once
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return Sandbox(root, env)


@pytest.fixture(scope="session")
def demo(sandbox) -> str:
    """`REAL=1 bash demo.sh`'s output: the one training run the tests below share."""
    return sandbox.run("demo.sh", env={"REAL": "1"}, timeout=1800)


@pytest.fixture(scope="session")
def hub_cache(sandbox, demo) -> Path:
    """A Hugging Face hub cache holding the converted folder under its hub id (files linked, not copied)."""
    repo = sandbox.root.parent / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in (sandbox.root / MODEL_DIR).iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return repo.parent


@pytest.fixture(scope="session")
def eval_file(sandbox) -> Path:
    return write_real_eval_file(sandbox.root / "runs" / "real_eval.jsonl")


def generate(sandbox: Sandbox, model_flags: list[str], data: Path, out: str, env: dict | None = None) -> Path:
    replies = sandbox.root / "runs" / out
    sandbox.run("eval.py", "generate", *model_flags, "--data", str(data), "--output", str(replies),
                "--max_new_tokens", "32", "--batch_size", "60", "--progress", "false", env=env)
    return replies


@pytest.fixture(scope="session")
def base_replies(sandbox, hub_cache, eval_file) -> Path:
    # The base model by the name the README uses, resolved offline by the hub cache.
    return generate(sandbox, ["--base", HUB_ID], eval_file, "base.jsonl", env={"HF_HUB_CACHE": str(hub_cache)})


@pytest.fixture(scope="session")
def tuned_replies(sandbox, demo, eval_file) -> Path:
    return generate(sandbox, ["--adapter", ADAPTER_DIR], eval_file, "tuned.jsonl")


def replies_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def merged(sandbox, demo) -> tuple[Path, str]:
    """merge_lora.py's merged model and its output."""
    output = sandbox.run("merge_lora.py", "--adapter", ADAPTER_DIR, "--output", "weights/demo_math_real-merged")
    return sandbox.root / "weights/demo_math_real-merged", output


# --- the tier --------------------------------------------------------------------------------------

@pytest.mark.real
def test_the_demo_shows_held_out_answers_before_and_after_training(demo, sandbox):
    def replies(part: str) -> list[str]:
        return [line.removeprefix("Assistant: ") for line in part.splitlines() if line.startswith("Assistant: ")]

    before = replies(demo.split("==> 3/5", 1)[1].split("==> 4/5", 1)[0])
    after = demo.split("==> 5/5", 1)[1]
    in_format = sum(bool(TRAINED_FORMAT.match(reply)) for reply in replies(after))
    assert len(before) == 2 and not any(TRAINED_FORMAT.match(reply) for reply in before), before
    assert len(replies(after)) == 2 and in_format >= 1, after
    assert f"==> {in_format} of 2 replies in the trained format" in after
    assert re.search(r"==> training took \d+ s, the whole demo \d+ s", demo)
    summary = json.loads((sandbox.root / ADAPTER_DIR / TRAINER_LOG_FILE).read_text().splitlines()[-1])
    assert summary["step"] == 45 and summary["peak_memory_mib"] > 500


@pytest.mark.real
def test_lora_raises_exact_match_on_held_out_rows_and_keeps_general_answers(base_replies, tuned_replies):
    base, tuned = score_real_replies(base_replies), score_real_replies(tuned_replies)
    print(f"\nexact match on {HELD_OUT_ROWS} held-out rows {base.exact_match:.2f} -> {tuned.exact_match:.2f}; "
          f"general questions right {base.general_right} -> {tuned.general_right} of {base.general_total}")
    assert base.general_right >= base.general_total - 3, "the general questions are ones the base model knows"
    assert tuned.exact_match - base.exact_match >= MIN_EXACT_MATCH_GAIN
    assert tuned.general_right >= base.general_right - MAX_GENERAL_ANSWERS_LOST


@pytest.mark.real
def test_the_merged_model_answers_as_the_adapter(sandbox, merged, tuned_replies, eval_file):
    folder, output = merged
    diff = float(re.search(r"max \|logit difference\| adapter vs merged on the probe: (\S+)", output).group(1))
    assert diff < MAX_LOGIT_DIFF
    # the general questions and a few arithmetic rows, greedy: the same replies as the adapter's
    rows = [json.loads(line) for line in eval_file.read_text(encoding="utf-8").splitlines()]
    subset = rows[HELD_OUT_ROWS - 4:]
    subset_file = eval_file.with_name("merged_eval.jsonl")
    subset_file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in subset), encoding="utf-8")
    merged_replies = replies_of(generate(sandbox, ["--base", str(folder)], subset_file, "merged.jsonl"))
    adapter_replies = replies_of(tuned_replies)[HELD_OUT_ROWS - 4:]
    assert [r["prediction"] for r in merged_replies] == [r["prediction"] for r in adapter_replies]


@pytest.mark.real
def test_the_api_server_gives_the_openai_client_the_trained_answer(sandbox, tuned_replies):
    import httpx
    import openai

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "api_server.py", "--adapter", ADAPTER_DIR, "--port", str(port)],
                               cwd=sandbox.root, env={**sandbox.env, "API_KEY": "sk-real"}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-real", max_retries=0)
        expected = replies_of(tuned_replies)[HELD_OUT_ROWS - 1]  # a held-out question, as eval.py answered it
        reply = client.chat.completions.create(model=Path(ADAPTER_DIR).name, temperature=0, max_tokens=32,
                                               messages=[{"role": "user", "content": expected["q"]}])
        answer = reply.choices[0].message.content
        assert answer == expected["prediction"] and TRAINED_FORMAT.match(answer), answer
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.real
def test_dpo_on_the_real_model_raises_the_held_out_preference_margin(sandbox, merged):
    folder, _ = merged
    sandbox.run("RLHF/dpo.py", "--model_name_or_path", str(folder), "--train_file", "RLHF/data/preference_train.jsonl",
                "--eval_file", "RLHF/data/preference_eval.jsonl", "--output_dir", "weights/real_dpo",
                "--max_steps", "3", "--learning_rate", "5e-4", "--beta", "0.1", "--per_device_train_batch_size", "4",
                "--gradient_checkpointing", "false",  # 135M fits; recomputing the forward would cost a third more
                "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
                "--bf16", "false")
    metrics = json.loads((sandbox.root / "weights/real_dpo/eval_metrics.json").read_text())
    print(f"\nheld-out log π(chosen) - log π(rejected): "
          f"{metrics['margin_before']:.2f} -> {metrics['margin_after']:.2f}")
    # 3 steps moved it from -14.6 to +0.8 nats on the demo's merged adapter here (seed 0): +1 leaves room
    assert metrics["margin_after"] > metrics["margin_before"] + 1.0


@pytest.mark.real
def test_the_hub_id_tokenizes_as_the_folder(sandbox, hub_cache):
    from datasets import load_from_disk

    names = {}
    for name, model in (("folder", MODEL_DIR), ("hub", HUB_ID)):
        sandbox.run("tokenize_dataset_rows.py", "--model_checkpoint", model,
                    "--input_file", "data/simple_math_4op.jsonl",
                    "--prompt_key", "q", "--target_key", "a", "--save_name", f"real_{name}", "--max_samples", "16",
                    env={"HF_HUB_CACHE": str(hub_cache)})
        folder = sandbox.root / "data/tokenized_data" / f"real_{name}"
        names[name] = (load_from_disk(str(folder)).to_dict(),
                       json.loads((folder / "metadata.json").read_text())["template_source"])
    assert names["hub"] == names["folder"]


@pytest.mark.real
def test_the_folder_is_a_plain_checkpoint_laid_out_as_the_hub_one(sandbox, demo):
    from transformers import AutoTokenizer, GenerationConfig

    from llm_tuning.modeling import load_model

    folder = sandbox.root / MODEL_DIR
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16" and config["tie_word_embeddings"]
    model = load_model(str(folder))
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(folder).eos_token_id == end_of_turn == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)
    # its default system prompt
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert tokenizer.decode(tokenizer(prompt)["input_ids"][:2]) == "<|im_start|>system"  # no BOS added before it


# --- what the real model needed from the library (quick, no real model) ------------------------------

def test_the_demo_replays_general_questions_it_is_never_asked():
    from llm_tuning.real_model import ARITHMETIC_FILE, GENERAL_QUESTIONS_FILE, GENERAL_REPLAY_FILE, read_jsonl

    replay, general = read_jsonl(REPO_ROOT / GENERAL_REPLAY_FILE), read_jsonl(REPO_ROOT / GENERAL_QUESTIONS_FILE)
    held_out = {row["q"] for row in read_jsonl(REPO_ROOT / ARITHMETIC_FILE)[-HELD_OUT_ROWS:]}
    assert len(replay) == 24 and not {row["q"] for row in replay} & ({row["q"] for row in general} | held_out)
    # nor does a replayed answer teach an asked one
    assert not [(row["a"], key) for row in replay for asked in general for key in asked["keys"] if key in row["a"]]
    assert GENERAL_REPLAY_FILE in (REPO_ROOT / "demo.sh").read_text()


def test_auto_dtype_loads_float32_on_a_cpu(tiny_model, tmp_path):
    """SmolLM2 (like most checkpoints) says bfloat16; a CPU without bf16 instructions emulates it,
    minutes per LoRA step. `--dtype auto` keeps the checkpoint's dtype on a GPU only."""
    from transformers import AutoModelForCausalLM

    from llm_tuning.modeling import load_model

    AutoModelForCausalLM.from_pretrained(tiny_model("llama")).to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    expected = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    assert next(load_model(str(tmp_path)).parameters()).dtype == expected
    assert next(load_model(str(tmp_path), dtype="bfloat16").parameters()).dtype == torch.bfloat16


def test_the_training_summary_records_peak_memory(tiny_qwen2, tmp_path):
    from qwen_lora_tuning import QWEN
    from tests.tiny_training import save_tokenized_pairs, train_tiny

    dataset = save_tokenized_pairs(tiny_qwen2, "qwen", tmp_path / "data")
    train_tiny(QWEN, dataset, tmp_path / "run", steps=2)
    summary = json.loads((tmp_path / "run" / TRAINER_LOG_FILE).read_text().splitlines()[-1])
    assert "train_runtime" in summary and 100 < summary["peak_memory_mib"] < 64 * 2**10


def test_real_replies_are_scored_by_exact_match_and_by_key(tmp_path):
    rows = [{"q": "q", "reference": "1 + 1 = 2", "prediction": "1 + 1 = 2" if i < 10 else "2"}
            for i in range(HELD_OUT_ROWS)]
    general = [json.loads(line) for line in (REPO_ROOT / "data/eval/general_questions.jsonl").read_text().splitlines()]
    rows += [{"q": g["q"], "reference": g["a"], "prediction": g["a"].upper() if i % 2 else "I do not know."}
             for i, g in enumerate(general)]
    replies = tmp_path / "replies.jsonl"
    replies.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert score_real_replies(replies) == RealScores(10 / HELD_OUT_ROWS, len(general) // 2, len(general))
