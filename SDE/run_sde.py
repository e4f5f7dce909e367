"""Sample Design Engineering: one LoRA adapter per sample design, compared in- and out-of-domain.

For each design: build its samples from the d1 training reviews → tokenize (as
tokenize_dataset_rows.py; with input modeling the prompt is supervised too) → train with a recipe
(as `python qwen_lora_tuning.py ...`) → answer the d1 test (ID) and d2 test (OOD) greedily →
parse every output back to labels → score. Prints and saves a comparison table.

    # offline, on this CPU: a tiny random Qwen2 stand-in (its tokenizer learns the samples' text)
    python SDE/make_reviews.py
    python SDE/run_sde.py --designs ES-SDE json cot --max_steps 300 --learning_rate 5e-3

    # a real model on a GPU box: the paper's grid, one adapter per design
    python SDE/run_sde.py --model Qwen/Qwen2.5-7B-Instruct --designs ES-SDE inst-last no-inst MI \
        json natural numeric omit cot rcot --num_train_epochs 2 --learning_rate 2e-4 --bf16 true

    # a design of your own: overrides of ES-SDE
    python SDE/run_sde.py --designs ES-SDE "format=json,labels=numeric,unmentioned=omit"

Arguments this script does not know go to the recipe as they are (every TrainingArguments flag
and the LoRA flags: --lora_rank, --quantization_bit 4, ...). Real data in the ASAP CSV style:
convert it with SDE/convert_asap.py to the jsonl schema and pass --train_file etc.

Writes to --output_dir (default runs/sde): results.md (the table), results.json, results.png
(the chart), and per design: train.jsonl, the tokenized data, the adapter, predictions_*.jsonl.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from design import Design, build_sample, parse_design, parse_output
from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import ArgumentParser, exits_on_user_error, parse_bool
from llm_tuning.experiment import (
    answer_all,
    build_tiny_stand_in,
    load_adapted,
    tokenize_records,
    train_adapter,
)
from llm_tuning.modeling import load_tokenizer
from llm_tuning.templates import resolve_template
from reviews import DOMAINS, load_reviews
from scoring import evaluate

REPO_ROOT = Path(__file__).resolve().parents[1]  # where the recipes are

SDE_DIR = Path(__file__).resolve().parent
TINY = "tiny"
# What the recipe gets unless the command line says otherwise (later flags win).
DEFAULT_RECIPE_ARGS = ["--per_device_train_batch_size", "8", "--num_train_epochs", "2", "--learning_rate", "2e-4",
                       "--lora_dropout", "0.05", "--logging_steps", "10", "--save_strategy", "no",
                       "--report_to", "none", "--seed", "0"]


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", nargs="+", default=["ES-SDE"], help="preset names or option=value,... specs")
    parser.add_argument("--model", default=TINY, help=f"hub id or path; {TINY!r} builds an offline stand-in")
    parser.add_argument("--recipe", default=str(REPO_ROOT / "qwen_lora_tuning.py"), help="the training recipe")
    parser.add_argument("--template", default="auto")
    parser.add_argument("--trust_remote_code", type=parse_bool, default=False,
                        help="true/false: run the model's own code (Baichuan, ChatGLM, ...)")
    parser.add_argument("--train_file", default=str(SDE_DIR / "data" / "d1_train.jsonl"))
    parser.add_argument("--id_test_file", default=str(SDE_DIR / "data" / "d1_test.jsonl"))
    parser.add_argument("--ood_test_file", default=str(SDE_DIR / "data" / "d2_test.jsonl"))
    parser.add_argument("--max_train", type=int, default=None, help="use the first N training reviews")
    parser.add_argument("--max_eval", type=int, default=None, help="use the first N reviews of each test set")
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--tiny_hidden_size", type=int, default=64, help="size of the offline stand-in")
    parser.add_argument("--tiny_layers", type=int, default=2)
    parser.add_argument("--output_dir", default="runs/sde")
    return parser.parse_known_args(argv)


def design_slug(spec: str) -> str:
    return spec.replace("=", "-").replace(",", "_")


def prepare_model(args, designs: dict[str, Design], train: list[dict], out_dir: Path) -> str:
    """The base model; for `tiny`, a random Qwen2 whose tokenizer was trained on every design's samples."""
    if args.model != TINY:
        return args.model
    corpus = out_dir / "tiny-corpus"
    write_jsonl((build_sample(r, d) for d in designs.values() for r in train), corpus / "samples.jsonl")
    return str(build_tiny_stand_in(out_dir / "tiny-model", corpus, hidden_size=args.tiny_hidden_size,
                                   num_layers=args.tiny_layers))


