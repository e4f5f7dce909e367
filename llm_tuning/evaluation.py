"""Evaluation runs over a file: batch generation, choice questions, perplexity, reward accuracy.

eval.py and the eval-during-training callback both call these, so a number logged while training
is the number eval.py prints afterwards. Each returns (metrics, per-sample rows).

File formats (json list or jsonl):
- generation / perplexity: q/a records, optionally with `history` and `system`, or any other record
  format training reads (alpaca, messages with reasoning and tool calls, ShareGPT); the last
  assistant message is the reference, scored without its reasoning
- choice: `{"question": ..., "A": ..., "B": ..., "C": ..., "D": ..., "answer": "B"}` (C-Eval style;
  any number of option letters A, B, C, ...)
- reward: preference pairs as RLHF/ reads them (prompt/chosen/rejected, ...)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .cli import UserError
from .conversation import Conversation, answer_of, split_reasoning
from .generation import GenerationSettings, generate_in_batches
from .records import RecordKeys, load_conversations, read_records
from .metrics import choice_accuracy, continuation_log_probs, generation_scores, perplexity, best_option
from .templates import Template, encode_chat, encode_conversation, encode_prompt, stop_token_ids

EVAL_KEYS = RecordKeys(prompt="q", target="a", history="history", system="system", format="auto")
LETTERS = "ABCDEFGHIJ"


def load_eval_conversations(path: str | Path) -> list[Conversation]:
    return load_conversations(path, EVAL_KEYS)


def evaluate_generation(model, tokenizer, template: Template, conversations: Sequence[Conversation],
                        settings: GenerationSettings | None = None, batch_size: int = 16,
                        progress: bool = True) -> tuple[dict, list[dict]]:
    """Greedy (or `settings`) replies to each last question; rouge/bleu/exact match against its answer."""
    settings = settings or GenerationSettings(max_new_tokens=256)
    prompts = [encode_chat(tokenizer, template, c.messages[:c.assistant_indices()[-1]], c.tools)
               for c in conversations]
    # Batches of similar prompt lengths (little padding); the replies come back in file order.
    replies = generate_in_batches(model, tokenizer, prompts, [settings] * len(prompts),
                                  stop_token_ids(tokenizer, template), batch_size,
                                  desc="generating" if progress else None)
    rows = []
    for conversation, reply in zip(conversations, replies):
        reasoning, answer = split_reasoning(reply)
        rows.append({"q": last_question(conversation), "reference": answer_of(conversation.messages[-1]),
                     "prediction": answer, **({"reasoning": reasoning} if reasoning else {})})
    return generation_scores([r["prediction"] for r in rows], [r["reference"] for r in rows]), rows


def last_question(conversation: Conversation) -> str:
    return next(m["content"] for m in reversed(conversation.messages) if m["role"] == "user")


def evaluate_perplexity(model, tokenizer, template: Template, conversations: Sequence[Conversation],
                        batch_size: int = 16) -> tuple[dict, list[dict]]:
    """Perplexity of the last answers (with their stop tokens) given their prompts, per token over the file."""
    prompts, answers = [], []
    for c in conversations:
        last = encode_conversation(tokenizer, template, c, c.assistant_indices()[-1:])[-1]
        span = last.spans[-1]
        prompts.append(last.input_ids[:span.start])
        answers.append(last.input_ids[span.start:span.stop])
    scored = continuation_log_probs(model, prompts, answers, tokenizer.pad_token_id, batch_size)
    rows = [{"q": last_question(c), "log_prob": lp, "tokens": n} for c, (lp, n) in zip(conversations, scored)]
    return {"perplexity": perplexity(scored), "tokens": sum(n for _, n in scored)}, rows


@dataclass
class ChoiceQuestion:
    question: str
    options: dict[str, str]
    answer: str


def load_choice_questions(path: str | Path) -> list[ChoiceQuestion]:
    """C-Eval-style records; says `file:line` and what is wrong for a bad one."""
    questions = []
    for where, record in read_records(path):
        if not isinstance(record.get("question"), str):
            raise UserError(f"{where}: no 'question' string (found: {', '.join(record)})")
        options = {letter: record[letter] for letter in LETTERS if letter in record}
        if len(options) < 2 or list(options) != list(LETTERS[:len(options)]):
            raise UserError(f"{where}: options must be keys A, B, C, ... in order (at least A and B)")
        if not all(isinstance(text, str) for text in options.values()):
            raise UserError(f"{where}: every option must be a string")
        answer = str(record.get("answer", "")).strip().upper()
        if answer not in options:
            raise UserError(f"{where}: 'answer' must be one of {', '.join(options)}, got {record.get('answer')!r}")
        questions.append(ChoiceQuestion(record["question"], options, answer))
    return questions


def choice_query(question: ChoiceQuestion) -> str:
    """The user message for a choice question: the question, its options, and the answer cue."""
    chinese = re.search(r"[\u4e00-\u9fff]", question.question) is not None
    lines = [question.question, *(f"{letter}. {text}" for letter, text in question.options.items())]
    return "\n".join(lines) + ("\n答案：" if chinese else "\nAnswer:")


def evaluate_choices(model, tokenizer, template: Template, questions: Sequence[ChoiceQuestion],
                     batch_size: int = 16) -> tuple[dict, list[dict]]:
    """Pick the option letter the model finds most likely after the prompt; accuracy against the answers."""
    prompts, letters = [], []
    for q in questions:
        prompt = encode_prompt(tokenizer, template, choice_query(q))
        for letter in q.options:
            prompts.append(prompt)
            letters.append(tokenizer.encode(letter, add_special_tokens=False))
    scored = iter(continuation_log_probs(model, prompts, letters, tokenizer.pad_token_id, batch_size))
    option_scores = [[next(scored)[0] for _ in q.options] for q in questions]
    picked = [best_option(scores, list(q.options)) for q, scores in zip(questions, option_scores)]
    rows = [{"question": q.question, "answer": q.answer, "prediction": p, "log_probs": s}
            for q, p, s in zip(questions, picked, option_scores)]
    return {"choice_accuracy": choice_accuracy(picked, [q.answer for q in questions])}, rows
