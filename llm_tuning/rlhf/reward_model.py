"""Reward models: load one (a reward adapter on its base, or a merged model) and score replies.

RLHF/reward_model.py trains them; PPO, GRPO's `reward_model` reward, RLHF/evaluate.py and
`eval.py reward` score with them. `score_pairs` gives a reward model's held-out figure, its
pairwise accuracy on a file of preference pairs, for RLHF/reward_model.py and `eval.py reward` alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cli import UserError
from ..templates import Template
from .pairs import PreferencePair, encode_pair


def pairwise_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Share of pairs whose chosen reply scores strictly higher than its rejected reply."""
    if len(chosen_scores) != len(rejected_scores) or not chosen_scores:
        raise ValueError("need the same, non-zero number of chosen and rejected scores")
    wins = sum(c > r for c, r in zip(chosen_scores, rejected_scores))
    return wins / len(chosen_scores)


def load_scoring_model(path: str, dtype: str = "auto", trust_remote_code: bool = False,
                       rope_scaling: str | None = None, rope_factor: float = 2.0):
    """`path` as a sequence-classification model with one output, in `dtype` (see `--dtype`): a
    causal LM gets a fresh score head (what RLHF/reward_model.py trains), a merged reward model
    keeps its own. Its RoPE is stretched if `rope_scaling` is given."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ..modeling import first_line, from_pretrained_dtype, require_local_path, scaled_rope_config

    require_local_path(path, "load a reward model from")
    dtype = from_pretrained_dtype(dtype)
    try:
        config = (scaled_rope_config(path, rope_scaling, rope_factor, trust_remote_code) if rope_scaling
                  else AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
        config.num_labels = 1
        return AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=dtype,
                                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a reward model from {path}: {first_line(err)}") from None


def load_reward_model(path: str, dtype: str = "auto", trust_remote_code: bool = False, base: str | None = None,
                      rope_scaling: str | None = None, rope_factor: float = 2.0):
    """A trained reward model in eval mode: a LoRA adapter (merged into its base on load, the way
    reward_model.py saved it; `base` overrides the base it records) or a standalone merged model."""
    from ..modeling import adapter_base_model

    is_adapter = (Path(path) / "adapter_config.json").is_file()
    base = base or (adapter_base_model(path) if is_adapter else path)
    model = load_scoring_model(base, dtype, trust_remote_code, rope_scaling, rope_factor)
    if is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    return model.eval()


@torch.no_grad()
def reward_scores(reward_model, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """The reward model's scalar score of each (prompt + reply) id sequence."""
    scores = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in chunk], device=reward_model.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=reward_model.device)
        scores.append(reward_model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu())
    return torch.cat(scores)


@dataclass
class PairScores:
    """A reward model's score of the chosen and of the rejected reply of each preference pair."""

    chosen: list[float]
    rejected: list[float]

    @property
    def accuracy(self) -> float:
        return pairwise_accuracy(self.chosen, self.rejected)

    @property
    def mean_margin(self) -> float:
        return (torch.tensor(self.chosen) - torch.tensor(self.rejected)).mean().item()

    def summary(self) -> dict:
        return {"pairs": len(self.chosen), "accuracy": self.accuracy, "mean_margin": self.mean_margin}


def score_pairs(reward_model, tokenizer, template: Template, pairs: Sequence[PreferencePair],
                batch_size: int = 32) -> PairScores:
    """Score every pair's chosen and rejected reply after its prompt, token for token as the chat
    template renders them."""
    encoded = [encode_pair(tokenizer, template, pair) for pair in pairs]
    chosen = reward_scores(reward_model, [e.prompt_ids + e.chosen_ids for e in encoded], tokenizer.pad_token_id,
                           batch_size)
    rejected = reward_scores(reward_model, [e.prompt_ids + e.rejected_ids for e in encoded], tokenizer.pad_token_id,
                             batch_size)
    return PairScores(chosen.tolist(), rejected.tolist())
