"""The PPO algorithm for RLHF with LoRA: one base model is the policy (adapter on), the reference
(adapter off) and, with a small value head on its last hidden state, the critic.

The pieces, in the order a PPO iteration uses them (sampling and packing come from `rollouts.py`,
which GRPO shares): `generate_replies` → `pack` → `score_rollout` (`PolicyWithValue.forward` /
`.reference_logits` → `token_logprobs`) → `kl_shaped_rewards` (−β·KL per token, the reward-model
score on the last token) → `gae` → `whiten` → `ppo_losses` (clipped policy and value losses).
`RLHF/ppo.py` is the loop around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .rollouts import Packed


class PolicyWithValue(torch.nn.Module):
    """A peft LoRA model plus a scalar value head on the last hidden state of the adapted model."""

    def __init__(self, peft_model):
        super().__init__()
        self.model = peft_model
        hidden_size = peft_model.get_base_model().config.get_text_config().hidden_size
        self.value_head = torch.nn.Linear(hidden_size, 1)
        # A zero value head starts as "every state is worth 0" instead of random noise in the advantages.
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.value_head.to(peft_model.device)

    def forward(self, batch: Packed) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and values at the positions that predict each reply token: (B, R, V), (B, R)."""
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, output_hidden_states=True)
        span = slice(batch.prompt_width - 1, batch.input_ids.shape[1] - 1)
        hidden = out.hidden_states[-1][:, span]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits[:, span].float(), values.float()

    @torch.no_grad()
    def reference_logits(self, batch: Packed) -> torch.Tensor:
        """The same base with the adapter switched off: the SFT policy PPO must stay close to."""
        with self.model.disable_adapter():
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids)
        return out.logits[:, batch.prompt_width - 1:-1].float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   banned_first: Sequence[int] = ()):
    """Log-probability of each token and the entropy of each distribution, at `temperature`
    (the one the rollouts were sampled at, so the ratio compares the same distributions), with
    the `banned_first` tokens (the stop tokens sampling masks there) impossible at position 0."""
    logits = logits / max(temperature, 1e-6)
    if banned_first:
        logits = logits.clone()
        logits[:, 0, list(banned_first)] = torch.finfo(logits.dtype).min
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@dataclass
class ScoredRollout:
    """What the PPO update needs of a rollout, per reply token: (B, R) each, no vocabulary axis."""

    logp: torch.Tensor      # log π_old(token), at the sampling temperature
    ref_logp: torch.Tensor  # log π_ref(token)
    values: torch.Tensor    # the value head's estimate before each token
    entropy: torch.Tensor   # entropy of π_old at each position


@torch.no_grad()
def score_rollout(policy: PolicyWithValue, batch: Packed, temperature: float, banned_first: Sequence[int],
                  chunk_size: int) -> ScoredRollout:
    """Policy and reference log-probs, values and entropies of a rollout, `chunk_size` rows at a
    time: only one chunk's full-vocabulary logits are alive at once (for a 150k vocabulary and
    256-token replies that is ~150 MB a row in float32), and only the gathered log-probs are kept."""
    parts = []
    for index in torch.arange(len(batch.input_ids)).split(chunk_size):
        chunk = batch.rows(index)
        logits, values = policy(chunk)
        logp, entropy = token_logprobs(logits, chunk.reply_ids, temperature, banned_first)
        del logits
        ref_logp, _ = token_logprobs(policy.reference_logits(chunk), chunk.reply_ids, temperature, banned_first)
        parts.append((logp, ref_logp, values, entropy))
    return ScoredRollout(*(torch.cat(column) for column in zip(*parts)))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_shaped_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards −kl_coef·(log π − log π_ref), plus the sequence score on its last token.
    Returns (rewards, kl) with kl the per-token estimate, both (B, R) and zero past each reply."""
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over the reply tokens; returns (advantages, returns)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    # Past the end of a reply rewards and values are 0, so the running sum is 0 at each last token.
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass
class LossParts:
    loss: torch.Tensor
    policy_loss: float
    value_loss: float
    clip_fraction: float
    approx_kl: float


def ppo_losses(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
               values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange: float, cliprange_value: float, vf_coef: float) -> LossParts:
    """The clipped surrogate policy loss plus vf_coef × the clipped value loss."""
    ratio = torch.exp(logp - old_logp)
    policy_loss = masked_mean(torch.max(-advantages * ratio,
                                        -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)), mask)
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped_values - returns) ** 2), mask)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1).abs() > cliprange).float(), mask).item()
        approx_kl = 0.5 * masked_mean((logp - old_logp) ** 2, mask).item()
    return LossParts(policy_loss + vf_coef * value_loss, policy_loss.item(), value_loss.item(),
                     clip_fraction, approx_kl)
