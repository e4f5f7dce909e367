"""ORPO with LoRA: SFT and preference in one loss, straight from the pairs — no reward model, no
sampling and no reference model.

ORPO (Hong et al. 2024, https://arxiv.org/abs/2403.07691) adds to the ordinary NLL of the chosen
reply an odds-ratio term, -β·log σ(log odds(chosen) - log odds(rejected)) with
odds(y) = P(y|x) / (1 - P(y|x)) on the per-token mean log-probability: it pushes the chosen reply
up and the rejected one down without comparing to a frozen copy of the model, so nothing but the
policy is in memory. TRL keeps its ORPOTrainer in `trl.experimental.orpo`; this script trains a
LoRA adapter on the SFT model with it. Pairs are rendered with the SFT run's chat template and the
trainer's token ids are checked against `encode_pair`. At the end it measures, on the held-out
pairs (--eval_file), the margin log π(chosen) - log π(rejected) of the SFT model (adapter off) and
of the ORPO policy.

    # offline (what rlhf.sh runs)
    python RLHF/orpo.py --model_name_or_path weights/rlhf/sft \
        --train_file RLHF/data/preference_train.jsonl --eval_file RLHF/data/preference_eval.jsonl \
        --output_dir weights/rlhf/orpo --max_steps 60 --learning_rate 2e-3 --beta 0.5 --bf16 false

    # a real SFT model (ORPO also works from a base model that had no SFT: the NLL term is the SFT)
    python RLHF/orpo.py --model_name_or_path weights/my-sft-merged --train_file my_pairs.jsonl \
        --output_dir weights/my-orpo --per_device_train_batch_size 2 --gradient_accumulation_steps 8 \
        --learning_rate 8e-6 --beta 0.1 --bf16 true --dtype bfloat16 --max_length 1024

Pairs train in length-sorted batches of a token budget (chosen and rejected counted together; as
many batches as --per_device_train_batch_size pairs would make), exact under gradient accumulation:
--batching tokens|sorted|random and --max_tokens_per_batch N choose otherwise, as for SFT
(llm_tuning/rlhf/pair_batches.py). --resume_from_checkpoint true continues on the same batches.
--beta is ORPO's λ, the weight of the odds-ratio term (TRL's default 0.1). The SFT model loads in
--dtype (auto, as for SFT, by default; bfloat16 takes half the memory of float32). Every ORPOConfig
(TrainingArguments) flag works. Tested with trl 1.16, peft 0.21. Writes to --output_dir: the
adapter (safetensors), the tokenizer, llm_tuning.json (so chat.py --adapter works),
trainer_log.jsonl and eval_metrics.json.
"""

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from llm_tuning.cli import exits_on_user_error
from llm_tuning.rlhf.pair_batches import PairBatchingArguments
from llm_tuning.rlhf.pair_training import train_on_pairs
from llm_tuning.rlhf.pairs import PreferenceDataArguments
from llm_tuning.rlhf.stage import ModelArguments
from llm_tuning.training import parse_args


@exits_on_user_error
def main(args: ModelArguments, data_args: PreferenceDataArguments, batching_args: PairBatchingArguments,
         training_args: ORPOConfig) -> dict | None:
    # ORPOTrainer's rows hold the whole prompt + chosen sequence under chosen_input_ids.
    return train_on_pairs(ORPOTrainer, args, data_args, batching_args, training_args, "orpo",
                          trainer_ids=lambda row: row["chosen_input_ids"],
                          run_config={"beta": training_args.beta})


@exits_on_user_error
def cli(argv: list[str] | None = None) -> dict | None:
    return main(*parse_args(ModelArguments, PreferenceDataArguments, PairBatchingArguments, ORPOConfig,
                            argv=argv))


if __name__ == "__main__":
    cli()
