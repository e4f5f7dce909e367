"""Measure the SFT, PPO and DPO policies side by side on held-out prompts and print the table.

    python RLHF/evaluate.py --sft weights/rlhf/sft --reward_model weights/rlhf/reward_model \
        --eval_file RLHF/data/preference_eval.jsonl --policy PPO=weights/rlhf/ppo --policy DPO=weights/rlhf/dpo \
        --max_new_tokens 24

For each policy (the SFT model itself, then each LoRA adapter on it), on the held-out prompts:
- reward     mean reward-model score of its greedy replies (EOS masked at the first position)
- KL         exact KL(policy ‖ SFT) summed over each greedy reply, averaged (nats)
- style      share of greedy replies in the lively style (exclamation mark + emoji)
- empty      number of empty replies
- logp-margin  mean log π(chosen) - log π(rejected) over the held-out preference pairs (summed token
             log-probs: the policy's own preference, no reference, lower for longer replies)
- DPO-margin   DPO's implicit reward margin β·[(log π - log π_ref)(chosen) - (log π - log π_ref)(rejected)]
             with π_ref = the SFT model and --beta (0 for the SFT model itself)
The reward model's held-out pairwise accuracy (from reward_model.py) heads the table. Replies get up
to --max_new_tokens tokens (256; the tiny model of rlhf.sh writes short ones: 24). The SFT model and
the reward model load in --dtype (auto, as for SFT, by default), with --trust_remote_code true|false,
as in the training stages.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error, parse_bool
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.rlhf.margins import implicit_reward_margin, preference_margin
from llm_tuning.rlhf.pairs import encode_pairs, load_preference_pairs
from llm_tuning.rlhf.reward_model import load_reward_model
from llm_tuning.rlhf.rollouts import evaluate_policy
from llm_tuning.rlhf.stage import EVAL_METRICS_FILE
from llm_tuning.templates import resolve_template, stop_token_ids
from style import is_lively


@dataclass
class Row:
    name: str
    reward: float
    kl: float
    style_rate: float
    empty: int
    logp_margin: float
    dpo_margin: float
    sample: str


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", required=True, help="the SFT model the adapters were trained on")
    parser.add_argument("--reward_model", required=True, help="reward_model.py's output directory")
    parser.add_argument("--eval_file", required=True, help="held-out preference pairs")
    parser.add_argument("--policy", action="append", default=[], metavar="NAME=ADAPTER",
                        help="a LoRA policy to measure (repeatable), e.g. PPO=weights/rlhf/ppo")
    parser.add_argument("--template", default="auto")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="reply budget (rlhf.sh: 24)")
    parser.add_argument("--dtype", default="auto",
                        help="auto (as for SFT), float32, bfloat16 or float16: the SFT model and the reward model")
    parser.add_argument("--trust_remote_code", type=parse_bool, default=False,
                        help="true/false: run the models' own code")
    parser.add_argument("--beta", type=float, default=0.1,
                        help="β of the DPO-margin column, the same for every policy (rlhf.sh trains DPO with 0.1)")
    return parser.parse_args(argv)


def measure_policies(sft: str, reward_model_path: str, eval_file: str, policies: dict[str, str],
                     template_name: str = "auto", max_new_tokens: int = 256, beta: float = 0.1,
                     dtype: str = "auto", trust_remote_code: bool = False) -> list[Row]:
    tokenizer = load_tokenizer(sft, trust_remote_code)
    template = resolve_template(template_name, tokenizer, sft, trust_remote_code)
    stops = stop_token_ids(tokenizer, template)
    pairs = encode_pairs(tokenizer, template, load_preference_pairs(eval_file), None)
    prompts = [list(p) for p in dict.fromkeys(tuple(e.prompt_ids) for e in pairs)]
    reward_model = load_reward_model(reward_model_path, dtype, trust_remote_code)
    reward_model.config.pad_token_id = tokenizer.pad_token_id

    def row(name: str, model) -> Row:
        report = evaluate_policy(model, reward_model, tokenizer, prompts, stops, max_new_tokens)
        style = sum(map(is_lively, report.replies)) / len(report.replies)
        return Row(name, report.mean_reward, report.mean_kl, style, report.empty_replies,
                   preference_margin(model, pairs, tokenizer.pad_token_id),
                   implicit_reward_margin(model, pairs, tokenizer.pad_token_id, beta), report.replies[0])

    model = load_model(sft, dtype, trust_remote_code).eval()
    rows = [row("SFT", model)]
    for name, path in policies.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise UserError(f"{path}: no adapter here (adapter_config.json is missing)")
        if not hasattr(model, "load_adapter") or not hasattr(model, "peft_config"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path, adapter_name=name)
        else:
            model.load_adapter(path, adapter_name=name)
        model.set_adapter(name)
        model.eval()
        rows.append(row(name, model))
    return rows


def format_table(rows: list[Row], rm_accuracy: float | None) -> str:
    lines = []
    if rm_accuracy is not None:
        lines.append(f"reward model held-out pairwise accuracy: {rm_accuracy:.3f}")
    lines.append(f"{'policy':<8}{'reward':>8}{'KL':>8}{'style':>8}{'empty':>7}{'logp-margin':>13}{'DPO-margin':>12}"
                 "  first reply")
    for r in rows:
        lines.append(f"{r.name:<8}{r.reward:>8.2f}{r.kl:>8.2f}{r.style_rate:>8.2f}{r.empty:>7d}{r.logp_margin:>13.2f}"
                     f"{r.dpo_margin:>12.2f}  {r.sample!r}")
    return "\n".join(lines)


@exits_on_user_error
def main(args: argparse.Namespace) -> list[Row]:
    policies = {}
    for item in args.policy:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--policy {item!r}: expected NAME=ADAPTER_DIR")
        policies[name] = path
    rows = measure_policies(args.sft, args.reward_model, args.eval_file, policies, args.template, args.max_new_tokens,
                            args.beta, args.dtype, args.trust_remote_code)
    metrics_file = Path(args.reward_model) / EVAL_METRICS_FILE
    accuracy = json.loads(metrics_file.read_text())["accuracy"] if metrics_file.is_file() else None
    print(format_table(rows, accuracy))
    return rows


if __name__ == "__main__":
    main(parse_args())
