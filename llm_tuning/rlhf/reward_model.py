"""Reward models: load one (a reward adapter on its base, or a merged model) and score replies.

RLHF/reward_model.py trains them; PPO, GRPO's `reward_model` reward, RLHF/evaluate.py and
`eval.py reward` score with them. `pairwise_accuracy` is the held-out figure of a reward model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..cli import UserError


def pairwise_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Share of pairs whose chosen reply scores strictly higher than its rejected reply."""
    if len(chosen_scores) != len(rejected_scores) or not chosen_scores:
        raise ValueError("need the same, non-zero number of chosen and rejected scores")
    wins = sum(c > r for c, r in zip(chosen_scores, rejected_scores))
    return wins / len(chosen_scores)


def load_reward_model(path: str, dtype: str = "float32", trust_remote_code: bool = False, base: str | None = None,
                      rope_scaling: str | None = None, rope_factor: float = 2.0):
    """A sequence-classification reward model: a LoRA adapter (merged into its base on load, the
    way reward_model.py saved it; `base` overrides the base it records) or a standalone merged
    model, in `dtype`, with its RoPE stretched if `rope_scaling` is given."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ..modeling import DTYPES, adapter_base_model, first_line, scaled_rope_config

    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is unknown; choose auto, {', '.join(DTYPES)}")
    is_adapter = (Path(path) / "adapter_config.json").is_file()
    base = base or (adapter_base_model(path) if is_adapter else path)
    try:
        config = (scaled_rope_config(base, rope_scaling, rope_factor, trust_remote_code) if rope_scaling
                  else AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code))
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_pretrained(
            base, config=config, dtype="auto" if dtype == "auto" else DTYPES[dtype], trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a reward model from {base}: {first_line(err)}") from None
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
