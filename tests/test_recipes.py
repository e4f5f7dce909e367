"""Every family recipe, end to end on its tiny stand-in: train → chat → merge, as a user runs them.

A stand-in is a native architecture carrying the family's special tokens (llm_tuning.testing):
remote-code families (ChatGLM, Baichuan, InternLM) cannot be loaded offline. Training must make
the model answer all eight memorised questions exactly with the family's template, which fails if
the template, label masking, stop token or padding side is wrong. The recipes run in-process
through `runpy` (their real `__main__`), which keeps the suite fast.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

import chat
import merge_lora
from llm_tuning.generation import GenerationSettings, generate_reply
from llm_tuning.templates import get_template
from llm_tuning.testing import MEMORISE_PAIRS, save_tokenized_pairs

REPO_ROOT = Path(__file__).resolve().parent.parent

# (recipe, stand-in arch from llm_tuning.testing, template)
RECIPES = [
    ("chatglm_lora_tuning.py", "chatglm", "chatglm"),
    ("chatglm2_lora_tuning.py", "chatglm2", "chatglm2"),
    ("chatglm2_lora_tuning.py", "chatglm2", "chatglm3"),
    ("glm4_lora_tuning.py", "glm", "glm4"),
    ("baichuan_lora_tuning.py", "baichuan", "baichuan"),
    ("baichuan2_lora_tuning.py", "baichuan", "baichuan2"),
    ("internlm_lora_tuning.py", "internlm", "internlm"),
    ("internlm_lora_tuning.py", "internlm2", "internlm2"),
    ("llama2_lora_tuning.py", "llama", "llama2"),
    ("mistral_lora_tuning.py", "mistral", "mistral"),
]
# The proven memorisation setting for a hidden-64, 2-layer model.
TRAIN_FLAGS = ["--lora_rank", "8", "--lora_dropout", "0", "--learning_rate", "5e-3", "--max_steps", "150",
               "--per_device_train_batch_size", "8", "--logging_steps", "10", "--save_strategy", "no",
               "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true", "--seed", "0"]


def run_recipe(script: str, *argv: str) -> None:
    """Run a recipe's `__main__` with these command-line arguments, in this process."""
    saved = sys.argv
    sys.argv = [script, *argv]
    try:
        runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
    finally:
        sys.argv = saved


def greedy_answers(model, tokenizer, template_name: str) -> list[str]:
    """Greedy replies, stripped: LLaMA-2's format has a space before </s> (`answer </s>`)."""
    settings = GenerationSettings(max_new_tokens=24)
    return [generate_reply(model, tokenizer, get_template(template_name), q, settings=settings).strip()
            for q, _ in MEMORISE_PAIRS]


@pytest.mark.parametrize("script,arch,template", RECIPES, ids=[f"{s.split('_')[0]}-{t}" for s, _, t in RECIPES])
def test_recipe_trains_chats_and_merges(script, arch, template, tiny_model, tmp_path, capsys):
    model_dir = tiny_model(arch)
    data = save_tokenized_pairs(model_dir, template, tmp_path / "data" / "qa")
    out = tmp_path / "adapter"
    run_recipe(script, "--tokenized_dataset", str(data), "--output_dir", str(out), *TRAIN_FLAGS)
    assert (out / "adapter_model.safetensors").is_file()

    # chat.py's loading path: base and template come from the adapter's llm_tuning.json.
    chat_args = chat.parse_args(["--adapter", str(out)])
    model, tokenizer, chat_template = chat.load_chat_model(chat_args)
    assert chat_template.name == template
    answers = greedy_answers(model, tokenizer, template)
    assert answers == [a for _, a in MEMORISE_PAIRS]

    merged = tmp_path / "merged"
    merge_lora.main(merge_lora.parse_args(["--adapter", str(out), "--output", str(merged)]))
    max_diff = float(capsys.readouterr().out.split("on the probe:")[1].split()[0])
    assert max_diff < 1e-4
    merged_model, merged_tokenizer, _ = chat.load_chat_model(chat.parse_args(["--base", str(merged)]))
    assert greedy_answers(merged_model, merged_tokenizer, template)[:2] == [a for _, a in MEMORISE_PAIRS[:2]]


def test_a_tokenizer_without_the_familys_marker_tokens_is_refused(tiny_model, tmp_path, capsys):
    # Plain LLaMA tokens: <reserved_106> is several ordinary tokens, not Baichuan2's user token.
    data = save_tokenized_pairs(tiny_model("llama"), "baichuan2", tmp_path / "qa")
    with pytest.raises(SystemExit) as exit_info:
        run_recipe("baichuan2_lora_tuning.py", "--tokenized_dataset", str(data), "--output_dir", str(tmp_path / "o"))
    assert exit_info.value.code == 2
    assert "this tokenizer splits <reserved_106>, <reserved_107> into several tokens" in capsys.readouterr().err
