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

    # offline (what rlhf.sh runs): arithmetic the SFT model half knows
    python RLHF/grpo.py --model_name_or_path weights/rlhf/sft --train_file RLHF/data/grpo_math.jsonl \
        --output_dir weights/rlhf/grpo --reward_funcs exact_answer --bf16 false

    # a real model on a GPU (Qwen2.5-0.5B-Instruct or 7B after SFT): vLLM samples the groups
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
from transformers.trainer_utils import SaveStrategy
from trl import GRPOConfig, GRPOTrainer

from llm_tuning.cli import UserError, exits_on_user_error
from llm_tuning.rlhf.grpo import format_table, load_questions, measure_policy
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.rlhf.pair_training import lora_config, save_eval_metrics, train_and_save
from llm_tuning.rlhf.rewards import REWARD_NAMES, build_reward_functions
from llm_tuning.templates import resolve_template, stop_token_ids
from llm_tuning.checkpoints import require_output_dir
from llm_tuning.run_logs import run_log_callbacks
from llm_tuning.training import parse_args

TABLE_FILE = "eval_table.txt"


@dataclass
class GRPOScriptArguments:
    model_name_or_path: str = field(metadata={"help": "The SFT model (hub id or path): the start and the reference."})
    train_file: str = field(metadata={"help": "q/a records (.json/.jsonl); the answer is the reference."})
    eval_file: str | None = field(default=None, metadata={"help": "Questions to measure on (default: the training ones)."})
    reward_funcs: list[str] = field(default_factory=lambda: ["exact_answer"],
                                    metadata={"help": f"One or more of: {', '.join(REWARD_NAMES)}."})
    format_pattern: str | None = field(default=None, metadata={"help": "Regex of the format reward (re.search)."})
    reward_model: str | None = field(default=None, metadata={"help": "reward_model.py's output, for the reward_model reward."})
    eval_samples: int = field(default=8, metadata={"help": "k: sampled replies per question for pass@k and accuracy."})
    max_prompt_length: int = field(default=512, metadata={"help": "Longer prompts are dropped."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16 for the policy weights."})
    template: str = field(default="auto", metadata={"help": "Chat template; auto: the SFT run's, else from the model type."})
    lora_rank: int = field(default=8)
    lora_alpha: float = field(default=32.0)
    lora_dropout: float = field(default=0.0)
    lora_target: str = field(default="all-linear", metadata={"help": "Comma-separated module names, or all-linear."})


@dataclass
class GRPOArguments(GRPOConfig):
    """TRL's GRPOConfig with defaults that train the tiny offline model in a few minutes on 2 CPU
    cores; for a real model lower the learning rate and raise the lengths (see the docstring)."""

    learning_rate: float = field(default=5e-3, metadata={"help": "5e-3 for the tiny model; ~1e-5 for 0.5B-7B."})
    max_steps: int = field(default=30)
    num_generations: int | None = field(default=8, metadata={"help": "Group size: replies sampled per prompt."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Replies per step (prompts × group size)."})
    max_completion_length: int | None = field(default=16, metadata={"help": "Longest reply, in tokens."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the groups (and of pass@k)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient against the SFT model; 0: no reference."})
    epsilon: float = field(default=0.2, metadata={"help": "Clipping of the probability ratio."})
    loss_type: str = field(default="dapo", metadata={"help": "grpo, dapo or dr_grpo (or any TRL 1.16 loss)."})
    # Dividing by the group's std (TRL's "group") gives the one right reply of a group of eight an
    # advantage of 2.6 instead of 0.875, and blows small differences (a 0.2 format reward where every
    # answer is wrong) up to full size; at this learning rate the tiny policy drifted to longer replies
    # instead of learning the answers (measured, exact_answer alone, seed 0: greedy pass@1 0.46 -> 0.46
    # with "group", 0.46 -> 0.62 with "none"). Dr. GRPO also advises "none".
    scale_rewards: str = field(default="none", metadata={"help": "none (Dr. GRPO), group or batch: divide the "
                                                                 "advantages by the rewards' std."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory (true on a GPU)."})
    logging_steps: float = field(default=5)
    save_strategy: SaveStrategy | str = field(default="no")
    report_to: None | str | list[str] = field(default="tensorboard")


def check_reward_flags(args: GRPOScriptArguments, training_args: GRPOArguments) -> None:
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(args.reward_funcs):
        raise UserError(f"--reward_weights has {len(weights)} value(s) for {len(args.reward_funcs)} "
                        f"--reward_funcs ({' '.join(args.reward_funcs)}); give one weight per function")


@exits_on_user_error
def main(args: GRPOScriptArguments, training_args: GRPOArguments) -> dict | None:
    require_output_dir(training_args)
    check_reward_flags(args, training_args)

    # Tokenizer, template, rewards and questions: the SFT run's template, so the policy sees its prompts.
    tokenizer = load_tokenizer(args.model_name_or_path, training_args.trust_remote_code)
    template = resolve_template(args.template, tokenizer, args.model_name_or_path, training_args.trust_remote_code)
    stop_ids = stop_token_ids(tokenizer, template)
    rewards = build_reward_functions(args.reward_funcs, tokenizer, args.format_pattern, args.reward_model,
                                     training_args.trust_remote_code)
    weights = training_args.reward_weights or [1.0] * len(rewards)
    need_numbers = "exact_answer" in args.reward_funcs
    train = load_questions(args.train_file, tokenizer, template, need_numbers, args.max_prompt_length)
    measured = (load_questions(args.eval_file, tokenizer, template, need_numbers, args.max_prompt_length)
                if args.eval_file else train)
    dataset = Dataset.from_dict({"prompt": [q.prompt for q in train], "answer": [q.answer for q in train]})
    print(f"{len(train)} prompts; rewards {', '.join(f'{n}×{w:g}' for n, w in zip(args.reward_funcs, weights))}; "
          f"first prompt: {train[0].prompt!r}")

    # Model: the SFT model; the trainer adds the LoRA adapter (with it off, the model is the reference).
    model = load_model(args.model_name_or_path, args.dtype, training_args.trust_remote_code)
    model.generation_config.eos_token_id = stop_ids  # GRPOTrainer ends each reply at these
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=training_args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora_config(model, args, "CAUSAL_LM"),
                          callbacks=run_log_callbacks())

    def measure(kl_to_reference: bool):
        trainer.model.eval()
        return measure_policy(trainer.model, tokenizer, measured, stop_ids, rewards, weights, args.eval_samples,
                              training_args.temperature, training_args.max_completion_length,
                              kl_to_reference=kl_to_reference, seed=training_args.seed)

    with trainer.model.disable_adapter():
        before = measure(kl_to_reference=False)
    if not train_and_save(trainer, tokenizer, args, template, "grpo", reward_funcs=args.reward_funcs,
                          reward_weights=weights, loss_type=training_args.loss_type, beta=training_args.beta):
        return None
    after = measure(kl_to_reference=True)

    table = format_table({"SFT": before, "GRPO": after}, args.eval_samples, training_args.temperature)
    where = f"{len(measured)} {'held-out' if args.eval_file else 'training'} prompts"
    print(f"on {where}:\n{table}")
    (Path(training_args.output_dir) / TABLE_FILE).write_text(f"GRPO on {where}:\n{table}\n", encoding="utf-8")
    return save_eval_metrics(training_args.output_dir, {"prompts": len(measured), "before": before.as_dict(),
                                                        "after": after.as_dict(), "script": asdict(args)})


@exits_on_user_error
def cli(argv: list[str] | None = None) -> dict | None:
    return main(*parse_args(GRPOScriptArguments, GRPOArguments, argv=argv))


if __name__ == "__main__":
    cli()
