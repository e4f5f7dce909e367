"""Family templates and default LoRA targets against the real families' facts, and which recipe
trains which registry template (each recipe's `Family.templates`) against the README's table.

Parity: where the real tokenizer ships a chat template (Qwen, LLaMA-2, Mistral, InternLM2, GLM-4;
the stand-ins carry copies), our inference prompt is token-for-token `apply_chat_template`.
Remote-code families have no chat template: their prompts are checked against the strings
their own `chat()` / `build_chat_input` write. LoRA targets are checked against the real module
names of each family (listed below from their modeling code), since those models cannot load here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

from llm_tuning.cli import UserError
from llm_tuning.finetune import Family
from llm_tuning.modeling import linear_module_names, load_tokenizer, resolve_lora_targets
from llm_tuning.templates import MODEL_TYPE_TEMPLATES, TEMPLATES, encode_prompt, get_template

HISTORY = [("你好", "你好！有什么可以帮你？")]
QUERY = "What is 3 + 4?"


@pytest.mark.parametrize("arch,template", [("qwen2", "qwen"), ("llama", "llama2"), ("mistral", "mistral"),
                                           ("internlm2", "internlm2"), ("glm4", "glm4")])
@pytest.mark.parametrize("system", [None, "Be brief. 简短回答。"], ids=["no-system", "system"])
def test_prompt_matches_the_tokenizers_chat_template(arch, template, system, tiny_model):
    if system and template == "mistral":
        pytest.skip("Mistral's format has no system prompt")
    tokenizer = load_tokenizer(str(tiny_model(arch)))
    # GLM-4's official history has no stop token after an answer; ours keeps the trained
    # <|endoftext|> there (the price of teaching a LoRA to stop), so it matches on one turn.
    history = [] if template == "glm4" else HISTORY
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": role, "content": text} for turn in history for role, text in zip(("user", "assistant"), turn)
    ] + [{"role": "user", "content": QUERY}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert encode_prompt(tokenizer, get_template(template), QUERY, history, system) == expected


# What the remote-code families' own chat code writes for one past turn and a new question.
REMOTE_CODE_PROMPTS = {
    # THUDM/chatglm-6b chat(): history rounds as text; the tokenizer appends [gMASK]<sop>.
    "chatglm": "[Round 0]\n问：你好\n答：[gMASK]<sop>你好！有什么可以帮你？<eop>\n[Round 1]\n问：What is 3 + 4?\n答：[gMASK]<sop>",
    # THUDM/chatglm2-6b build_prompt(): 1-based rounds, blank lines; [gMASK]sop prefix tokens.
    "chatglm2": "[gMASK]sop[Round 1]\n\n问：你好\n\n答：你好！有什么可以帮你？</s>\n\n[Round 2]\n\n问：What is 3 + 4?\n\n答：",
    "chatglm3": "[gMASK]sop<|user|>\n 你好<|assistant|>\n 你好！有什么可以帮你？</s><|user|>\n What is 3 + 4?<|assistant|>\n ",
    # Baichuan2 build_chat_input(): user_token_id 195, assistant_token_id 196.
    "baichuan2": "<s><reserved_106>你好<reserved_107>你好！有什么可以帮你？</s><reserved_106>What is 3 + 4?<reserved_107>",
    # internlm-chat-7b: <s><|User|>:{q}<eoh>\n<|Bot|>:{a}<eoa>\n
    "internlm": "<s><|User|>:你好<eoh>\n<|Bot|>:你好！有什么可以帮你？<eoa>\n<|User|>:What is 3 + 4?<eoh>\n<|Bot|>:",
}
STAND_INS = {"chatglm": "chatglm", "chatglm2": "chatglm2", "chatglm3": "chatglm2", "baichuan2": "baichuan",
             "internlm": "internlm"}


@pytest.mark.parametrize("template", list(REMOTE_CODE_PROMPTS))
def test_remote_code_family_prompts(template, tiny_model):
    tokenizer = load_tokenizer(str(tiny_model(STAND_INS[template])))
    ids = encode_prompt(tokenizer, get_template(template), QUERY, HISTORY)
    assert tokenizer.decode(ids) == REMOTE_CODE_PROMPTS[template]
    assert ids == tokenizer.encode(REMOTE_CODE_PROMPTS[template], add_special_tokens=False)


def test_llama2_system_goes_inside_the_first_inst_and_bos_starts_every_turn(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model("llama")))
    ids = encode_prompt(tokenizer, get_template("chinese-llama2"), QUERY, HISTORY)
    assert tokenizer.decode(ids) == ("<s>[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"
                                     "你好 [/INST] 你好！有什么可以帮你？ </s><s>[INST] What is 3 + 4? [/INST]")


# Linear layers of one decoder block (+ head) in each family's real modeling code.
REAL_MODULES = {
    "chatglm_lora_tuning.CHATGLM": ("chatglm", ["transformer.layers.0.attention.query_key_value",
                                                "transformer.layers.0.attention.dense", "transformer.layers.0.mlp.dense_h_to_4h",
                                                "transformer.layers.0.mlp.dense_4h_to_h", "lm_head"]),
    "chatglm2_lora_tuning.CHATGLM2": ("chatglm", ["transformer.encoder.layers.0.self_attention.query_key_value",
                                                  "transformer.encoder.layers.0.self_attention.dense",
                                                  "transformer.encoder.layers.0.mlp.dense_h_to_4h",
                                                  "transformer.encoder.layers.0.mlp.dense_4h_to_h", "transformer.output_layer"]),
    "baichuan_lora_tuning.BAICHUAN": ("baichuan", ["model.layers.0.self_attn.W_pack", "model.layers.0.self_attn.o_proj",
                                                   "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.down_proj",
                                                   "model.layers.0.mlp.up_proj", "lm_head"]),
    "baichuan2_lora_tuning.BAICHUAN2": ("baichuan", ["model.layers.0.self_attn.W_pack", "model.layers.0.self_attn.o_proj",
                                                     "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.down_proj",
                                                     "model.layers.0.mlp.up_proj"]),  # lm_head is a NormHead
    "internlm_lora_tuning.INTERNLM": ("internlm2", ["model.layers.0.attention.wqkv", "model.layers.0.attention.wo",
                                                   "model.layers.0.feed_forward.w1", "model.layers.0.feed_forward.w2",
                                                   "model.layers.0.feed_forward.w3", "output"]),
    "qwen_lora_tuning.QWEN": ("qwen", ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                       "transformer.h.0.mlp.w1", "transformer.h.0.mlp.w2", "transformer.h.0.mlp.c_proj",
                                       "lm_head"]),
}
HEADS = {"lm_head", "output_layer", "output"}


def skeleton(linear_names: list[str]) -> torch.nn.Module:
    """A module tree with a 2x2 Linear at each dotted name: enough for target resolution."""
    root = torch.nn.Module()
    for dotted in linear_names:
        parent = root
        *path, leaf = dotted.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, torch.nn.Linear(2, 2))
    return root


@pytest.mark.parametrize("family_ref", list(REAL_MODULES))
def test_default_lora_targets_name_real_layers_of_the_family(family_ref):
    module_name, attr = family_ref.split(".")
    family = getattr(importlib.import_module(module_name), attr)
    model_type, names = REAL_MODULES[family_ref]
    model = skeleton(names)
    targets = resolve_lora_targets(model, family.lora_targets[model_type])  # raises if any name is wrong
    block_linears = {n.rsplit(".", 1)[-1] for n in names} - HEADS
    if family_ref != "chatglm_lora_tuning.CHATGLM":  # ChatGLM-6B's recipe trains query_key_value only
        assert set(targets) == block_linears


@pytest.mark.parametrize("arch,family_ref", [("glm", "glm4_lora_tuning.GLM4"), ("glm4", "glm4_lora_tuning.GLM4"),
                                             ("llama", "llama2_lora_tuning.LLAMA2"), ("mistral", "mistral_lora_tuning.MISTRAL"),
                                             ("qwen3", "qwen_lora_tuning.QWEN")])
def test_native_families_target_every_linear_layer_of_the_real_architecture(arch, family_ref, tiny_model):
    from transformers import AutoModelForCausalLM

    module_name, attr = family_ref.split(".")
    family = getattr(importlib.import_module(module_name), attr)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model(arch)))
    assert set(resolve_lora_targets(model, family.lora_targets[model.config.model_type])) == set(linear_module_names(model))


def test_a_wrong_target_names_the_layers_that_exist():
    with pytest.raises(UserError, match="query_key_value match no linear layer of this model; its linear layers are: W_pack"):
        resolve_lora_targets(skeleton(["model.layers.0.self_attn.W_pack", "lm_head"]), "query_key_value")


# --- Which family trains which template: declared once, in each recipe's Family block ------------

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE_ROW = re.compile(r"^\| `(\w+_lora_tuning\.py)` \|")
CODE_WORD = re.compile(r"(?<!`)`([\w.-]+)`(?!`)")  # `qwen2.5`, not a ``` fence


def recipe_family(script: str) -> Family:
    module = importlib.import_module(script.removesuffix(".py"))
    return next(value for value in vars(module).values() if isinstance(value, Family))


def family_table(readme: str) -> dict[str, set[str]]:
    """Recipe -> the registry templates its row of the README's family table names."""
    rows = {}
    for line in (REPO_ROOT / readme).read_text(encoding="utf-8").splitlines():
        match = RECIPE_ROW.match(line)
        if match:
            template_cell = [cell.strip() for cell in line.strip().strip("|").split("|")][2]
            rows[match.group(1)] = set(CODE_WORD.findall(template_cell)) & set(TEMPLATES)
    return rows


