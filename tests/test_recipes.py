"""Every family recipe, end to end on its tiny stand-in: train → chat → merge, as a user runs them.

A stand-in is a native architecture carrying the family's special tokens (llm_tuning.testing):
remote-code families (ChatGLM, Baichuan, InternLM) cannot be loaded offline. Training must make
the model answer all eight memorised questions exactly with the family's template, which fails if
the template, label masking, stop token or padding side is wrong. The recipes run in-process
through `runpy` (their real `__main__`), which keeps the suite fast.

Also: every recipe's main() calls the stages `llm_tuning.finetune` runs, in the same order; the
README's "Add a model family" checklist, followed for a made-up family, gives a recipe that trains;
every run config under configs/ parses and is run by a README command (tests/test_docs.py runs it).
"""

from __future__ import annotations

import ast
import inspect
import re
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


# --- Every recipe's main() is the library's stages, in order ----------------------------------------

def calls_in_order(function: ast.FunctionDef) -> list[str]:
    calls = sorted((node for node in ast.walk(function) if isinstance(node, ast.Call)),
                   key=lambda node: (node.lineno, node.col_offset))
    return [call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id for call in calls]


def function_named(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)


@pytest.mark.parametrize("script", sorted(path.name for path in REPO_ROOT.glob("*_lora_tuning.py")))
def test_a_recipes_main_calls_the_stages_finetune_runs_in_order(script):
    import llm_tuning.finetune

    library = ast.parse(inspect.getsource(llm_tuning.finetune))
    after_build = [name for name in calls_in_order(function_named(library, "finetune"))
                   if name not in {"build_trainer", "end_run"}]
    stages = ["parse_args", *calls_in_order(function_named(library, "build_trainer")), *after_build]
    recipe = ast.parse((REPO_ROOT / script).read_text(encoding="utf-8"))
    assert calls_in_order(function_named(recipe, "main")) == stages
    main_block = next(node for node in recipe.body if isinstance(node, ast.If))
    assert calls_in_order(main_block)[-2:] == ["main", "end_run"]


# --- The README's "Add a model family" checklist, followed for a made-up family ---------------------

TINYFAM_BLOCK = """TINYFAM = Family(
    script=__file__,
    templates=frozenset({"tinyfam"}),
    lora_targets={"llama": LLAMA_PROJECTIONS},
    trust_remote_code=False,
    padding_side="right",
    marker_tokens=("<|tiny_user|>", "<|tiny_bot|>"),
)
"""


def test_a_made_up_family_added_by_the_readme_checklist_trains_and_chats(tmp_path, monkeypatch, capsys):
    from llm_tuning import templates, testing
    from llm_tuning.run_config import read_run_config

    # 1. Copy the closest recipe and rewrite its Family block.
    source = (REPO_ROOT / "llama2_lora_tuning.py").read_text(encoding="utf-8")
    block = re.search(r"^LLAMA2 = Family\(\n.*?^\)\n", source, re.M | re.S)
    recipe = tmp_path / "tinyfam_lora_tuning.py"
    recipe.write_text(source.replace(block.group(0), TINYFAM_BLOCK).replace("LLAMA2", "TINYFAM"), encoding="utf-8")
    # 2. Its chat format in the registry (its stand-in's model type is llama's, so no MODEL_TYPE_TEMPLATES entry).
    monkeypatch.setitem(templates.TEMPLATES, "tinyfam", templates.Template(
        name="tinyfam", user_format="<|tiny_user|>{query}<|tiny_bot|>", add_bos=True, notes="made up"))
    # 3. A tiny stand-in: a native LLaMA with the family's special tokens.
    monkeypatch.setitem(testing.ARCHS, "tinyfam", testing.ArchSpec(
        "llama", ("<unk>", "<s>", "</s>", "<|tiny_user|>", "<|tiny_bot|>"), "<s>", "</s>", "<unk>", None))
    model_dir = testing.save_tiny_model("tinyfam", tmp_path / "tiny-tinyfam")
    # 4. End to end, as RECIPES runs every family.
    data = save_tokenized_pairs(model_dir, "tinyfam", tmp_path / "data" / "qa")
    out = tmp_path / "adapter"
    run_recipe(str(recipe), "--tokenized_dataset", str(data), "--output_dir", str(out), *TRAIN_FLAGS)
    assert read_run_config(out)["recipe"] == "tinyfam_lora_tuning.py"  # Family.script is the copy's own name
    model, tokenizer, chat_template = chat.load_chat_model(chat.parse_args(["--adapter", str(out)]))
    assert chat_template.name == "tinyfam"
    assert greedy_answers(model, tokenizer, "tinyfam") == [a for _, a in MEMORISE_PAIRS]

    other = save_tokenized_pairs(model_dir, "llama2", tmp_path / "data" / "llama2")
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(str(recipe), "--tokenized_dataset", str(other), "--output_dir", str(tmp_path / "o"))
    assert exit_info.value.code == 2
    refusal = "but tinyfam_lora_tuning.py trains tinyfam; tokenize again with --template tinyfam"
    assert refusal in capsys.readouterr().err


