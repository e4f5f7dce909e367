"""Vocabulary extension: add a new tokenizer's pieces to a base tokenizer, initialise their embeddings.

Old token ids never change: new pieces get the ids after the last existing one, so a base model's
embedding rows keep meaning the same tokens. Two kinds of base tokenizer are handled:

- sentencepiece (LLaMA-style `tokenizer.model`): new pieces are appended to the model proto with
  score 0, the way Chinese-LLaMA merged its Chinese pieces;
- Hugging Face fast BPE (`tokenizer.json`; Qwen, LLaMA-3, GLM-4 …): each new piece becomes a vocab
  entry plus the merges that build it from the tokens the old model splits it into, appended after
  every old merge so that old merges still fire first.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_EXTENSION_FILE = "vocab_extension.json"


def embedding_module_names(model) -> list[str]:
    """Short names of the input embedding and output projection (`embed_tokens`, `lm_head`, …):
    what LoRA's `modules_to_save` must list for new tokens to be learned and saved."""
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in wanted})


def read_vocab_extension(model_path: str | Path) -> dict | None:
    """What extend_embeddings.py recorded in a model folder (old and new vocabulary sizes), if any."""
    path = Path(model_path) / VOCAB_EXTENSION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
