"""ChatBaichuan-HC3 end to end: HC3 data → q/a rows → tokenize → LoRA → chat, in one command.

    # offline on this CPU: a tiny random stand-in with Baichuan's tokens and template (~30 s)
    python projects/ChatBaichuan-HC3/run_hc3.py

    # the real project on a GPU: Baichuan-7B (a base model) learns to answer like a chat model
    python projects/ChatBaichuan-HC3/run_hc3.py --model baichuan-inc/Baichuan-7B \
        --input_file HC3-Chinese/all.jsonl --answers both --test_ratio 0.05 \
        --num_train_epochs 2 --learning_rate 2e-4 --per_device_train_batch_size 4 \
        --gradient_accumulation_steps 4 --bf16 true

It runs the same steps as the commands in projects/ChatBaichuan-HC3/README.md (convert_hc3.py,
tokenize_dataset_rows.py --template baichuan, baichuan_lora_tuning.py, chat.py), then prints
how many training answers the model reproduces and its replies to the held-out questions.
Arguments this script does not know go to the recipe. Writes --output_dir (default runs/hc3):
train/test jsonl, the tokenized data, the adapter (chat with `python chat.py --adapter
runs/hc3/adapter`), replies.jsonl and results.json.
"""

import argparse
import json
import statistics
from pathlib import Path

import hc3
from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import ArgumentParser, exits_on_user_error
from llm_tuning.experiment import (
    answer_all,
    build_tiny_stand_in,
    load_adapted,
    read_jsonl,
    tokenize_records,
    train_adapter,
)

REPO_ROOT = Path(__file__).resolve().parents[2]  # where the recipes are
PROJECT_DIR = Path(__file__).resolve().parent
TINY = "tiny"
RECIPE_ARGS = ["--logging_steps", "25", "--save_strategy", "no", "--report_to", "none", "--seed", "0"]
# A tiny random model needs a high learning rate and many passes to memorise its rows.
TINY_RECIPE_ARGS = ["--max_steps", "200", "--learning_rate", "5e-3", "--lora_dropout", "0",
                    "--per_device_train_batch_size", "8"]


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TINY, help=f"hub id or path; {TINY!r}: offline stand-in")
    parser.add_argument("--recipe", default=str(REPO_ROOT / "baichuan_lora_tuning.py"))
    parser.add_argument("--template", default="baichuan", help="问：…\\n答： for the Baichuan base models")
    parser.add_argument("--input_file", default=str(PROJECT_DIR / "data" / "hc3_sample.jsonl"))
    parser.add_argument("--answers", choices=sorted(hc3.ANSWER_KEYS), default="chatgpt")
    parser.add_argument("--test_ratio", type=float, default=0.2)
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--output_dir", default="runs/hc3")
    return parser.parse_known_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace, recipe_argv: list[str]) -> dict:
    out_dir = Path(args.output_dir)
    tiny = args.model == TINY
    model = (str(build_tiny_stand_in(out_dir / "tiny-baichuan", PROJECT_DIR / "data", arch="baichuan")) if tiny
             else args.model)

    # 1. HC3 records -> q/a rows, split by question.
    counts = hc3.convert(args.input_file, args.answers, min_answer_chars=2, test_ratio=args.test_ratio, seed=42,
                         out_dir=out_dir)  # convert_hc3.py's defaults
    print(counts)
    train, test = read_jsonl(out_dir / "train.jsonl"), read_jsonl(out_dir / "test.jsonl")

    # 2. Tokenize with the Baichuan prompt, 3. LoRA with the Baichuan recipe (it passes trust_remote_code).
    dataset = tokenize_records(out_dir / "train.jsonl", model, out_dir / "tokenized", args.template,
                               args.max_seq_length, trust_remote_code=not tiny)
    adapter = train_adapter(args.recipe, dataset, out_dir / "adapter",
                            [*RECIPE_ARGS, *(TINY_RECIPE_ARGS if tiny else []), *recipe_argv])

    # 4. Chat: the training questions (memorised?) and the held-out ones.
    llm, tokenizer, template = load_adapted(adapter=adapter, trust_remote_code=not tiny)
    train_replies = answer_all(llm, tokenizer, template, [r["q"] for r in train], args.max_new_tokens)
    test_replies = answer_all(llm, tokenizer, template, [r["q"] for r in test], args.max_new_tokens)
    write_jsonl([{"split": split, "q": r["q"], "reference": r["a"], "reply": reply}
                 for split, rows, replies in (("train", train, train_replies), ("test", test, test_replies))
                 for r, reply in zip(rows, replies)], out_dir / "replies.jsonl")
    results = {"counts": vars(counts),
               "train_exact_match": statistics.mean(r["a"] == reply for r, reply in zip(train, train_replies))}
    (out_dir / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    print(f"training answers reproduced exactly: {results['train_exact_match']:.2f} of {len(train)}")
    for row, reply in zip(test, test_replies):
        print(f"User: {row['q']}\nAssistant: {reply}")
    print(f"chat with it: python chat.py --adapter {adapter}")
    return results


if __name__ == "__main__":
    main(*parse_args())