@pytest.mark.parametrize("readme,title", [("README.md", "**Add a model family**"),
                                          ("README_zh.md", "**新增一个模型家族**")])
def test_the_add_a_family_checklist_names_files_and_names_that_exist(readme, title):
    text = (REPO_ROOT / readme).read_text(encoding="utf-8")
    start = text.index(title)
    checklist = text[start:text.index("\n\n", start)]
    paths = set(re.findall(r"`((?:llm_tuning|tests)/[\w/]+\.py|README(?:_zh)?\.md)`", checklist))
    assert len(paths) == 6 and all((REPO_ROOT / path).is_file() for path in paths), paths
    for name, path in (("MODEL_TYPE_TEMPLATES", "llm_tuning/templates.py"), ("ARCHS", "llm_tuning/testing.py"),
                       ("RECIPES", "tests/test_recipes.py"), ("REAL_MODULES", "tests/test_templates.py")):
        assert f"`{name}`" in checklist
        assert re.search(rf"^{name}(: .*)? = ", (REPO_ROOT / path).read_text(encoding="utf-8"), re.M), (name, path)


# --- One run config per tutorial run, each run by the README ----------------------------------------

RUN_CONFIGS = sorted(path.name for path in (REPO_ROOT / "configs").glob("*.yaml")
                     if "tokenized_dataset:" in path.read_text(encoding="utf-8"))


def test_the_tutorials_have_run_configs():
    tutorial_runs = {"qwen_lora.yaml", "qwen_qlora.yaml", "qwen3_reasoning_math.yaml", "qwen3_tool_calls.yaml"}
    assert tutorial_runs <= set(RUN_CONFIGS)


@pytest.mark.parametrize("config", RUN_CONFIGS)
def test_a_run_config_parses_and_a_readme_command_runs_it(config, tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

    monkeypatch.chdir(tmp_path)  # its output_dir is relative: nothing of this checkout's weights/ counts
    _, data_args, _, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments, argv=[str(REPO_ROOT / "configs" / config)])
    # YAML reads `learning_rate: 2e-4` as a string; the parser reads it as the flag --learning_rate 2e-4.
    assert isinstance(training_args.learning_rate, float) and data_args.tokenized_dataset
    promise = {"README.md": "writes", "README_zh.md": "写入"}
    for readme, writes in promise.items():
        lines = [line for line in (REPO_ROOT / readme).read_text(encoding="utf-8").splitlines()
                 if re.match(rf"python \w+_lora_tuning\.py configs/{re.escape(config)}\s", line)]
        assert len(lines) == 1, f"{readme} runs configs/{config} {len(lines)} times"
        # tests/test_docs.py runs it and checks the folder its comment promises.
        assert f"{writes} {training_args.output_dir}/" in lines[0]
