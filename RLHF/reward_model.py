"""Stage 2 of RLHF: a LoRA reward model that scores (prompt, reply) by the preference in the data.

The SFT model gets a scalar head (sequence classification, num_labels=1) and a LoRA adapter; TRL's
RewardTrainer minimises -log σ(r_chosen - r_rejected) over the pairs. Pairs are rendered with the
chat template of the SFT run, token for token as the policy sees them. At the end the script
reports pairwise accuracy on the held-out pairs (--eval_file) and writes it to eval_metrics.json.

    # offline (what rlhf.sh runs), a tiny SFT model on the style data
    python RLHF/reward_model.py --model_name_or_path weights/rlhf/sft \
        --train_file RLHF/data/preference_train.jsonl --eval_file RLHF/data/preference_eval.jsonl \
        --output_dir weights/rlhf/reward_model --max_steps 100 --learning_rate 3e-3 --bf16 false

    # a real SFT model (e.g. Qwen2.5-7B-Instruct or Baichuan2-7B-Chat after SFT and merge_lora.py)
    python RLHF/reward_model.py --model_name_or_path weights/my-sft-merged \
        --train_file my_pairs.jsonl --eval_file my_pairs_eval.jsonl --output_dir weights/my-rm \
        --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --num_train_epochs 1 \
        --learning_rate 2e-5 --bf16 true --dtype bfloat16 --max_length 1024

Pairs train in length-sorted batches of a token budget (chosen and rejected counted together; as
many batches as --per_device_train_batch_size pairs would make), exact under gradient accumulation:
--batching tokens|sorted|random and --max_tokens_per_batch N choose otherwise, as for SFT
(llm_tuning/rlhf/pair_batches.py). --resume_from_checkpoint true continues on the same batches.
Data: prompt/chosen/rejected, prompt/selected/rejected or instruction/input/output with
output = [chosen, rejected] (optional history and system keys); a bad record stops the run with
file:line. The SFT model loads in --dtype (auto, as for SFT, by default; bfloat16 takes half the
memory of float32). The held-out figure is the pairwise accuracy `eval.py reward` gives on the same
file (`score_pairs` in llm_tuning/rlhf/reward_model.py). Every RewardConfig (TrainingArguments) flag
works. Tested with trl 1.16, peft 0.21. Writes to --output_dir: the adapter with its score head
(safetensors), the tokenizer, llm_tuning.json (base model, template, trust_remote_code) and
eval_metrics.json. ppo.py loads it with --reward_model.
"""

from datasets import Dataset
from transformers import set_seed
from trl import RewardConfig, RewardTrainer

from llm_tuning.cli import exits_on_user_error
from llm_tuning.modeling import load_tokenizer
from llm_tuning.rlhf.pair_batches import PairBatchingArguments, pair_trainer, resolve_pair_batching
from llm_tuning.rlhf.pairs import PreferenceDataArguments, encode_pairs, load_preference_pairs
from llm_tuning.rlhf.reward_model import load_scoring_model, score_pairs
from llm_tuning.rlhf.stage import ModelArguments, lora_config, save_eval_metrics, train_and_save
from llm_tuning.templates import resolve_template
from llm_tuning.checkpoints import require_output_dir
from llm_tuning.run_logs import run_log_callbacks
from llm_tuning.training import parse_args


@exits_on_user_error
def main(args: ModelArguments, data_args: PreferenceDataArguments, batching_args: PairBatchingArguments,
         training_args: RewardConfig) -> dict | None:
    require_output_dir(training_args)
    resolve_pair_batching(batching_args, training_args)  # a flag mistake stops the run before anything loads
    set_seed(training_args.seed)
    trust = training_args.trust_remote_code

    # Tokenizer and template: those of the SFT run, so the reward model reads what the policy writes.
    tokenizer = load_tokenizer(args.model_name_or_path, trust, padding_side="right")
    template = resolve_template(args.template, tokenizer, args.model_name_or_path, trust)
    train = encode_pairs(tokenizer, template, load_preference_pairs(data_args.train_file), training_args.max_length)
    held_out = load_preference_pairs(data_args.eval_file) if data_args.eval_file else None
    dataset = Dataset.from_dict({"chosen_ids": [e.prompt_ids + e.chosen_ids for e in train],
                                 "rejected_ids": [e.prompt_ids + e.rejected_ids for e in train]})
    print(f"{len(train)} training pairs; first chosen: {tokenizer.decode(dataset[0]['chosen_ids'])!r}")

    # Model: the SFT model in --dtype with a fresh scalar head; LoRA on its linear layers, the head trained fully.
    model = load_scoring_model(args.model_name_or_path, args.dtype, trust)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token

    training_args.max_length = None  # already filtered by encode_pairs
    # Pairs in length-sorted batches of a token budget unless --batching says otherwise.
    trainer = pair_trainer(RewardTrainer, batching_args, model=model, args=training_args, train_dataset=dataset,
                           processing_class=tokenizer, peft_config=lora_config(model, args, "SEQ_CLS"),
                           callbacks=run_log_callbacks())
    if not train_and_save(trainer, tokenizer, template, args, "reward_model", train_file=data_args.train_file) \
            or held_out is None:
        return None
    trainer.model.eval()
    metrics = save_eval_metrics(training_args.output_dir,
                                score_pairs(trainer.model, tokenizer, template, held_out).summary())
    print(f"held-out pairwise accuracy: {metrics['accuracy']:.3f} on {metrics['pairs']} pairs "
          f"(mean margin {metrics['mean_margin']:.2f})")
    return metrics


@exits_on_user_error
def cli(argv: list[str] | None = None) -> dict | None:
    return main(*parse_args(ModelArguments, PreferenceDataArguments, PairBatchingArguments, RewardConfig,
                            argv=argv))


if __name__ == "__main__":
    cli()
