"""Stage 3 of RLHF: PPO with LoRA against the reward model from reward_model.py.

One base model (the SFT model) plays three parts: the policy (LoRA adapter on), the reference the
KL penalty measures against (adapter off) and, with a value head on its last hidden state, the
critic. TRL removed its PPOTrainer, so the loop is written out here over `llm_tuning/rlhf/ppo.py`:

    for each iteration:
        rollout   sample replies to a batch of prompts (stop tokens masked at the first position:
                  an empty reply is PPO's favourite escape from a low score)
        score     reward model on prompt + reply; a reply cut off before its stop token gets
                  --missing_eos_penalty subtracted
        shape     per-token reward -kl_coef * (log π - log π_ref), the score added on the last token
        GAE       advantages (whitened over the batch) and returns from the value head's values
        update    --ppo_epochs passes over mini-batches: clipped policy loss + vf_coef × clipped
                  value loss, gradient clipping
    logs reward, KL, entropy, reply length, clip fraction, value loss and peak memory to tensorboard
    and ppo_log.jsonl

Sampling uses an explicit generation config (softmax at --temperature, nothing else): a model's own
generation_config.json (a repetition penalty, top-k/top-p) would sample tokens from another
distribution than the one the log-probs and the KL are computed on. The rollout is scored
--mini_batch_size rows at a time and keeps only per-token log-probs, so memory grows with the
mini-batch, not with --batch_size.

    # offline (what rlhf.sh runs): the tiny model's settings
    python RLHF/ppo.py --model_name_or_path weights/rlhf/sft --reward_model weights/rlhf/reward_model \
        --train_file RLHF/data/preference_train.jsonl --eval_file RLHF/data/preference_eval.jsonl \
        --output_dir weights/rlhf/ppo --num_iterations 20 --learning_rate 1e-3 --kl_coef 0.2 \
        --batch_size 32 --mini_batch_size 16 --max_new_tokens 24

    # a real SFT model and reward model: the defaults are for it (--learning_rate 1e-5, --kl_coef 0.05,
    # --batch_size 64, --mini_batch_size 8, --max_new_tokens 256); bf16 on a GPU holds the policy,
    # reference and critic (one base) and the reward model in half the memory of float32
    python RLHF/ppo.py --model_name_or_path weights/my-sft-merged --reward_model weights/my-rm \
        --train_file my_prompts.jsonl --output_dir weights/my-ppo --dtype bfloat16

Prompts come from --train_file (any preference format; only the prompts are used). Before and after
training the greedy replies to the --eval_file prompts are scored: mean reward, exact KL to the
reference, empty replies. The SFT model and the reward model load in --dtype (auto, as for SFT, by
default); --trust_remote_code true runs their own code. Writes to --output_dir: the adapter
(safetensors), value_head.safetensors, the tokenizer, llm_tuning.json, ppo_log.jsonl,
eval_metrics.json and tensorboard logs under runs/.
"""

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import set_seed

from llm_tuning.atomic import atomic_files
from llm_tuning.cli import UserError, exits_on_user_error
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.rlhf.pairs import PreferenceDataArguments, encode_pair, load_preference_pairs
from llm_tuning.rlhf.ppo import (
    PolicyWithValue,
    gae,
    kl_shaped_rewards,
    masked_mean,
    ppo_losses,
    score_rollout,
    token_logprobs,
    whiten,
)
from llm_tuning.rlhf.reward_model import load_reward_model, reward_scores
from llm_tuning.rlhf.rollouts import evaluate_policy, generate_replies, pack
from llm_tuning.rlhf.stage import ModelArguments, lora_config, save_eval_metrics, save_stage_files
from llm_tuning.run_logs import peak_memory_mib
from llm_tuning.templates import resolve_template, stop_token_ids
from llm_tuning.training import parse_args

LOG_FILE = "ppo_log.jsonl"


