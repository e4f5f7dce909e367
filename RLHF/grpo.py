"""GRPO with LoRA: reinforcement learning from rewards a program checks, no value model.

For each prompt the policy samples a group of --num_generations replies; each reply's advantage is
its reward minus its group's mean (also divided by the group's std with --scale_rewards group, TRL's
default; none here), and a clipped policy-gradient step (--epsilon) raises the replies that beat
their group. A KL penalty against the SFT model (--beta; TRL's default 0 turns it off and loads no
reference) keeps the policy close. The reference is the SFT model itself: the LoRA adapter off.

It runs TRL 1.16's GRPOTrainer (trl.GRPOTrainer / trl.GRPOConfig; every GRPOConfig and
TrainingArguments flag works) with our reward functions (llm_tuning/rlhf/rewards.py), given by name and
combined with TRL's --reward_weights:
    exact_answer   1 when the reply's final number equals the reference answer's (Chinese and English)
    format         1 when the reply matches --format_pattern (default: an equation that ends `= <number>`)
    reward_model   the score of RLHF/reward_model.py's model on prompt + reply (--reward_model)
--loss_type picks TRL's normalisation of the token losses: grpo (per reply length), dapo (per token
of the batch; TRL's default), dr_grpo (by a constant: no length bias). Before and after training it
measures the policy on the training prompts (or --eval_file): greedy pass@1, sampled accuracy and
pass@k (--eval_samples), mean reward, exact KL to the SFT model, reply length.

    # offline (what rlhf.sh runs): arithmetic the SFT model half knows, the tiny model's settings
    python RLHF/grpo.py --model_name_or_path weights/rlhf/sft --train_file RLHF/data/grpo_math.jsonl \
        --output_dir weights/rlhf/grpo --reward_funcs exact_answer --max_steps 30 --learning_rate 5e-3 \
        --per_device_train_batch_size 64 --max_completion_length 16 --temperature 0.7 \
        --gradient_checkpointing false --logging_steps 5 --bf16 false

    # a real model on a GPU (Qwen2.5-0.5B-Instruct or 7B after SFT): the defaults are TRL's (3 epochs,
    # groups of 8, replies up to 512 tokens, gradient checkpointing) with --learning_rate 1e-5 for LoRA;
    # vLLM samples the groups
    python RLHF/grpo.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --train_file data/simple_math_4op.jsonl \
        --output_dir weights/qwen-grpo --reward_funcs exact_answer format --reward_weights 1.0 0.1 \
        --learning_rate 1e-5 --lora_rank 16 --num_generations 8 --per_device_train_batch_size 8 \
        --gradient_accumulation_steps 4 --max_completion_length 256 --beta 0.04 --bf16 true \
        --dtype bfloat16 --gradient_checkpointing true --use_vllm true --vllm_mode colocate --max_steps 500

Data: q/a records (`{"q": "计算 3 + 94 等于多少？", "a": "3 + 94 = 97"}`, as data/simple_math_4op.jsonl),
or alpaca / messages / ShareGPT records; the last answer is the reference. A record that breaks a
rule stops the run with file:line. Writes to --output_dir: the adapter (safetensors), the tokenizer,
llm_tuning.json (so chat.py --adapter works), trainer_log.jsonl (every logged step: reward and each
rewards/<name>/mean, accuracy, kl when --beta > 0, completions/mean_length, clip_ratio/*),
tensorboard logs under runs/, eval_metrics.json and eval_table.txt. Tested with trl 1.16, peft 0.21.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from llm_tuning.cli import UserError, exits_on_user_error
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.rlhf.grpo import format_table, load_questions, measure_policy
from llm_tuning.rlhf.rewards import REWARD_NAMES, build_reward_functions
from llm_tuning.rlhf.stage import ModelArguments, lora_config, save_eval_metrics, train_and_save
from llm_tuning.templates import resolve_template, stop_token_ids
from llm_tuning.checkpoints import require_output_dir
from llm_tuning.run_logs import run_log_callbacks
from llm_tuning.training import parse_args

TABLE_FILE = "eval_table.txt"


@dataclass
class GRPOScriptArguments:
    """The questions GRPO trains on, its rewards and how the policy is measured."""

    train_file: str = field(metadata={"help": "q/a records (.json/.jsonl); the answer is the reference."})
    eval_file: str | None = field(default=None, metadata={"help": "Questions to measure on (default: the training ones)."})
    reward_funcs: list[str] = field(default_factory=lambda: ["exact_answer"],
                                    metadata={"help": f"One or more of: {', '.join(REWARD_NAMES)}."})
    format_pattern: str | None = field(default=None, metadata={"help": "Regex of the format reward (re.search)."})
    reward_model: str | None = field(default=None, metadata={"help": "reward_model.py's output, for the reward_model reward."})
    eval_samples: int = field(default=8, metadata={"help": "k: sampled replies per question for pass@k and accuracy."})
    max_prompt_length: int = field(default=512, metadata={"help": "Longer prompts are dropped."})


@dataclass
class GRPOArguments(GRPOConfig):
    """TRL's GRPOConfig (its defaults are for a real model) with our choices: a learning rate for
    LoRA, no division by the group's std, tensorboard logs. rlhf.sh trains the tiny offline model
    with --learning_rate 5e-3 --max_steps 30 --per_device_train_batch_size 64
    --max_completion_length 16 --temperature 0.7 --gradient_checkpointing false."""

    learning_rate: float = field(default=1e-5, metadata={"help": "~1e-5 for LoRA on 0.5B-7B models (TRL's 1e-6 "
                                                                 "is for full fine-tuning)."})
    # Dividing by the group's std (TRL's "group") gives the one right reply of a group of eight an
    # advantage of 2.6 instead of 0.875, and blows small differences (a 0.2 format reward where every
    # answer is wrong) up to full size; on the tiny model the policy drifted to longer replies
    # instead of learning the answers (measured, exact_answer alone, seed 0: greedy pass@1 0.46 -> 0.46
    # with "group", 0.46 -> 0.62 with "none"). Dr. GRPO also advises "none".
    scale_rewards: str = field(default="none", metadata={"help": "none (Dr. GRPO), group or batch: divide the "
                                                                 "advantages by the rewards' std."})
    report_to: None | str | list[str] = field(default="tensorboard")


def check_reward_flags(args: GRPOScriptArguments, training_args: GRPOArguments) -> None:
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(args.reward_funcs):
        raise UserError(f"--reward_weights has {len(weights)} value(s) for {len(args.reward_funcs)} "
                        f"--reward_funcs ({' '.join(args.reward_funcs)}); give one weight per function")


@exits_on_user_error
def main(args: ModelArguments, data_args: GRPOScriptArguments, training_args: GRPOArguments) -> dict | None:
    require_output_dir(training_args)
    check_reward_flags(data_args, training_args)
    trust = training_args.trust_remote_code

    # Tokenizer, template, rewards and questions: the SFT run's template, so the policy sees its prompts.
    tokenizer = load_tokenizer(args.model_name_or_path, trust)
    template = resolve_template(args.template, tokenizer, args.model_name_or_path, trust)
    stop_ids = stop_token_ids(tokenizer, template)
    rewards = build_reward_functions(data_args.reward_funcs, tokenizer, data_args.format_pattern,
                                     data_args.reward_model, trust, args.dtype)
    weights = training_args.reward_weights or [1.0] * len(rewards)
    need_numbers = "exact_answer" in data_args.reward_funcs
    train = load_questions(data_args.train_file, tokenizer, template, need_numbers, data_args.max_prompt_length)
    measured = (load_questions(data_args.eval_file, tokenizer, template, need_numbers, data_args.max_prompt_length)
                if data_args.eval_file else train)
    dataset = Dataset.from_dict({"prompt": [q.prompt for q in train], "answer": [q.answer for q in train]})
    named = ", ".join(f"{n}×{w:g}" for n, w in zip(data_args.reward_funcs, weights))
    print(f"{len(train)} prompts; rewards {named}; first prompt: {train[0].prompt!r}")

    # Model: the SFT model in --dtype; the trainer adds the LoRA adapter (with it off, the model is the reference).
    model = load_model(args.model_name_or_path, args.dtype, trust)
    model.generation_config.eos_token_id = stop_ids  # GRPOTrainer ends each reply at these
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=training_args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora_config(model, args, "CAUSAL_LM"),
                          callbacks=run_log_callbacks())

    def measure(kl_to_reference: bool):
        trainer.model.eval()
        return measure_policy(trainer.model, tokenizer, measured, stop_ids, rewards, weights, data_args.eval_samples,
                              training_args.temperature, training_args.max_completion_length,
                              kl_to_reference=kl_to_reference, seed=training_args.seed)

    with trainer.model.disable_adapter():
        before = measure(kl_to_reference=False)
    if not train_and_save(trainer, tokenizer, template, args, "grpo", train_file=data_args.train_file,
                          reward_funcs=data_args.reward_funcs, reward_weights=weights,
                          loss_type=training_args.loss_type, beta=training_args.beta):
        return None
    after = measure(kl_to_reference=True)

    table = format_table({"SFT": before, "GRPO": after}, data_args.eval_samples, training_args.temperature)
    where = f"{len(measured)} {'held-out' if data_args.eval_file else 'training'} prompts"
    print(f"on {where}:\n{table}")
    (Path(training_args.output_dir) / TABLE_FILE).write_text(f"GRPO on {where}:\n{table}\n", encoding="utf-8")
    return save_eval_metrics(training_args.output_dir, {"prompts": len(measured), "before": before.as_dict(),
                                                        "after": after.as_dict(), "script": asdict(data_args),
                                                        "model": asdict(args)})


@exits_on_user_error
def cli(argv: list[str] | None = None) -> dict | None:
    return main(*parse_args(ModelArguments, GRPOScriptArguments, GRPOArguments, argv=argv))


if __name__ == "__main__":
    cli()
