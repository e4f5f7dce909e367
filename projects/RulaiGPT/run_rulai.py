"""RulaiGPT: inject a few new facts with LoRA, then measure what was learned and what was forgotten.

Three rows, one table:
  base            the model before tuning
  facts only      LoRA on the facts' training questions
  facts + replay  the same, plus general questions answered by the base model itself (replay of
                  its own answers: no extra data set needed), the usual cure for forgetting

Learned:   hit rate = replies that contain the fact's key, on the trained questions and on
           paraphrases held out from training.
Forgotten: on control questions (general, never trained on), the share of replies still
           identical to the base model's, and how much the per-token loss of the base model's
           own answers rose (nats/token; 0 = unchanged).

    # offline on this CPU: a tiny random Qwen2 first taught the general questions (so it has
    # something to forget), then tuned; ~1 minute
    python projects/RulaiGPT/run_rulai.py

    # a real chat model on a GPU
    python projects/RulaiGPT/run_rulai.py --model Qwen/Qwen2.5-1.5B-Instruct \
        --num_train_epochs 10 --learning_rate 2e-4 --bf16 true

Arguments this script does not know go to the recipe (--lora_rank, --max_steps, ...).
Writes --output_dir (default runs/rulai): results.md, results.json, replies.jsonl, and per run
the training jsonl, tokenized data and adapter.
"""

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import ArgumentParser, exits_on_user_error
from llm_tuning.experiment import (
    answer_all, answer_nll, build_tiny_stand_in, load_adapted, merge_adapter, read_jsonl,
    tokenize_records, train_adapter,
)

REPO_ROOT = Path(__file__).resolve().parents[2]  # where the recipes are
PROJECT_DIR = Path(__file__).resolve().parent
TINY = "tiny"
# A tiny random model needs a high learning rate and many passes (400 steps: every trained
# question right on seeds 0, 1 and 2; 250 missed one of 24 on two of them); a real one wants ~2e-4.
TINY_RECIPE_ARGS = ["--max_steps", "400", "--learning_rate", "5e-3", "--lora_dropout", "0"]
COMMON_RECIPE_ARGS = ["--per_device_train_batch_size", "8", "--logging_steps", "25", "--save_strategy", "no",
                      "--report_to", "none", "--seed", "0"]


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TINY, help=f"hub id or path of a chat model; {TINY!r}: offline stand-in")
    parser.add_argument("--recipe", default=str(REPO_ROOT / "qwen_lora_tuning.py"))
    parser.add_argument("--data_dir", default=str(PROJECT_DIR / "data"))
    parser.add_argument("--output_dir", default="runs/rulai")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--trust_remote_code", action="store_true", help="for remote-code models (Baichuan, ChatGLM, ...)")
    return parser.parse_known_args(argv)


def teach_stand_in(out_dir: Path, data_dir: Path, general: list[dict]) -> str:
    """Offline only: a tiny random Qwen2 that has learned the general questions (LoRA, merged)."""
    raw = build_tiny_stand_in(out_dir / "stand-in-random", data_dir)
    train_file = write_jsonl(({"q": g["q"], "a": g["a"]} for g in general), out_dir / "stand-in" / "train.jsonl")
    dataset = tokenize_records(train_file, str(raw), out_dir / "stand-in" / "tokenized")
    adapter = train_adapter(REPO_ROOT / "qwen_lora_tuning.py", dataset, out_dir / "stand-in" / "adapter",
                            [*COMMON_RECIPE_ARGS, "--max_steps", "300", "--learning_rate", "5e-3",
                             "--lora_dropout", "0", "--lora_rank", "16"])
    return str(merge_adapter(adapter, out_dir / "base"))


@dataclass
class Probe:
    """What every run is scored on, with the base model's answers to compare against."""

    facts: list[dict]
    control: list[dict]
    base_control: list[str]  # the base model's greedy replies to the control questions
    base_nll: list[float]    # ... and their per-token loss under the base model
    max_new_tokens: int


