"""Small fine-tuning experiments in one process, through the same path as the two commands.

Scripts that compare several runs (projects/RulaiGPT, projects/ChatBaichuan-HC3, SDE/run_sde.py)
do, for each run:

    tokenize_records(...)   # what tokenize_dataset_rows.py does: tokenize_file + save_tokenized
    train_adapter(...)      # what `python <recipe>.py ...` does: the recipe's Family + finetune()
    load_adapted(...)       # base model + adapter, as chat.py loads them
    answer_all(...)         # greedy replies, batched, with the training prompt format
    answer_nll(...)         # per-token loss of given answers (how far a model moved)

Nothing here is specific to a project; a real checkpoint and a tiny stand-in go through the
same calls.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainingArguments

from .cli import UserError
from .data import RecordKeys, TokenizeConfig, save_tokenized, tokenize_file
from .finetune import Family, finetune
from .generation import GenerationSettings, generate_batch
from .metrics import continuation_log_probs
from .modeling import load_tokenizer, read_model_type
from .records import read_records
from .templates import Template, auto_template, encode_prompt, encode_turns, get_template, stop_token_ids
from .training import DataArguments, FinetuneArguments, ModelArguments, parse_args

REPO_ROOT = Path(__file__).resolve().parent.parent


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a jsonl file, validated with file:line errors (see records.read_records)."""
    return [record for _, record in read_records(path)]


def resolve_template(model: str, template: str = "auto", trust_remote_code: bool = False) -> str:
    if template == "auto":
        template = auto_template(load_tokenizer(model, trust_remote_code), read_model_type(model, trust_remote_code), model)
    get_template(template)  # an unknown name fails before any work
    return template


def tokenize_records(
    jsonl_file: str | Path, model: str, save_dir: str | Path, template: str = "auto",
    max_seq_length: int = 512, supervise_prompt: bool = False, trust_remote_code: bool = False,
) -> Path:
    """Tokenize a q/a jsonl file for `model` and save it as tokenize_dataset_rows.py does.

    `supervise_prompt` puts the prompt tokens in the loss too ("input modeling"): labels become
    a copy of input_ids. Recorded in metadata.json."""
    tokenizer = load_tokenizer(model, trust_remote_code)
    template = resolve_template(model, template, trust_remote_code)
    config = TokenizeConfig(tokenizer_path=model, template=template, max_seq_length=max_seq_length,
                            skip_overlength=False, last_turn_only=False, keys=RecordKeys("q", "a"))
    dataset, metadata = tokenize_file(jsonl_file, tokenizer, config)
    if supervise_prompt:
        dataset = dataset.map(lambda row: {"labels": list(row["input_ids"])}, desc="Supervising prompts")
    metadata["supervise_prompt"] = supervise_prompt
    return save_tokenized(dataset, metadata, save_dir)


def import_script(path: str | Path, what: str = "script"):
    """Import a top-level script (its `if __name__ == "__main__"` block does not run)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe_family(recipe: str | Path) -> Family:
    """The `Family` a recipe script declares (e.g. QWEN in qwen_lora_tuning.py), without running it."""
    module = import_script(recipe, "recipe; pass a <family>_lora_tuning.py script")
    families = [value for value in vars(module).values() if isinstance(value, Family)]
    if len(families) != 1:
        raise UserError(f"{recipe}: expected one Family in the recipe, found {len(families)}")
    return families[0]


def train_adapter(recipe: str | Path, dataset_dir: str | Path, output_dir: str | Path, argv: Sequence[str] = ()) -> Path:
    """Train a LoRA adapter exactly as `python <recipe> --tokenized_dataset D --output_dir O <argv>`."""
    family = load_recipe_family(recipe)
    args = parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments,
                      argv=["--tokenized_dataset", str(dataset_dir), "--output_dir", str(output_dir), *argv])
    finetune(family, *args)
    return Path(output_dir)


def merge_adapter(adapter: str | Path, output: str | Path, trust_remote_code: bool = False) -> Path:
    """Merge an adapter into its base and save it, exactly as `python merge_lora.py` does."""
    merge_lora = import_script(REPO_ROOT / "merge_lora.py")
    merge_lora.main(merge_lora.parse_args(["--adapter", str(adapter), "--output", str(output),
                                           "--trust_remote_code", str(trust_remote_code)]))
    return Path(output)


def load_adapted(base: str | None = None, adapter: str | Path | None = None, trust_remote_code: bool = False):
    """(model, tokenizer, template) in eval mode: a base model, or a base + adapter, loaded by
    chat.py's own `load_chat_model`."""
    chat = import_script(REPO_ROOT / "chat.py")
    argv = [*(["--base", str(base)] if base else []), *(["--adapter", str(adapter)] if adapter else []),
            "--trust_remote_code", str(trust_remote_code)]
    return chat.load_chat_model(chat.parse_args(argv))


def answer_all(
    model, tokenizer, template: Template, queries: Sequence[str], max_new_tokens: int = 128,
    batch_size: int = 16, desc: str = "Answering",
) -> list[str]:
    """Greedy replies to each query (no history), decoded in batches; the order is kept."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    stops = stop_token_ids(tokenizer, template)
    replies: list[str] = []
    for start in tqdm(range(0, len(queries), batch_size), desc=desc, leave=False):
        prompts = [encode_prompt(tokenizer, template, q) for q in queries[start:start + batch_size]]
        replies += generate_batch(model, tokenizer, prompts, [settings] * len(prompts), stops)
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
