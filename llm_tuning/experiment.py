"""Small fine-tuning experiments, through the same steps as the two commands a user runs.

Scripts that compare several runs (projects/RulaiGPT, projects/ChatBaichuan-HC3, SDE/run_sde.py)
do, for each run:

    tokenize_records(...)   # what tokenize_dataset_rows.py does: tokenize_file + save_tokenized
    train_adapter(...)      # runs `python <recipe>.py ...`, the recipe exactly as a user runs it
    merge_adapter(...)      # what merge_lora.py does (llm_tuning.merging)
    load_adapted(...)       # base model + adapter, as chat.py loads them (llm_tuning.inference)
    answer_all(...)         # greedy replies, batched, with the training prompt format
    answer_nll(...)         # per-token loss of given answers (how far a model moved)

Nothing here is specific to a project; a real checkpoint and a tiny stand-in go through the
same calls. The library never imports a script: a recipe's `Family` stays in its recipe, which
is run as its own process (`sys.executable`), so a project compares recipes exactly as a user
would run them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import UserError
from .data import RecordKeys, TokenizeConfig, save_tokenized, tokenize_file
from .generation import GenerationSettings, generate_in_batches
from .inference import load_for_inference
from .merging import merge_adapter as merge_into_base
from .metrics import continuation_log_probs
from .modeling import load_tokenizer
from .records import read_records
from .templates import Template, encode_prompt, encode_turns, resolve_template, stop_token_ids


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a jsonl file, validated with file:line errors (see records.read_records)."""
    return [record for _, record in read_records(path)]


def tokenize_records(
    jsonl_file: str | Path, model: str, save_dir: str | Path, template: str = "auto",
    max_seq_length: int = 512, supervise_prompt: bool = False, trust_remote_code: bool = False,
) -> Path:
    """Tokenize a q/a jsonl file for `model` and save it as tokenize_dataset_rows.py does.

    `supervise_prompt` puts the prompt tokens in the loss too ("input modeling"): labels become
    a copy of input_ids. Recorded in metadata.json."""
    tokenizer = load_tokenizer(model, trust_remote_code)
    template = resolve_template(template, tokenizer, model, trust_remote_code).name
    config = TokenizeConfig(tokenizer_path=model, template=template, max_seq_length=max_seq_length,
                            skip_overlength=False, last_turn_only=False, keys=RecordKeys("q", "a"))
    dataset, metadata = tokenize_file(jsonl_file, tokenizer, config)
    if supervise_prompt:
        dataset = dataset.map(lambda row: {"labels": list(row["input_ids"])}, desc="Supervising prompts")
    metadata["supervise_prompt"] = supervise_prompt
    return save_tokenized(dataset, metadata, save_dir)


def train_adapter(recipe: str | Path, dataset_dir: str | Path, output_dir: str | Path, argv: Sequence[str] = ()) -> Path:
    """Train a LoRA adapter by running `python <recipe> --tokenized_dataset D --output_dir O <argv>`."""
    recipe = Path(recipe)
    if not recipe.is_file():
        raise UserError(f"{recipe}: no such recipe; pass a <family>_lora_tuning.py script")
    command = [sys.executable, str(recipe), "--tokenized_dataset", str(dataset_dir), "--output_dir", str(output_dir),
               *map(str, argv)]
    returncode = subprocess.run(command).returncode
    if returncode != 0:
        raise UserError(f"{recipe.name} stopped with exit status {returncode} (its message is above)")
    return Path(output_dir)


def merge_adapter(adapter: str | Path, output: str | Path, trust_remote_code: bool | None = None) -> Path:
    """Merge an adapter into its base and save it, as `python merge_lora.py` does."""
    merge_into_base(adapter, output, trust_remote_code=trust_remote_code)
    return Path(output)


def load_adapted(base: str | None = None, adapter: str | Path | None = None, trust_remote_code: bool | None = None):
    """(model, tokenizer, template) in eval mode: a base model, or a base + adapter, loaded as chat.py loads them."""
    return load_for_inference(base, [adapter] if adapter else [], trust_remote_code=trust_remote_code)


def answer_all(
    model, tokenizer, template: Template, queries: Sequence[str], max_new_tokens: int = 128,
    batch_size: int = 16, desc: str = "Answering",
) -> list[str]:
    """Greedy replies to each query (no history), decoded in batches; the order is kept."""
    prompts = [encode_prompt(tokenizer, template, q) for q in queries]
    settings = [GenerationSettings(max_new_tokens=max_new_tokens)] * len(prompts)
    replies = generate_in_batches(model, tokenizer, prompts, settings, stop_token_ids(tokenizer, template),
                                  batch_size, desc=desc)
    return [reply.strip() for reply in replies]


def answer_nll(model, tokenizer, template: Template, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Mean per-token negative log-likelihood of each answer (with its stop token) after its prompt."""
    encoded = [encode_turns(tokenizer, template, [(query, answer)])[0] for query, answer in pairs]
    log_probs = continuation_log_probs(model, [p for p, _ in encoded], [a for _, a in encoded], tokenizer.pad_token_id)
    return [-total / count for total, count in log_probs]


def build_tiny_stand_in(out: str | Path, corpus_dir: str | Path, arch: str = "qwen2", hidden_size: int = 64,
                        num_layers: int = 2, vocab_size: int = 2000, seed: int = 0) -> Path:
    """A tiny random model whose tokenizer was trained on `corpus_dir` (json/jsonl): the offline
    stand-in for a real checkpoint when the data is not the shipped data/ sample."""
    from .testing import build_model, build_tokenizer

    out = Path(out)
    tokenizer = build_tokenizer(arch, vocab_size=vocab_size, corpus_dir=Path(corpus_dir))
    model = build_model(arch, tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