def score(name: str, model, tokenizer, template, probe: Probe) -> tuple[dict, list[dict]]:
    """One row of the table, and every reply behind it."""
    facts, control = probe.facts, probe.control

    def hit_rate(questions: list[str], keys: list[str]) -> tuple[float, list[str]]:
        replies = answer_all(model, tokenizer, template, questions, probe.max_new_tokens, desc=name)
        return statistics.mean(key.lower() in r.lower() for r, key in zip(replies, keys)), replies

    trained = [(q, f["key"]) for f in facts for q in f["train_questions"]]
    train_hit, train_replies = hit_rate([q for q, _ in trained], [k for _, k in trained])
    held_hit, held_replies = hit_rate([f["held_out_question"] for f in facts], [f["key"] for f in facts])
    control_replies = answer_all(model, tokenizer, template, [g["q"] for g in control], probe.max_new_tokens, desc=name)
    nll = answer_nll(model, tokenizer, template, [(g["q"], a) for g, a in zip(control, probe.base_control)])
    row = {
        "run": name,
        "train_hit_rate": train_hit,
        "held_out_hit_rate": held_hit,
        "control_kept": statistics.mean(r == b for r, b in zip(control_replies, probe.base_control)),
        "control_loss_shift": statistics.mean(n - b for n, b in zip(nll, probe.base_nll)),
    }
    replies = [{"run": name, "kind": kind, "question": q, "reply": r}
               for kind, pairs in (("trained", zip([q for q, _ in trained], train_replies)),
                                   ("held_out", zip([f["held_out_question"] for f in facts], held_replies)),
                                   ("control", zip([g["q"] for g in control], control_replies)))
               for q, r in pairs]
    return row, replies


def markdown_table(rows: list[dict]) -> str:
    lines = ["| run | hit rate (trained questions) | hit rate (held-out paraphrases) | control replies kept | "
             "control loss shift (nats/token) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['train_hit_rate']:.2f} | {r['held_out_hit_rate']:.2f} | "
                     f"{r['control_kept']:.2f} | {r['control_loss_shift']:+.3f} |")
    return "\n".join(lines) + "\n"


@exits_on_user_error
def main(args: argparse.Namespace, recipe_argv: list[str]) -> list[dict]:
    data_dir, out_dir = Path(args.data_dir), Path(args.output_dir)
    facts = read_jsonl(data_dir / "facts.jsonl")
    general = read_jsonl(data_dir / "general.jsonl")
    control = [g for g in general if g["split"] == "control"]
    replay = [g for g in general if g["split"] == "replay"]

    # The base model, and its own answers: the reference forgetting is measured against.
    base = teach_stand_in(out_dir, data_dir, general) if args.model == TINY else args.model
    remote_code = args.trust_remote_code
    model, tokenizer, template = load_adapted(base, trust_remote_code=remote_code)
    base_control = answer_all(model, tokenizer, template, [g["q"] for g in control], args.max_new_tokens, desc="base")
    base_replay = answer_all(model, tokenizer, template, [g["q"] for g in replay], args.max_new_tokens, desc="base")
    base_nll = answer_nll(model, tokenizer, template, [(g["q"], a) for g, a in zip(control, base_control)])
    probe = Probe(facts, control, base_control, base_nll, args.max_new_tokens)
    base_row, replies = score("base", model, tokenizer, template, probe)
    rows = [base_row]

    recipe_args = [*COMMON_RECIPE_ARGS, *(TINY_RECIPE_ARGS if args.model == TINY else []),
                   *(["--trust_remote_code", "true"] if remote_code else []), *recipe_argv]
    fact_rows = [{"q": q, "a": f["answer"]} for f in facts for q in f["train_questions"]]
    # An empty base reply (the model stopped at once) is nothing to replay, and no valid training row.
    replay_rows = [{"q": g["q"], "a": a} for g, a in zip(replay, base_replay) if a.strip()]
    if len(replay_rows) < len(replay):
        print(f"replay: {len(replay) - len(replay_rows)} of {len(replay)} base replies are empty and not replayed")
    for name, extra in (("facts only", []), ("facts + replay", replay_rows)):
        run_dir = out_dir / name.replace(" + ", "_").replace(" ", "_")
        train_file = write_jsonl(fact_rows + extra, run_dir / "train.jsonl")
        dataset = tokenize_records(train_file, base, run_dir / "tokenized", trust_remote_code=remote_code)
        adapter = train_adapter(args.recipe, dataset, run_dir / "adapter", recipe_args)
        row, run_replies = score(name, *load_adapted(adapter=adapter, trust_remote_code=remote_code), probe)
        rows.append(row)
        replies += run_replies

    table = markdown_table(rows)
    (out_dir / "results.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    write_jsonl(replies, out_dir / "replies.jsonl")
    (out_dir / "results.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"saved {out_dir / 'results.md'}, results.json and replies.jsonl")
    return rows


if __name__ == "__main__":
    main(*parse_args())
