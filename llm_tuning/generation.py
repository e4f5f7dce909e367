"""Chat generation on top of the template registry: the prompt is exactly the training prompt."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .templates import Template, encode_prompt, stop_token_ids


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def generate_kwargs(self, tokenizer, template: Template) -> dict:
        kwargs = {
            "max_new_tokens": self.max_new_tokens,
            "eos_token_id": stop_token_ids(tokenizer, template),
            "pad_token_id": tokenizer.pad_token_id,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


def _prompt_tensor(model, tokenizer, template, query, history, system) -> torch.Tensor:
    ids = encode_prompt(tokenizer, template, query, history, system)
    return torch.tensor([ids], device=model.device)


@torch.no_grad()
def generate_reply(
    model, tokenizer, template: Template, query: str,
    history: Sequence[tuple[str, str]] = (), system: str | None = None,
    settings: GenerationSettings | None = None,
) -> str:
    """The model's whole reply to `query` after `history`, without the stop token."""
    settings = settings or GenerationSettings()
    input_ids = _prompt_tensor(model, tokenizer, template, query, history, system)
    output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            **settings.generate_kwargs(tokenizer, template))
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


def stream_reply(
    model, tokenizer, template: Template, query: str,
    history: Sequence[tuple[str, str]] = (), system: str | None = None,
    settings: GenerationSettings | None = None,
) -> Iterator[str]:
    """Yield the reply piece by piece as it is generated (generation runs in a thread)."""
    from transformers import TextIteratorStreamer

    settings = settings or GenerationSettings()
    input_ids = _prompt_tensor(model, tokenizer, template, query, history, system)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                  **settings.generate_kwargs(tokenizer, template))
    thread = threading.Thread(target=torch.no_grad()(model.generate), kwargs=kwargs, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
