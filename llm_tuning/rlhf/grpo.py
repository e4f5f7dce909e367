"""GRPO over verifiable rewards: the questions it trains on, and how a policy is measured on them.

`load_questions` reads q/a records (or alpaca, messages, ShareGPT) into prompts rendered with the
chat template, token for token as chat.py sends them, plus the reference answer each reward
function can read. `measure_policy` gives the figures RLHF/grpo.py prints before and after
training: greedy pass@1, the accuracy and pass@k of sampled replies, their mean combined reward,
the exact KL to the SFT policy and the reply length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..cli import UserError
from ..records import RecordKeys, detect_format, read_records, record_to_conversation
from ..templates import Template, encode_prompt
from .pairs import EncodedPair, render_prompt
from .rewards import final_number
from .rollouts import full_kl, generate_replies, pack, policy_logits
from .stage import check_same_ids

RECORD_KEYS = RecordKeys(prompt="q", target="a", history="history", system="system", format="auto")


@dataclass
class Question:
    prompt: str          # the rendered prompt text GRPOTrainer tokenizes
    prompt_ids: list[int]
    answer: str          # the reference reply


def load_questions(path: str | Path, tokenizer, template: Template, need_numbers: bool,
                   max_prompt_length: int | None = None) -> list[Question]:
    """The last question of each record as a prompt (its earlier turns as history) with the
    reference answer. With `need_numbers` (the exact_answer reward) every answer must hold a number."""
    records = read_records(path)
    keys = replace(RECORD_KEYS, format=detect_format(records[0][1]))  # one format per file, as for training
    questions = []
    for where, record in records:
        conversation = record_to_conversation(record, keys, where)
        *history, (query, answer) = conversation.turns
        if need_numbers and final_number(answer) is None:
            raise UserError(f"{where}: the answer {answer!r} has no number, which the exact_answer reward "
                            "compares; give a numeric answer or leave exact_answer out of --reward_funcs")
        prompt_ids = encode_prompt(tokenizer, template, query, history, conversation.system)
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            continue
        questions.append(Question(render_prompt(tokenizer, template, history, query, conversation.system),
                                  prompt_ids, answer))
    if not questions:
        raise UserError(f"{path}: every prompt is longer than --max_prompt_length {max_prompt_length}")
    # GRPOTrainer tokenizes the text itself: it must get the ids the chat template gives.
    check_same_ids(tokenizer(text=questions[0].prompt)["input_ids"], EncodedPair(questions[0].prompt_ids, [], []),
                   tokenizer, "GRPOTrainer")
    return questions


def combined_rewards(reward_functions: Sequence[Callable], weights: Sequence[float], questions: Sequence[Question],
                     replies: Sequence[Sequence[int]], tokenizer) -> tuple[torch.Tensor, list[str]]:
    """The weighted sum of the reward functions for each reply, and the replies as text."""
    texts = tokenizer.batch_decode(replies, skip_special_tokens=True)
    columns = {"prompts": [q.prompt for q in questions], "completions": texts,
               "completion_ids": [list(r) for r in replies], "answer": [q.answer for q in questions]}
    total = torch.zeros(len(replies))
    for function, weight in zip(reward_functions, weights, strict=True):
        total += weight * torch.tensor(function(**columns), dtype=torch.float32)
    return total, texts


def is_correct(texts: Sequence[str], questions: Sequence[Question]) -> list[bool]:
    answers = [final_number(t) for t in texts]
    return [a is not None and a == final_number(q.answer) for a, q in zip(answers, questions)]


@dataclass
class PolicyScores:
    pass_at_1: float | None        # greedy replies whose final number is right (None: answers without numbers)
    sample_accuracy: float | None  # the same over the sampled replies
    pass_at_k: float | None        # a right answer among k samples
    mean_reward: float             # combined reward of the sampled replies (what GRPO maximises)
    kl: float                      # exact KL(policy ‖ SFT) summed along each greedy reply, averaged
    mean_length: float             # greedy reply tokens, the stop token included
    replies: list[str]             # the greedy replies

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "replies"}


@torch.no_grad()
def measure_policy(model, tokenizer, questions: Sequence[Question], stop_ids: Sequence[int],
                   reward_functions: Sequence[Callable], weights: Sequence[float], k: int, temperature: float,
                   max_new_tokens: int, kl_to_reference: bool = True, batch_size: int = 64,
                   seed: int = 0) -> PolicyScores:
    """Greedy and sampled replies of `model` to every question, scored. The KL is measured against
    the same model with its adapter disabled (0 for a plain model or with `kl_to_reference` off)."""
    pad_id = tokenizer.pad_token_id
    prompts = [q.prompt_ids for q in questions]
    greedy, kls = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        replies = generate_replies(model, chunk, stop_ids, pad_id, max_new_tokens)
        greedy += replies
        if kl_to_reference and hasattr(model, "disable_adapter"):
            batch = pack(chunk, replies, pad_id)
            logits = policy_logits(model, batch)
            with model.disable_adapter():
                kls.append((full_kl(logits, policy_logits(model, batch)) * batch.reply_mask).sum(-1))
    # k samples per question, drawn from a fixed seed so that two policies see the same random stream.
    torch.manual_seed(seed)
    repeated = [q for q in questions for _ in range(k)]
    sampled = []
    for start in range(0, len(repeated), batch_size):
        chunk = [q.prompt_ids for q in repeated[start:start + batch_size]]
        sampled += generate_replies(model, chunk, stop_ids, pad_id, max_new_tokens, temperature)
    rewards, sampled_texts = combined_rewards(reward_functions, weights, repeated, sampled, tokenizer)
    greedy_texts = tokenizer.batch_decode(greedy, skip_special_tokens=True)

    numeric = all(final_number(q.answer) is not None for q in questions)
    pass_1 = sample_accuracy = pass_k = None
    if numeric:
        pass_1 = sum(is_correct(greedy_texts, questions)) / len(questions)
        right = is_correct(sampled_texts, repeated)
        sample_accuracy = sum(right) / len(right)
        pass_k = sum(any(right[i * k:(i + 1) * k]) for i in range(len(questions))) / len(questions)
    return PolicyScores(pass_1, sample_accuracy, pass_k, rewards.mean().item(),
                        torch.cat(kls).mean().item() if kls else 0.0,
                        sum(map(len, greedy)) / len(greedy), greedy_texts)


def format_table(rows: dict[str, PolicyScores], k: int, temperature: float) -> str:
    """The before/after table RLHF/grpo.py prints (and rlhf.sh shows at the end)."""
    def cell(value: float | None) -> str:
        return f"{value:>9.2f}" if value is not None else f"{'-':>9}"

    lines = [f"{'policy':<8}{'pass@1':>9}{'sampled':>9}{f'pass@{k}':>9}{'reward':>9}{'KL':>9}{'length':>9}"
             f"  first greedy reply   (sampled at temperature {temperature:g})"]
    for name, s in rows.items():
        lines.append(f"{name:<8}{cell(s.pass_at_1)}{cell(s.sample_accuracy)}{cell(s.pass_at_k)}"
                     f"{cell(s.mean_reward)}{cell(s.kl)}{cell(s.mean_length)}  {s.replies[0]!r}")
    return "\n".join(lines)
