"""Step 1 of 2: tokenize a json/jsonl instruction set once and save it to disk.

    python tokenize_dataset_rows.py \
        --model_checkpoint Qwen/Qwen2.5-7B-Instruct \
        --input_file data/simple_math_4op.jsonl \
        --prompt_key q --target_key a \
        --save_name simple_math_4op \
        --max_seq_length 512 --skip_overlength false

Records are JSON objects. `--format qa` (default): a question and an answer (`--prompt_key`,
`--target_key`), optionally earlier turns as `[question, answer]` pairs (`--history_key`) and a
system prompt (`--system_key`). Also `--format alpaca` (instruction/input/output/history),
`messages` (OpenAI chat messages, system prompt included), `sharegpt` (conversations of
from/value), or `auto` (decided by the first record). Samples of each are in data/.

Reasoning traces and tool calls (`messages` and `sharegpt` records): an assistant
`reasoning_content` or a reply that begins with `<think>…</think>`, assistant `tool_calls`, `tool`
messages and a record-level `tools` list (ShareGPT: `function_call` / `observation` turns). The
model's own template renders them; a template that cannot is refused in one sentence. Each turn is
trained in the context it has at inference: Qwen3 writes earlier turns otherwise (without their
reasoning or no-think block), so such a turn gets a row of its own (the summary says how many;
`--last_turn_only true` keeps one row per record).

Which chat format (`--template auto`): the tokenizer's own chat_template when it has one
(rendered with apply_chat_template; Llama-3, Qwen2.5/3, Mistral, Gemma, GLM-4, Phi, ...), else the
registry template of the model type (ChatGLM, Baichuan, InternLM v1). `--template NAME` picks a
registry template (`alpaca` for base models). Labels supervise every assistant turn (reasoning and
tool calls included) plus the end-of-turn token the template writes after it, found by position,
and mask everything else: system, tool definitions, user turns, tool results (`--last_turn_only
true` supervises the last assistant message alone). `python -m llm_tuning.info MODEL` shows the
choice and samples.

Writes `data/tokenized_data/<save_name>/`: the dataset (`input_ids`, `labels`) and metadata.json
(tokenizer fingerprint, template, counts). A training recipe refuses data made with another
tokenizer. Bad records stop the run with `file:line: what is wrong` and exit code 2.
"""

import argparse
from pathlib import Path

from llm_tuning.cli import ArgumentParser, exits_on_user_error, parse_bool
from llm_tuning.data import TokenizeConfig, print_data_example, save_tokenized, tokenize_file
from llm_tuning.modeling import load_tokenizer
from llm_tuning.records import RECORD_FORMATS, RecordKeys
from llm_tuning.templates import describe_template, resolve_template


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_checkpoint", required=True,
                        help="hub id or local path of the model whose tokenizer to use")
    parser.add_argument("--input_file", required=True, help=".json (a list) or .jsonl (one object a line)")
    parser.add_argument("--format", default="qa", choices=RECORD_FORMATS,
                        help="qa (--prompt_key/--target_key), alpaca, messages, sharegpt, "
                             "or auto (from the first record)")
    parser.add_argument("--prompt_key", default="q")
    parser.add_argument("--target_key", default="a")
    parser.add_argument("--history_key", default=None, help="key of earlier turns, a list of [question, answer]")
    parser.add_argument("--system_key", default=None, help="key of a per-record system prompt")
    parser.add_argument("--save_name", required=True, help="name of the dataset under --output_dir")
    parser.add_argument("--output_dir", default="data/tokenized_data")
    parser.add_argument("--template", default="auto",
                        help="auto (the model's recorded one in its llm_tuning.json, else the tokenizer's own chat "
                             "template, else the model type's), native, or a registry name")
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--skip_overlength", type=parse_bool, default=False,
                        help="true: drop rows longer than --max_seq_length; false: truncate them")
    parser.add_argument("--last_turn_only", type=parse_bool, default=False,
                        help="true: supervise only the last answer of a multi-turn record")
    parser.add_argument("--max_samples", type=int, default=None, help="use only the first N records (quick tries)")
    parser.add_argument("--num_proc", type=int, default=None,
                        help="tokenizer processes (default: one per core for files of 20,000+ records, else 1)")
    parser.add_argument("--trust_remote_code", type=parse_bool, default=False,
                        help="needed by remote-code tokenizers (ChatGLM, Baichuan, Qwen-7B v1)")
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model_checkpoint, trust_remote_code=args.trust_remote_code)
    chosen = resolve_template(args.template, tokenizer, args.model_checkpoint, args.trust_remote_code)
    print(describe_template(tokenizer, chosen))  # an unknown name failed above, before any work
    template = chosen.name

    config = TokenizeConfig(
        tokenizer_path=args.model_checkpoint,
        template=template,
        max_seq_length=args.max_seq_length,
        skip_overlength=args.skip_overlength,
        last_turn_only=args.last_turn_only,
        keys=RecordKeys(args.prompt_key, args.target_key, args.history_key, args.system_key, args.format),
        num_proc=args.num_proc,
        max_samples=args.max_samples,
    )
    dataset, metadata = tokenize_file(args.input_file, tokenizer, config)
    print_data_example(dataset[0], tokenizer)
    out_dir = save_tokenized(dataset, metadata, Path(args.output_dir) / args.save_name)
    print(rows_summary(metadata["rows"], template, args.max_seq_length))
    print(f"saved to {out_dir}")


def rows_summary(rows: dict, template: str, max_seq_length: int) -> str:
    """What became of the records: rows kept, skipped, truncated, and the rows reasoning needed."""
    summary = (f"template {template}: read {rows['read']} rows, kept {rows['kept']}, "
               f"skipped {rows['skipped']} (over {max_seq_length} tokens), truncated {rows['truncated']}")
    if rows["reasoning_cut"]:
        summary += (f" ({rows['reasoning_cut']} of them cut into a turn's reasoning: raise --max_seq_length "
                    "or pass --skip_overlength true to keep reasoning whole)")
    if rows["turn_rows"]:
        summary += (f"\n{rows['turn_rows']} of the rows kept are extra: the template writes an earlier turn otherwise "
                    "once later messages follow (Qwen3: without its reasoning or no-think block), so each such turn "
                    "is trained in a row that ends with it, as the model sees it at inference")
    return summary


if __name__ == "__main__":
    main(parse_args())
