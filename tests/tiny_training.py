"""A few steps of the real fine-tuning flow on a tiny model: the pairs it memorises, tokenized as
tokenize_dataset_rows.py does, and `train_tiny`, the flow a recipe runs, in process."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainingArguments

from llm_tuning.data import TokenizeConfig, save_tokenized, tokenize_file
from llm_tuning.finetune import build_trainer, save
from llm_tuning.modeling import load_tokenizer
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# Eight short q/a pairs, Chinese and English: a tiny model memorises them in ~150 LoRA steps, so a
# recipe that trains correctly (template, masking, stop token) answers every one exactly.
MEMORISE_PAIRS = (
    ("你好，你是谁？", "我是小助手。"),
    ("What is 3 + 4?", "3 + 4 = 7"),
    ("中国的首都是哪里？", "北京。"),
    ("Say hello.", "Hello!"),
    ("计算 12 - 5 等于多少？", "12 - 5 = 7"),
    ("What color is the sky?", "Blue."),
    ("一年有几个月？", "十二个月。"),
    ("Name a fruit.", "Apple."),
)


def save_tokenized_pairs(model_dir: str | Path, template: str, out_dir: str | Path,
                         pairs=MEMORISE_PAIRS, max_seq_length: int = 128) -> Path:
    """Tokenize q/a pairs for `model_dir` with `template` into `out_dir`, as tokenize_dataset_rows.py does."""
    out_dir = Path(out_dir)
    source = out_dir.parent / f"{out_dir.name}.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(json.dumps({"q": q, "a": a}, ensure_ascii=False) + "\n" for q, a in pairs),
                      encoding="utf-8")
    config = TokenizeConfig(tokenizer_path=str(model_dir), template=template, max_seq_length=max_seq_length,
                            skip_overlength=False, last_turn_only=False)
    dataset, metadata = tokenize_file(source, load_tokenizer(str(model_dir)), config)
    return save_tokenized(dataset, metadata, out_dir)


def train_tiny(family, dataset_dir: str | Path, output_dir: str | Path, *flags: str, steps: int = 20,
               learning_rate: float = 5e-3):
    """Run the shared fine-tuning flow for `steps` steps on CPU and save; returns the `Run`.

    `flags` are recipe command-line flags (`--finetuning_type`, `--lora_target`, ...)."""
    args = parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments, argv=[
        "--tokenized_dataset", str(dataset_dir), "--output_dir", str(output_dir), "--lora_dropout", "0",
        "--learning_rate", str(learning_rate), "--max_steps", str(steps), "--per_device_train_batch_size", "8",
        "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true",
        "--disable_tqdm", "true", *flags])
    run = build_trainer(family, *args)
    run.trainer.train()
    save(run, family, args[0], args[2])
    return run
