"""DPO with LoRA: learn the preference straight from the pairs, no reward model, no sampling.

TRL's DPOTrainer trains a LoRA adapter on the SFT model; the reference is the same model with the
adapter disabled, so only one copy of the weights is in memory. `--loss_type` passes through:
sigmoid (DPO), ipo, hinge, robust, … (any TRL 1.16 loss). Pairs are rendered with the SFT run's
chat template and the trainer's token ids are checked against `encode_pair`, so DPO trains on
exactly the prompt format chat.py uses. At the end the script measures, on the held-out pairs
(--eval_file), the margin log π(chosen) - log π(rejected) before (adapter off) and after training.

    # offline (what rlhf.sh runs)
    python RLHF/dpo.py --model_name_or_path weights/rlhf/sft \
        --train_file RLHF/data/preference_train.jsonl --eval_file RLHF/data/preference_eval.jsonl \
        --output_dir weights/rlhf/dpo --max_steps 60 --learning_rate 2e-3 --beta 0.1 --bf16 false

    # a real SFT model (Qwen2.5-7B-Instruct, Baichuan2-7B-Chat merged with its SFT adapter, ...)
    python RLHF/dpo.py --model_name_or_path weights/my-sft-merged --train_file my_pairs.jsonl \
        --output_dir weights/my-dpo --per_device_train_batch_size 2 --gradient_accumulation_steps 8 \
        --learning_rate 5e-6 --beta 0.1 --loss_type sigmoid --bf16 true --max_length 1024

Every DPOConfig (TrainingArguments) flag works. Tested with trl 1.16, peft 0.21.
Writes to --output_dir: the adapter (safetensors), the tokenizer, llm_tuning.json (so chat.py
--adapter works), trainer_log.jsonl and eval_metrics.json.
"""

from datasets import Dataset
from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from llm_tuning.cli import UserError, exits_on_user_error
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.ppo import preference_margin
from llm_tuning.preference import (
    PreferenceArguments, encode_pair, encode_pairs, load_preference_pairs, lora_config, parse_trainer_args,
    render_pair, resolve_template, save_eval_metrics,
)
from llm_tuning.training import TrainerLogCallback, require_output_dir, save_run_config



def check_same_ids(trainer_row: dict, expected, tokenizer) -> None:
    """DPOTrainer tokenizes the rendered text itself; it must give the ids the policy is used with."""
    got = trainer_row["prompt_ids"] + trainer_row["chosen_ids"]
    want = expected.prompt_ids + expected.chosen_ids
    if got != want:
        raise UserError(
            "DPOTrainer's token ids differ from the chat template's: "
            f"{tokenizer.decode(got)!r} vs {tokenizer.decode(want)!r}; check the tokenizer's special tokens"
        )


@exits_on_user_error
def main(args: PreferenceArguments, training_args: DPOConfig) -> dict | None:
    require_output_dir(training_args)
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(args.model_name_or_path, training_args.trust_remote_code)
    template = resolve_template(args.model_name_or_path, args.template, training_args.trust_remote_code)
    pairs = load_preference_pairs(args.train_file)
    dataset = Dataset.from_list([render_pair(tokenizer, template, pair) for pair in pairs])
    held_out = (encode_pairs(tokenizer, template, load_preference_pairs(args.eval_file), training_args.max_length)
                if args.eval_file else None)

    # The SFT model; DPOTrainer adds the LoRA adapter and uses the model without it as the reference.
    model = load_model(args.model_name_or_path, "float32", training_args.trust_remote_code)
    trainer = DPOTrainer(model=model, ref_model=None, args=training_args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(model, args, "CAUSAL_LM"),
                         callbacks=[TrainerLogCallback()])
    check_same_ids(trainer.train_dataset[0], encode_pair(tokenizer, template, pairs[0]), tokenizer)
    print(f"{len(dataset)} pairs; first prompt: {dataset[0]['prompt']!r}")

    before = None
    if held_out:
        with trainer.model.disable_adapter():
            before = preference_margin(trainer.model, held_out, tokenizer.pad_token_id)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if not trainer.is_world_process_zero():
        return None
    tokenizer.save_pretrained(training_args.output_dir)
    save_run_config(training_args.output_dir, base_model=args.model_name_or_path, template=template.name,
                    train_file=args.train_file, stage="dpo", loss_type=list(training_args.loss_type),
                    beta=training_args.beta)
    if held_out is None:
        return None
    trainer.model.eval()
    metrics = {"pairs": len(held_out), "margin_before": before,
               "margin_after": preference_margin(trainer.model, held_out, tokenizer.pad_token_id)}
    save_eval_metrics(training_args.output_dir, metrics)
    print(f"held-out log π(chosen) - log π(rejected): {metrics['margin_before']:.2f} (SFT) -> "
          f"{metrics['margin_after']:.2f} (DPO) on {len(held_out)} pairs")
    return metrics


@exits_on_user_error
def cli(argv: list[str] | None = None) -> dict | None:
    return main(*parse_trainer_args(PreferenceArguments, DPOConfig, argv=argv))


if __name__ == "__main__":
    cli()