def run_design(args, recipe_argv, spec: str, design: Design, model: str, data: dict[str, list[dict]],
               out_dir: Path) -> dict:
    run_dir = out_dir / design_slug(spec)
    train_file = write_jsonl((build_sample(r, design) for r in data["train"]), run_dir / "train.jsonl")
    dataset = tokenize_records(train_file, model, run_dir / "tokenized", args.template, args.max_seq_length,
                               supervise_prompt=design.supervise_prompt, trust_remote_code=args.trust_remote_code)
    adapter = train_adapter(args.recipe, dataset, run_dir / "adapter",
                            [*DEFAULT_RECIPE_ARGS, "--trust_remote_code", str(args.trust_remote_code), *recipe_argv])
    llm, tokenizer, template = load_adapted(adapter=adapter, trust_remote_code=args.trust_remote_code)
    result = {"design": spec, "options": asdict(design), "splits": {}}
    for split in ("id", "ood"):
        records = data[split]
        outputs = answer_all(llm, tokenizer, template, [build_sample(r, design)["q"] for r in records],
                             args.max_new_tokens, args.eval_batch_size, desc=f"{spec} {split}")
        parsed = [parse_output(o, r["domain"], design) for o, r in zip(outputs, records)]
        write_jsonl(({"id": r["id"], "output": o, "labels": p.labels, "format_error": p.error}
                     for r, o, p in zip(records, outputs, parsed)), run_dir / f"predictions_{split}.jsonl")
        aspects = list(DOMAINS[records[0]["domain"]])
        result["splits"][split] = evaluate([r["labels"] for r in records], [p.labels for p in parsed], aspects)
    return result


COLUMNS = (("sentence_accuracy", "sent. acc"), ("mean_aspect_accuracy", "aspect acc"), ("kappa", "kappa"),
           ("format_error_rate", "format err"))


def markdown_table(results: list[dict]) -> str:
    header = ["design"] + [f"{split.upper()} {name}" for split in ("id", "ood") for _, name in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        cells = [result["design"]] + [f"{result['splits'][split][key]:.3f}" for split in ("id", "ood")
                                      for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(results: list[dict], out_file: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [("id", "kappa"), ("ood", "kappa"), ("id", "format_error_rate"), ("ood", "format_error_rate")]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results)), 4))
    width = 0.8 / len(bars)
    for offset, (split, key) in enumerate(bars):
        xs = [i + offset * width for i in range(len(results))]
        ax.bar(xs, [r["splits"][split][key] for r in results], width, label=f"{split.upper()} {key}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(results))], [r["design"] for r in results], rotation=20)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    ax.set_title("Sample designs: kappa and format errors, in-domain (ID) and out-of-domain (OOD)")
    fig.savefig(out_file, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_file


@exits_on_user_error
def main(args: argparse.Namespace, recipe_argv: list[str]) -> Path:
    designs = {spec: parse_design(spec) for spec in args.designs}  # a bad spec fails before any work
    data = {
        "train": load_reviews(args.train_file)[: args.max_train],
        "id": load_reviews(args.id_test_file)[: args.max_eval],
        "ood": load_reviews(args.ood_test_file)[: args.max_eval],
    }
    out_dir = Path(args.output_dir)
    model = prepare_model(args, designs, data["train"], out_dir)
    resolve_template(args.template, load_tokenizer(model, args.trust_remote_code), model, args.trust_remote_code)

    results = [run_design(args, recipe_argv, spec, design, model, data, out_dir) for spec, design in designs.items()]

    table = markdown_table(results)
    (out_dir / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(table, encoding="utf-8")
    plot_results(results, out_dir / "results.png")
    print(table)
    print(f"saved {out_dir / 'results.md'}, results.json and results.png")
    return out_dir


if __name__ == "__main__":
    main(*parse_args())
