"""DPO and ORPO: a TRL trainer that learns the policy straight from text pairs (RLHF/dpo.py and
RLHF/orpo.py differ only in the trainer and the ids it keeps).
"""

from __future__ import annotations

from .pair_batches import PairBatchingArguments, pair_trainer, resolve_pair_batching
from .pairs import PreferenceDataArguments, encode_pair, encode_pairs, load_preference_pairs, render_pair
from .stage import ModelArguments, check_same_ids, lora_config, save_eval_metrics, train_and_save


def train_on_pairs(trainer_class, args: ModelArguments, data_args: PreferenceDataArguments,
                   batching_args: PairBatchingArguments, training_args, stage: str, trainer_ids,
                   trainer_kwargs: dict | None = None, run_config: dict | None = None) -> dict | None:
    """Train a LoRA adapter on the SFT model (loaded in --dtype) with a TRL trainer that learns from
    the text pairs (DPOTrainer, ORPOTrainer) on batches per `batching_args`, and measure the held-out
    margin log π(chosen) - log π(rejected) before (adapter off: the SFT model) and after.

    `trainer_ids(row)` gives the prompt + chosen ids of one row of the trainer's tokenized dataset;
    they are checked against `encode_pair`, so the stage trains on exactly the prompt format chat.py
    uses. Saves the adapter, the tokenizer, llm_tuning.json (stage + run_config) and, with an
    --eval_file, eval_metrics.json; returns the metrics (None without held-out pairs)."""
    from datasets import Dataset
    from transformers import set_seed

    from ..modeling import load_model, load_tokenizer
    from ..templates import resolve_template
    from ..checkpoints import require_output_dir
    from ..run_logs import run_log_callbacks
    from .margins import preference_margin

    require_output_dir(training_args)
    resolve_pair_batching(batching_args, training_args)  # a flag mistake stops the run before anything loads
    set_seed(training_args.seed)
    trust = training_args.trust_remote_code
    tokenizer = load_tokenizer(args.model_name_or_path, trust)
    template = resolve_template(args.template, tokenizer, args.model_name_or_path, trust)
    pairs = load_preference_pairs(data_args.train_file)
    dataset = Dataset.from_list([render_pair(tokenizer, template, pair) for pair in pairs])
    held_out = (encode_pairs(tokenizer, template, load_preference_pairs(data_args.eval_file), training_args.max_length)
                if data_args.eval_file else None)

    # The SFT model; the trainer adds the LoRA adapter (for DPO the model without it is the reference).
    model = load_model(args.model_name_or_path, args.dtype, trust)
    # Length-sorted batches of a token budget by default (pair_batches.py).
    trainer = pair_trainer(trainer_class, batching_args, model=model, args=training_args, train_dataset=dataset,
                           processing_class=tokenizer, peft_config=lora_config(model, args, "CAUSAL_LM"),
                           callbacks=run_log_callbacks(), **(trainer_kwargs or {}))
    check_same_ids(trainer_ids(trainer.train_dataset[0]), encode_pair(tokenizer, template, pairs[0]), tokenizer,
                   trainer_class.__name__)
    print(f"{len(dataset)} pairs; first prompt: {dataset[0]['prompt']!r}")

    before = None
    if held_out:
        with trainer.model.disable_adapter():
            before = preference_margin(trainer.model, held_out, tokenizer.pad_token_id)
    if not train_and_save(trainer, tokenizer, template, args, stage, train_file=data_args.train_file,
                          **(run_config or {})) or held_out is None:
        return None
    trainer.model.eval()
    metrics = {"pairs": len(held_out), "margin_before": before,
               "margin_after": preference_margin(trainer.model, held_out, tokenizer.pad_token_id)}
    save_eval_metrics(training_args.output_dir, metrics)
    print(f"held-out log π(chosen) - log π(rejected): {metrics['margin_before']:.2f} (SFT) -> "
          f"{metrics['margin_after']:.2f} ({stage.upper()}) on {len(held_out)} pairs")
    return metrics
