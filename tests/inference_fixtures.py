"""A tiny adapter that knows a few answers, trained once per test session, for the inference tests.

The chat, server, web UI and eval tests need a model whose right answer is known; a tiny random
Qwen2 memorises 8 q/a pairs with LoRA in about 2 seconds (plain torch loop, no Trainer). A tiny
Qwen3 learns a few tool calls, their answers after the tool result, and reasoning traces the same way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_tuning.conversation import Conversation
from llm_tuning.data import tokenize_conversation
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.run_config import save_run_config
from llm_tuning.templates import get_template

REPO_ROOT = Path(__file__).resolve().parent.parent
_TRAINED: dict[str, Path] = {}


def training_pairs(count: int = 8) -> list[tuple[str, str]]:
    """The first `count` rows of the shipped arithmetic data (Chinese and English questions)."""
    rows = [json.loads(line)
            for line in (REPO_ROOT / "data/simple_math_4op.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(row["q"], row["a"]) for row in rows[:count]]


def train_tiny_adapter(base: Path, out: Path, pairs: list[tuple[str, str]], steps: int = 150, seed: int = 0,
                       lora: bool = True, lr: float = 5e-3) -> Path:
    """LoRA r=8 on every linear layer of `base` (or, with lora=False, every weight), trained until it
    reproduces `pairs`; saved like a recipe does (adapter or full model, tokenizer, llm_tuning.json)."""
    conversations = [Conversation.from_turns([pair]) for pair in pairs]
    return train_on_conversations(base, out, conversations, "qwen", steps, seed, lora, lr)


def train_on_conversations(base: Path, out: Path, conversations: list[Conversation], template_name: str,
                           steps: int = 150, seed: int = 0, lora: bool = True, lr: float = 5e-3,
                           by_length: bool = False) -> Path:
    """`train_tiny_adapter` for any conversations (tools, reasoning) rendered with `template_name`;
    `by_length`: each step sums the losses of batches of similar length instead of one padded batch."""
    from peft import LoraConfig, get_peft_model

    key = f"{base}|{conversations}|{template_name}|{steps}|{seed}|{lora}|{lr}|{by_length}"
    if key in _TRAINED:
        return _TRAINED[key]
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(str(base))
    template = get_template(template_name)
    rows = [row for conversation in conversations
            for row in tokenize_conversation(tokenizer, template, conversation, 2048)]
    batches = [_padded(batch, tokenizer.pad_token_id) for batch in (_by_length(rows) if by_length else [rows])]

    model = load_model(str(base))
    if lora:
        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        for batch in batches:
            model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_run_config(str(out), base_model=str(base), template=template_name)
    _TRAINED[key] = out
    return out


def _by_length(rows: list) -> list[list]:
    """Rows in batches of similar length (a batch starts where a row is over 1.5x the first's), so
    short rows are not padded to the longest."""
    batches = []
    for row in sorted(rows, key=lambda r: len(r.input_ids)):
        if not batches or len(row.input_ids) > 1.5 * len(batches[-1][0].input_ids):
            batches.append([])
        batches[-1].append(row)
    return batches


def _padded(rows: list, pad_id: int) -> dict:
    width = max(len(r.input_ids) for r in rows)
    return {"input_ids": torch.tensor([r.input_ids + [pad_id] * (width - len(r.input_ids)) for r in rows]),
            "labels": torch.tensor([r.labels + [-100] * (width - len(r.labels)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows])}


# --- A tiny Qwen3 that calls tools and reasons, with known replies ------------------------------------

# Short definitions: every row carries them, and the tiny tokenizer spends a token per character of JSON.
TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b"}},
         {"type": "function", "function": {"name": "lookup", "description": "facts"}}]


@dataclass(frozen=True)
class ToolExchange:
    """A question the model answers by calling `function` with `arguments`, then `answer` after `result`."""

    question: str
    function: str
    arguments: dict
    result: str
    answer: str

    def messages(self, upto: str = "answer") -> list[dict]:
        """The conversation up to the call ("call"), the tool result ("result") or the answer."""
        call = {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": self.function, "arguments": self.arguments}}]}
        messages = [{"role": "user", "content": self.question}, call,
                    {"role": "tool", "tool_call_id": "call_1", "content": self.result},
                    {"role": "assistant", "content": self.answer}]
        return messages[:{"call": 2, "result": 3, "answer": 4}[upto]]


TOOL_EXCHANGES = (
    ToolExchange("What is 3 + 4?", "add", {"a": 3, "b": 4}, "7", "3 + 4 = 7."),
    ToolExchange("Capital of France?", "lookup", {"query": "France"}, "Paris", "Paris."),
)
# Asked with thinking on (chat_template_kwargs.enable_thinking): (question, reasoning, answer).
REASONING_EXCHANGES = (
    ("Is 7 odd?", "7 = 2 * 3 + 1, so it is odd.", "Yes."),
    ("Is 10 odd?", "10 = 2 * 5, so it is even.", "No."),
)
# Answered without a call, though the tools are offered.
PLAIN_EXCHANGES = (("Say hi", "Hi!"),)


def tool_conversations() -> list[Conversation]:
    """The tool exchanges (the call is trained in a row of its own, after the no-think prompt it is
    asked with: see llm_tuning/native_template.py), the reasoning, and a plain answer with tools offered."""
    conversations = [Conversation(exchange.messages(), TOOLS) for exchange in TOOL_EXCHANGES]
    conversations += [Conversation([{"role": "user", "content": q},
                                    {"role": "assistant", "content": a, "reasoning_content": r}])
                      for q, r, a in REASONING_EXCHANGES]
    conversations += [Conversation(Conversation.from_turns([pair]).messages, TOOLS) for pair in PLAIN_EXCHANGES]
    return conversations


def train_tool_adapter(tiny_qwen3: Path, out: Path) -> Path:
    """A LoRA adapter on the tiny Qwen3 stand-in (its own template) that has learned the exchanges above."""
    return train_on_conversations(tiny_qwen3, out, tool_conversations(), "native", by_length=True)
