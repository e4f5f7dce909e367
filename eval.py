"""Evaluate a base model, an adapter or a merged model on a test file; writes per-sample jsonl.

    # generation: batch replies to every question, then rouge-1/2/l, bleu-4, exact match
    python eval.py generate --adapter weights/simple_math_4op --data data/eval/qa_eval.jsonl

    # perplexity of the reference answers (same q/a files)
    python eval.py perplexity --adapter weights/simple_math_4op --data data/eval/qa_eval.jsonl

    # C-Eval-style single choice: the option letter the model finds most likely
    python eval.py choice --adapter weights/simple_math_4op --data data/eval/choice_eval.jsonl

    # reward-model accuracy: share of pairs whose chosen reply scores above the rejected one
    python eval.py reward --reward_model weights/rlhf/reward_model --data RLHF/data/preference_eval.jsonl
    # (the same with --adapter for the reward adapter, --base to load it on another base or to score a
    # merged reward model; --dtype and --rope_scaling/--rope_factor apply as for the other tasks)

Each run prints its metrics as JSON and writes `<output>` (default runs/eval/<task>.jsonl, one row
per sample: question, reference, prediction or scores) and `<output>.metrics.json`.
"""

import argparse
import json
from pathlib import Path

from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error, parse_bool
from llm_tuning.evaluation import (
    evaluate_choices, evaluate_generation, evaluate_perplexity, load_choice_questions, load_eval_conversations,
)
from llm_tuning.generation import GenerationSettings
from llm_tuning.inference import add_model_arguments, load_chat_model

TASKS = ("generate", "perplexity", "choice", "reward")


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--data", required=True, help="the test file (json or jsonl)")
    parser.add_argument("--output", default=None, help="per-sample jsonl (default: runs/eval/<task>.jsonl)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=256, help="generate: reply budget")
    parser.add_argument("--temperature", type=float, default=0.0, help="generate: 0 for greedy decoding")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--reward_model", default=None, help="reward: a reward adapter or merged reward model")
    parser.add_argument("--progress", type=parse_bool, default=True)
    add_model_arguments(parser)
    return parser.parse_args(argv)


def reward_model_source(args: argparse.Namespace) -> tuple[str, str | None]:
    """(reward model or reward adapter, base override): --reward_model, or the --adapter / --base flags
    every task shares (one reward adapter on --base, or a merged reward model as --base)."""
    if args.reward_model and args.adapter:
        raise UserError("pass the reward model once: --reward_model DIR, or --adapter DIR (with --base to change its base)")
    if len(args.adapter) > 1:
        raise UserError("reward scores with one reward model; pass a single --adapter")
    if args.reward_model or args.adapter:
        return (args.reward_model or args.adapter[0]), args.base
    if args.base:
        return args.base, None
    raise UserError("reward needs --reward_model (the directory RLHF/reward_model.py saved)")


def evaluate_reward(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    from llm_tuning.modeling import load_tokenizer
    from llm_tuning.rlhf.pairs import load_preference_pairs
    from llm_tuning.rlhf.reward_model import load_reward_model, score_pairs
    from llm_tuning.run_config import read_run_config
    from llm_tuning.templates import resolve_template

    source, base = reward_model_source(args)
    pairs = load_preference_pairs(args.data)
    run_config = read_run_config(source)
    trust = run_config.get("trust_remote_code", False) if args.trust_remote_code is None else args.trust_remote_code
    tokenizer = load_tokenizer(source, trust)
    template = resolve_template(args.template, tokenizer, base or source, trust, run_dir=source)
    rope_scaling = args.rope_scaling or run_config.get("rope_scaling")
    rope_factor = args.rope_factor or run_config.get("rope_factor", 2.0)
    model = load_reward_model(source, args.dtype, trust, base=base, rope_scaling=rope_scaling, rope_factor=rope_factor)
    scores = score_pairs(model, tokenizer, template, pairs, args.batch_size)
    rows = [{"prompt": p.prompt, "chosen_score": c, "rejected_score": r}
            for p, c, r in zip(pairs, scores.chosen, scores.rejected)]
    return {"reward_accuracy": scores.accuracy}, rows


@exits_on_user_error
def main(args: argparse.Namespace) -> dict:
    if args.task == "reward":
        metrics, rows = evaluate_reward(args)
    else:
        data = load_choice_questions(args.data) if args.task == "choice" else load_eval_conversations(args.data)
        model, tokenizer, template = load_chat_model(args)
        if args.task == "generate":
            settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p)
            metrics, rows = evaluate_generation(model, tokenizer, template, data, settings, args.batch_size,
                                                args.progress)
        elif args.task == "perplexity":
            metrics, rows = evaluate_perplexity(model, tokenizer, template, data, args.batch_size)
        else:
            metrics, rows = evaluate_choices(model, tokenizer, template, data, args.batch_size)
    output = Path(args.output or f"runs/eval/{args.task}.jsonl")
    write_jsonl(rows, output)
    metrics = {"task": args.task, "data": args.data, "samples": len(rows), **metrics}
    output.with_name(output.name + ".metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n",
                                                                encoding="utf-8")
    print(json.dumps(metrics, ensure_ascii=False))
    print(f"wrote {output}")
    return metrics


if __name__ == "__main__":
    main(parse_args())
