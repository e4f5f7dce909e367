"""A compact PPO core for RLHF with LoRA: one base model is the policy (adapter on), the reference
(adapter off) and, with a small value head on its last hidden state, the critic.

The pieces, in the order a PPO iteration uses them:
`generate_replies` (sampling, EOS suppressed at the first position) → `pack` (prompts padded on the
left, replies on the right) → `PolicyWithValue.forward` / `.reference_logits` → `token_logprobs`
→ `kl_shaped_rewards` (−β·KL per token, the reward-model score on the last token) → `gae`
→ `whiten` → `ppo_losses` (clipped policy and value losses). `RLHF/ppo.py` is the loop around them.
"""

from __future__ import annotations

import resource
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


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated (since the last reset) on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def full_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact per-position KL(policy ‖ reference) over the whole vocabulary: (B, R)."""
    logp, ref_logp = F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


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


# --- Measuring a policy --------------------------------------------------------------------------


@torch.no_grad()
def policy_logits(model, batch: Packed) -> torch.Tensor:
    """Logits at the positions that predict each reply token, (B, R, V), for any causal LM."""
    out = model(input_ids=batch.input_ids.to(model.device), attention_mask=batch.attention_mask.to(model.device),
                position_ids=batch.position_ids.to(model.device))
    return out.logits[:, batch.prompt_width - 1:-1].float().cpu()


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


