"""How much a policy prefers the chosen reply of each preference pair, measured on log-probs.

`preference_margin`: mean log π(chosen) − log π(rejected) (the policy alone); `implicit_reward_margin`:
DPO's margin against the reference (the same model, adapters off). RLHF/evaluate.py reports both,
the pair trainers (DPO, ORPO) measure the first before and after training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .ppo import pack, policy_logits, token_logprobs


@torch.no_grad()
def reply_logprob_sums(model, prompts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]],
                       pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """log π(reply | prompt), summed over the reply's tokens, for each pair."""
    sums = []
    for start in range(0, len(prompts), batch_size):
        batch = pack(prompts[start:start + batch_size], replies[start:start + batch_size], pad_id)
        logp, _ = token_logprobs(policy_logits(model, batch), batch.reply_ids)
        sums.append((logp * batch.reply_mask).sum(-1))
    return torch.cat(sums)


def logprob_margins(model, pairs, pad_id: int) -> torch.Tensor:
    """log π(chosen | prompt) - log π(rejected | prompt), summed over each reply's tokens, per pair."""
    prompts = [e.prompt_ids for e in pairs]
    chosen = reply_logprob_sums(model, prompts, [e.chosen_ids for e in pairs], pad_id)
    rejected = reply_logprob_sums(model, prompts, [e.rejected_ids for e in pairs], pad_id)
    return chosen - rejected


def preference_margin(model, pairs, pad_id: int) -> float:
    """Mean log π(chosen | prompt) - log π(rejected | prompt) over encoded preference pairs: the
    policy's own preference, with no reference (and longer replies have lower sums)."""
    return logprob_margins(model, pairs, pad_id).mean().item()


def implicit_reward_margin(model, pairs, pad_id: int, beta: float) -> float:
    """DPO's implicit reward margin, β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)],
    averaged over the pairs, with π_ref the same model with its adapters off (0 for a plain model):
    how much more the policy prefers the chosen reply than its reference did."""
    if not hasattr(model, "disable_adapter"):
        return 0.0
    policy = logprob_margins(model, pairs, pad_id)
    with model.disable_adapter():
        reference = logprob_margins(model, pairs, pad_id)
    return beta * (policy - reference).mean().item()
