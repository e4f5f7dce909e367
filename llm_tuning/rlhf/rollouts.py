"""A policy's replies: sampled, packed with their prompts, scored token by token, measured.

What PPO (`ppo.py`, RLHF/ppo.py), GRPO's measurements (`grpo.py`) and RLHF/evaluate.py share:
`generate_replies` (sampling from exactly softmax(logits / T), stop tokens masked at the first
position) → `pack` (prompts padded on the left, replies on the right, one column where every reply
starts) → `policy_logits` (the logits that predict each reply token) → `full_kl` (the exact KL to
a reference along the reply). `evaluate_policy` puts them together: a policy's greedy replies,
their reward-model score and their KL to the SFT model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from .reward_model import reward_scores


@dataclass
class Packed:
    """Prompts + replies as one batch. The prompt block has width P (left padded), the reply block
    width R (right padded); position P-1+t predicts reply token t."""

    input_ids: torch.Tensor       # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    position_ids: torch.Tensor    # (B, P + R): positions restart after the left padding
    reply_ids: torch.Tensor       # (B, R)
    reply_mask: torch.Tensor      # (B, R), 1.0 on reply tokens (the stop token included)
    prompt_width: int

    def rows(self, index: torch.Tensor) -> Packed:
        return Packed(self.input_ids[index], self.attention_mask[index], self.position_ids[index],
                      self.reply_ids[index], self.reply_mask[index], self.prompt_width)

    def to(self, device: torch.device) -> Packed:
        return Packed(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                      self.reply_ids.to(device), self.reply_mask.to(device), self.prompt_width)


def pack(prompts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]], pad_id: int) -> Packed:
    width_p = max(len(p) for p in prompts)
    width_r = max(1, max(len(r) for r in replies))
    ids, mask, reply_mask = [], [], []
    for prompt, reply in zip(prompts, replies):
        left, right = width_p - len(prompt), width_r - len(reply)
        ids.append([pad_id] * left + list(prompt) + list(reply) + [pad_id] * right)
        mask.append([0] * left + [1] * (len(prompt) + len(reply)) + [0] * right)
        reply_mask.append([1.0] * len(reply) + [0.0] * right)
    input_ids = torch.tensor(ids)
    attention_mask = torch.tensor(mask)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Packed(input_ids, attention_mask, position_ids, input_ids[:, width_p:],
                  torch.tensor(reply_mask), width_p)


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """The reply up to and including its first stop token (generate pads finished rows after it)."""
    reply = []
    for token in tokens:
        reply.append(int(token))
        if token in stop_ids:
            break
    return reply


def rollout_generation_config(stop_ids: Sequence[int], pad_id: int, max_new_tokens: int,
                              temperature: float) -> GenerationConfig:
    """Sampling from exactly the distribution `token_logprobs` scores: softmax(logits / temperature),
    no top-k/top-p, no penalties, and the stop tokens masked at the first position (`min_new_tokens`,
    which `token_logprobs(..., banned_first=stop_ids)` masks too). temperature 0 means greedy."""
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
        else {"do_sample": False}
    return GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=1, eos_token_id=list(stop_ids),
                            pad_token_id=pad_id, **sampling)


@contextmanager
def only_generation_config(model) -> Iterator[None]:
    """`generate` fills every field its `generation_config` leaves unset from the model's own
    generation_config.json (Qwen2.5-Instruct ships `repetition_penalty: 1.05`, others top_k/top_p):
    the sampled tokens would then not come from the distribution PPO scores, biasing the importance
    ratio and the KL. Hide the model's own config while sampling."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = own


@torch.no_grad()
def generate_replies(model, prompts: Sequence[Sequence[int]], stop_ids: Sequence[int], pad_id: int,
                     max_new_tokens: int, temperature: float = 0.0) -> list[list[int]]:
    """Replies (ids, each ending with its stop token unless cut by max_new_tokens), sampled with
    `rollout_generation_config` alone.

    `min_new_tokens=1` masks every stop token at the first generated position: without it PPO
    finds that an empty reply is the cheapest way to avoid a low score and collapses to it (the
    lesson of the original Baichuan tutorial). temperature 0 means greedy."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = rollout_generation_config(stop_ids, pad_id, max_new_tokens, temperature)
    with only_generation_config(model):
        output = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                                generation_config=config)
    return [cut_at_stop(row[width:].tolist(), stop_ids) for row in output]


@torch.no_grad()
def policy_logits(model, batch: Packed) -> torch.Tensor:
    """Logits at the positions that predict each reply token, (B, R, V), for any causal LM."""
    out = model(input_ids=batch.input_ids.to(model.device), attention_mask=batch.attention_mask.to(model.device),
                position_ids=batch.position_ids.to(model.device))
    return out.logits[:, batch.prompt_width - 1:-1].float().cpu()


def full_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact per-position KL(policy ‖ reference) over the whole vocabulary: (B, R)."""
    logp, ref_logp = F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


# --- Measuring a policy --------------------------------------------------------------------------


@dataclass
class PolicyReport:
    replies: list[str]
    mean_reward: float
    mean_kl: float        # exact KL(policy ‖ reference) summed over each greedy reply, averaged
    empty_replies: int
    mean_length: float    # reply tokens, the stop token included


@torch.no_grad()
def evaluate_policy(model, reward_model, tokenizer, prompts: Sequence[Sequence[int]], stop_ids: Sequence[int],
                    max_new_tokens: int, batch_size: int = 16) -> PolicyReport:
    """Greedy replies of a peft policy to `prompts`, their reward-model score, and how far the policy
    has moved from its reference (the same model with the adapter disabled) along those replies."""
    pad_id = tokenizer.pad_token_id
    replies, kls = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        chunk_replies = generate_replies(model, chunk, stop_ids, pad_id, max_new_tokens)
        batch = pack(chunk, chunk_replies, pad_id)
        logits = policy_logits(model, batch)
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                ref_logits = policy_logits(model, batch)
        else:  # a plain model is its own reference
            ref_logits = logits
        kls.append((full_kl(logits, ref_logits) * batch.reply_mask).sum(-1))
        replies += chunk_replies
    scores = reward_scores(reward_model, [list(p) + r for p, r in zip(prompts, replies)], pad_id)
    texts = [tokenizer.decode([t for t in r if t not in stop_ids], skip_special_tokens=True) for r in replies]
    return PolicyReport(texts, scores.mean().item(), torch.cat(kls).mean().item(),
                        sum(not t.strip() for t in texts), sum(map(len, replies)) / len(replies))
