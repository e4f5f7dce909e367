"""A tiny adapter that knows a few answers, trained once per test session, for the inference tests.

The chat, server, web UI and eval tests need a model whose right answer is known; a tiny random
Qwen2 memorises 8 q/a pairs with LoRA in about 2 seconds (plain torch loop, no Trainer)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm_tuning.data import tokenize_conversation
from llm_tuning.conversation import Conversation
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.templates import get_template
from llm_tuning.run_config import save_run_config

REPO_ROOT = Path(__file__).resolve().parent.parent
_TRAINED: dict[str, Path] = {}


def training_pairs(count: int = 8) -> list[tuple[str, str]]:
    """The first `count` rows of the shipped arithmetic data (Chinese and English questions)."""
    rows = [json.loads(line) for line in (REPO_ROOT / "data/simple_math_4op.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(row["q"], row["a"]) for row in rows[:count]]


def train_tiny_adapter(base: Path, out: Path, pairs: list[tuple[str, str]], steps: int = 150, seed: int = 0,
                       lora: bool = True, lr: float = 5e-3) -> Path:
    """LoRA r=8 on every linear layer of `base` (or, with lora=False, every weight), trained until it
    reproduces `pairs`; saved like a recipe does (adapter or full model, tokenizer, llm_tuning.json)."""
    from peft import LoraConfig, get_peft_model

    key = f"{base}|{pairs}|{steps}|{seed}|{lora}|{lr}"
    if key in _TRAINED:
        return _TRAINED[key]
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(str(base))
    template = get_template("qwen")
    rows = [row for pair in pairs for row in tokenize_conversation(tokenizer, template, Conversation.from_turns([pair]), 256)]
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.tensor([r.input_ids + [tokenizer.pad_token_id] * (width - len(r.input_ids)) for r in rows])
    labels = torch.tensor([r.labels + [-100] * (width - len(r.labels)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows])

    model = load_model(str(base))
    if lora:
        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_run_config(str(out), base_model=str(base), template="qwen")
    _TRAINED[key] = out
    return out