@pytest.mark.parametrize("readme", ["README.md", "README_zh.md"])
def test_every_registry_template_the_readme_names_is_trained_by_the_recipe_it_is_sent_to(readme):
    named = set(CODE_WORD.findall((REPO_ROOT / readme).read_text(encoding="utf-8"))) & set(TEMPLATES)
    assert named == set(TEMPLATES), f"{readme} never names the registry templates {sorted(set(TEMPLATES) - named)}"
    table = family_table(readme)
    assert {path.name for path in REPO_ROOT.glob("*_lora_tuning.py")} == set(table)
    for template in sorted(named):
        sent_to = [recipe for recipe, templates in table.items() if template in templates]
        assert sent_to, f"{readme}'s family table sends the registry template {template!r} to no recipe"
        for recipe in sent_to:
            assert template in recipe_family(recipe).templates, \
                f"{readme} sends {template!r} to {recipe}, which refuses data tokenized with it"
    for recipe, templates in table.items():
        if recipe != "generic_lora_tuning.py":  # it trains every one; its row names an example
            assert templates == recipe_family(recipe).templates, f"{readme}'s row of {recipe}"


def test_the_auto_template_of_a_model_type_is_trained_by_a_recipe_for_that_type():
    families = [recipe_family(path.name) for path in sorted(REPO_ROOT.glob("*_lora_tuning.py"))]
    for model_type, template in MODEL_TYPE_TEMPLATES.items():
        recipes = [family for family in families if model_type in family.lora_targets]
        assert recipes, f"no recipe declares LoRA targets for model type {model_type!r}"
        assert any(template in family.templates for family in recipes), \
            f"--template auto picks {template!r} for {model_type!r}, which no recipe for that type trains"
