"""How much a policy prefers the chosen reply of each preference pair, measured on log-probs.

`preference_margin`: mean log π(chosen) − log π(rejected) (the policy alone); `implicit_reward_margin`:
DPO's margin against the reference (the same model, adapters off). RLHF/evaluate.py reports both,
the pair trainers (DPO, ORPO) measure the first before and after training. A reply's log-probability
is `llm_tuning.metrics.continuation_log_probs`, the one evaluation's perplexity and choices use.
"""

from __future__ import annotations

import torch

from ..metrics import continuation_log_probs


def logprob_margins(model, pairs, pad_id: int) -> torch.Tensor:
    """log π(chosen | prompt) - log π(rejected | prompt), summed over each reply's tokens, per pair."""
    prompts = [e.prompt_ids for e in pairs]
    chosen = continuation_log_probs(model, prompts, [e.chosen_ids for e in pairs], pad_id)
    rejected = continuation_log_probs(model, prompts, [e.rejected_ids for e in pairs], pad_id)
    return torch.tensor([c - r for (c, _), (r, _) in zip(chosen, rejected, strict=True)])


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
