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
        --learning_rate 5e-6 --beta 0.1 --loss_type sigmoid --bf16 true --dtype bfloat16 --max_length 1024

Pairs train in length-sorted batches of a token budget (chosen and rejected counted together; as
many batches as --per_device_train_batch_size pairs would make), exact under gradient accumulation:
--batching tokens|sorted|random and --max_tokens_per_batch N choose otherwise, as for SFT
(llm_tuning/rlhf/pair_batches.py). The aot, aot_unpaired and sft losses, which are no mean over
pairs, keep the trainer's own batches. --resume_from_checkpoint true continues on the same batches.
The SFT model loads in --dtype (auto, as for SFT, by default; bfloat16 takes half the memory of
float32, where --bf16 true alone only autocasts). Every DPOConfig (TrainingArguments) flag works.
Tested with trl 1.16, peft 0.21. Writes to --output_dir: the adapter (safetensors), the tokenizer,
llm_tuning.json (so chat.py --adapter works), trainer_log.jsonl and eval_metrics.json.
"""

from trl import DPOConfig, DPOTrainer

from llm_tuning.cli import exits_on_user_error
from llm_tuning.rlhf.pair_batches import PairBatchingArguments
from llm_tuning.rlhf.pair_training import train_on_pairs
from llm_tuning.rlhf.pairs import PreferenceDataArguments
from llm_tuning.rlhf.stage import ModelArguments
from llm_tuning.training import parse_args


@exits_on_user_error
def main(args: ModelArguments, data_args: PreferenceDataArguments, batching_args: PairBatchingArguments,
         training_args: DPOConfig) -> dict | None:
    # DPOTrainer with ref_model=None and a peft_config uses the SFT model with the adapter off as the reference.
    return train_on_pairs(DPOTrainer, args, data_args, batching_args, training_args, "dpo",
                          trainer_ids=lambda row: row["prompt_ids"] + row["chosen_ids"],
                          trainer_kwargs={"ref_model": None},
                          run_config={"loss_type": list(training_args.loss_type), "beta": training_args.beta})


@exits_on_user_error
def cli(argv: list[str] | None = None) -> dict | None:
    return main(*parse_args(ModelArguments, PreferenceDataArguments, PairBatchingArguments, DPOConfig,
                            argv=argv))


if __name__ == "__main__":
    cli()