@dataclass
class PPOArguments:
    """PPO's own trainer settings (TRL has no PPOTrainer left), with defaults for a real model; the
    tiny offline model of rlhf.sh trains with --learning_rate 1e-3 --kl_coef 0.2 --batch_size 32
    --mini_batch_size 16 --max_new_tokens 24."""

    output_dir: str = field(metadata={"help": "Where the adapter, value head and logs go."})
    reward_model: str = field(default=None,
                              metadata={"help": "reward_model.py's output (an adapter) or a merged reward model."})
    num_iterations: int = field(default=30, metadata={"help": "Rollout + update rounds."})
    batch_size: int = field(default=64, metadata={"help": "Prompts (and replies) per rollout."})
    mini_batch_size: int = field(default=8,
                                 metadata={"help": "Replies per gradient step; batch_size must be a multiple."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    learning_rate: float = field(default=1e-5, metadata={"help": "~1e-5 for LoRA on 0.5B-7B models."})
    kl_coef: float = field(default=0.05, metadata={"help": "β of the per-token KL penalty against the reference."})
    gamma: float = field(default=1.0)
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip ε."})
    cliprange_value: float = field(default=0.2)
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    max_grad_norm: float = field(default=1.0)
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature (logprobs use the same)."})
    max_new_tokens: int = field(default=256)
    missing_eos_penalty: float = field(
        default=2.0, metadata={"help": "Subtracted from the score of a reply cut off before its stop token."})
    max_prompt_length: int = field(default=512, metadata={"help": "Longer prompts are dropped."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the models' own code (true/false)."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard or none."})
    seed: int = field(default=0)


def ppo_iteration(policy: PolicyWithValue, optimizer, reward_model, prompts, stop_ids, pad_id,
                  args: PPOArguments) -> dict:
    """One rollout and its PPO updates; returns the iteration's statistics."""
    # Rollout: sample, score, and record what the update compares against.
    policy.eval()
    device = policy.value_head.weight.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    replies = generate_replies(policy.model, prompts, stop_ids, pad_id, args.max_new_tokens, args.temperature)
    batch = pack(prompts, replies, pad_id).to(device)
    # Scored a mini-batch at a time, keeping per-token log-probs only (no full-vocabulary logits).
    rollout = score_rollout(policy, batch, args.temperature, stop_ids, args.mini_batch_size)
    old_logp, old_values = rollout.logp, rollout.values
    with torch.no_grad():
        scores = reward_scores(reward_model, [list(p) + r for p, r in zip(prompts, replies)], pad_id).to(device)
        finished = torch.tensor([r[-1] in stop_ids for r in replies], device=device)
        scores = scores - args.missing_eos_penalty * (~finished).float()
        rewards, kl = kl_shaped_rewards(scores, old_logp, rollout.ref_logp, batch.reply_mask, args.kl_coef)
        advantages, returns = gae(rewards, old_values, batch.reply_mask, args.gamma, args.lam)
        advantages = whiten(advantages, batch.reply_mask)

    # Update: several epochs of clipped PPO over shuffled mini-batches of this rollout.
    policy.train()
    parts = []
    for _ in range(args.ppo_epochs):
        for index in torch.randperm(len(prompts)).split(args.mini_batch_size):
            mini = batch.rows(index)
            logits, values = policy(mini)
            logp, _ = token_logprobs(logits, mini.reply_ids, args.temperature, stop_ids)
            part = ppo_losses(logp, old_logp[index], advantages[index], values, old_values[index],
                              returns[index], mini.reply_mask, args.cliprange, args.cliprange_value, args.vf_coef)
            optimizer.zero_grad()
            part.loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], args.max_grad_norm)
            optimizer.step()
            parts.append(part)
    mask = batch.reply_mask
    return {
        "reward": scores.mean().item(),
        "kl": kl.sum(-1).mean().item(),
        "entropy": masked_mean(rollout.entropy, mask).item(),
        "reply_length": mask.sum(-1).mean().item(),
        "unfinished": (~finished).float().mean().item(),
        "clip_fraction": sum(p.clip_fraction for p in parts) / len(parts),
        "policy_loss": sum(p.policy_loss for p in parts) / len(parts),
        "value_loss": sum(p.value_loss for p in parts) / len(parts),
        "approx_kl": sum(p.approx_kl for p in parts) / len(parts),
        "peak_memory_mb": peak_memory_mib(device),  # GPU: this iteration's peak allocation; CPU: peak RSS so far
    }


def report_dict(report) -> dict:
    return {"mean_reward": report.mean_reward, "mean_kl": report.mean_kl,
            "empty_replies": report.empty_replies, "mean_length": report.mean_length}


def check_arguments(ppo_args: PPOArguments) -> None:
    if not ppo_args.reward_model:
        raise UserError("pass --reward_model, the output directory of reward_model.py")
    if ppo_args.batch_size % ppo_args.mini_batch_size:
        raise UserError(f"--batch_size {ppo_args.batch_size} must be a multiple of "
                        f"--mini_batch_size {ppo_args.mini_batch_size}")


def load_prompts(path: str, tokenizer, template, max_prompt_length: int) -> list[list[int]]:
    """The distinct prompt ids of a preference file (a prompt with several pairs counts once)."""
    ids = [encode_pair(tokenizer, template, pair).prompt_ids for pair in load_preference_pairs(path)]
    kept = [list(p) for p in dict.fromkeys(map(tuple, ids)) if len(p) <= max_prompt_length]
    if not kept:
        raise UserError(f"{path}: every prompt is longer than --max_prompt_length {max_prompt_length}")
    return kept


def train(policy: PolicyWithValue, reward_model, train_prompts: list[list[int]], stop_ids: list[int], pad_id: int,
          ppo_args: PPOArguments, out_dir: Path) -> None:
    """--num_iterations rounds of rollout + update; each round's statistics go to ppo_log.jsonl (and tensorboard)."""
    rng = random.Random(ppo_args.seed)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=ppo_args.learning_rate)
    writer = None
    if ppo_args.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "runs"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / LOG_FILE
    log_path.unlink(missing_ok=True)
    progress = tqdm(range(1, ppo_args.num_iterations + 1), desc="PPO")
    for iteration in progress:
        prompts = rng.sample(train_prompts, min(ppo_args.batch_size, len(train_prompts)))
        stats = ppo_iteration(policy, optimizer, reward_model, prompts, stop_ids, pad_id, ppo_args)
        progress.set_postfix(reward=f"{stats['reward']:.2f}", kl=f"{stats['kl']:.2f}")
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": iteration, **stats}) + "\n")
        if writer is not None:
            for key, value in stats.items():
                writer.add_scalar(f"ppo/{key}", value, iteration)
    if writer is not None:
        writer.close()


def save_policy(policy: PolicyWithValue, tokenizer, template, args: ModelArguments, data_args: PreferenceDataArguments,
                ppo_args: PPOArguments, out_dir: Path) -> None:
    """The adapter, the value head (to continue training), the tokenizer and what chat.py needs,
    written aside and renamed in: a full disk or a kill leaves the previous policy as it was."""
    with atomic_files(out_dir) as saving_dir:
        policy.model.save_pretrained(saving_dir)
        save_file({k: v.contiguous() for k, v in policy.value_head.state_dict().items()},
                  saving_dir / "value_head.safetensors")
        save_stage_files(saving_dir, tokenizer, template, args, "ppo", ppo_args.trust_remote_code,
                         train_file=data_args.train_file, reward_model=ppo_args.reward_model, ppo=asdict(ppo_args))


@exits_on_user_error
def main(args: ModelArguments, data_args: PreferenceDataArguments, ppo_args: PPOArguments) -> dict:
    check_arguments(ppo_args)
    set_seed(ppo_args.seed)
    out_dir = Path(ppo_args.output_dir)

    # Tokenizer, template and prompts: the SFT run's template, so the policy sees its training prompts.
    trust = ppo_args.trust_remote_code
    tokenizer = load_tokenizer(args.model_name_or_path, trust)
    template = resolve_template(args.template, tokenizer, args.model_name_or_path, trust)
    stop_ids = stop_token_ids(tokenizer, template)
    train_prompts = load_prompts(data_args.train_file, tokenizer, template, ppo_args.max_prompt_length)
    eval_prompts = (load_prompts(data_args.eval_file, tokenizer, template, ppo_args.max_prompt_length)
                    if data_args.eval_file else train_prompts[:ppo_args.batch_size])

    # Models, both in --dtype: the reward model, and one base that is policy (LoRA), reference (LoRA off) and critic.
    reward_model = load_reward_model(ppo_args.reward_model, args.dtype, trust)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    base = load_model(args.model_name_or_path, args.dtype, trust)
    policy = PolicyWithValue(get_peft_model(base, lora_config(base, args, "CAUSAL_LM")))
    policy.model.print_trainable_parameters()

    # Train, measuring the policy on the held-out prompts before and after.
    before = evaluate_policy(policy.model, reward_model, tokenizer, eval_prompts, stop_ids, ppo_args.max_new_tokens)
    print(f"before PPO: mean reward {before.mean_reward:.3f}, empty replies {before.empty_replies}")
    train(policy, reward_model, train_prompts, stop_ids, tokenizer.pad_token_id, ppo_args, out_dir)
    policy.eval()
    after = evaluate_policy(policy.model, reward_model, tokenizer, eval_prompts, stop_ids, ppo_args.max_new_tokens)
    print(f"after PPO: mean reward {after.mean_reward:.3f} (was {before.mean_reward:.3f}), "
          f"KL to the SFT policy {after.mean_kl:.3f} nats per reply, empty replies {after.empty_replies}")
    for prompt, reply in list(zip(eval_prompts, after.replies))[:4]:
        print(f"  {tokenizer.decode(prompt)!r} -> {reply!r}")

    save_policy(policy, tokenizer, template, args, data_args, ppo_args, out_dir)
    return save_eval_metrics(out_dir, {"before": report_dict(before), "after": report_dict(after)})


@exits_on_user_error
def cli(argv: list[str] | None = None) -> dict:
    return main(*parse_args(ModelArguments, PreferenceDataArguments, PPOArguments, argv=argv))


if __name__ == "__main__":
    cli()
