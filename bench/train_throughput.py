"""Training throughput of each batching option, side by side, on a long-tailed dataset.

    python bench/train_throughput.py                      # ~5 min on 2 CPU cores (--repeats 3: ~12 min)
    python bench/train_throughput.py --rows 1200 --hidden_size 512 --num_layers 8   # on a GPU
    python bench/train_throughput.py --table dpo          # DPO on preference pairs
                                                          # (--repeats 3: 15-40 min, 2 busy cores)

A tiny-but-not-trivial random Qwen2 (hidden 256, 4 layers by default) with a LoRA adapter trains
one epoch over bench/data/long_tail.jsonl (make_long_tail.py) in each of these ways:

- default:        what a recipe does with no batching flag (--batching auto: on CPU, length-sorted
                  batches of a token budget chosen to give as many batches as --batch_size rows;
                  packing with flash-attention varlen on a GPU)
- tokens:         length-sorted batches of at most --max_tokens_per_batch tokens
- sorted:         length-sorted batches of exactly --batch_size rows (--batching sorted)
- group_by_length: ours, --batching group_by_length (transformers' sampler, our collator)
- packing:        rows bin-packed into full rows of --max_seq_length (--batching packing)
- random:         random batches padded to their longest row (--batching random)
- pad-to-max:     every batch padded to --max_seq_length (what fixed-shape scripts do; not run
                  unless asked with --modes)
- trainer-group_by_length: plain transformers Trainer, train_sampling_strategy group_by_length,
                  DataCollatorForSeq2Seq (with attention mask): the baseline without this repo
- trl-sft:        TRL's SFTTrainer with its defaults on the same token ids and loss mask
- trl-padding-free: TRL's SFTTrainer with padding_free=True

With `--table dpo`, DPO with LoRA (reference = the adapter off) trains one epoch over the first
--pairs preference pairs of bench/data/long_tail_pairs.jsonl (make_long_tail.py), in these ways:

- dpo-default:    what RLHF/dpo.py does with no batching flag (length-sorted pairs in batches of an
                  automatic token budget, chosen and rejected counted together; as many batches
                  as --batch_size pairs would give)
- dpo-sorted:     length-sorted batches of exactly --batch_size pairs (--batching sorted)
- dpo-random:     ours with --batching random: TRL's batches through our trainer (its overhead)
- trl-dpo:        TRL's DPOTrainer with its defaults (random batches of --batch_size pairs, each
                  padded to its longest sequence), the baseline
Both use DPOConfig's defaults otherwise (gradient checkpointing on, max_length 1024); the
precision is float32 on CPU in every mode (TRL's default bf16 needs a GPU).

Each run is a fresh process (so peak memory is its own) over the same rows and the same real
tokens. Reported: real (non-pad) tokens per second, padding efficiency (real tokens / computed
positions), peak memory (CUDA max allocated on a GPU, else peak RSS of the process) and how much
of it came during training (above what the process held when training started), and
tokens/s as a ratio to plain Trainer group_by_length and to TRL's best mode. Prints a markdown
table. The DPO table adds real tokens per CPU-second of the process (steadier than the wall clock
on a machine other jobs share) and its ratios to TRL's DPOTrainer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

LONG_TAIL = REPO_ROOT / "bench" / "data" / "long_tail.jsonl"
LONG_TAIL_PAIRS = REPO_ROOT / "bench" / "data" / "long_tail_pairs.jsonl"
MODES = ("default", "tokens", "sorted", "trainer-group_by_length", "trl-padding-free", "packing",
         "group_by_length", "trl-sft", "random", "pad-to-max")
DEFAULT_MODES = MODES[:-1]  # pad-to-max only when asked: it is the slowest by far
BASELINE = "trainer-group_by_length"
DPO_MODES = ("dpo-default", "trl-dpo", "dpo-sorted", "dpo-random")
DPO_DEFAULT_MODES = DPO_MODES[:2]
DPO_BASELINE = "trl-dpo"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400, help="rows of the long-tailed set to train on")
    parser.add_argument("--max_seq_length", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=8, help="rows per step (packed rows for packing)")
    parser.add_argument("--max_tokens_per_batch", type=int, default=4096, help="token budget of the tokens mode")
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--table", choices=("sft", "dpo"), default="sft",
                        help="sft: the rows of long_tail.jsonl; dpo: the preference pairs of long_tail_pairs.jsonl")
    parser.add_argument("--pairs", type=int, default=120, help="preference pairs to train on (--table dpo)")
    parser.add_argument("--modes", default=None, help="comma-separated subset of: " + ", ".join(MODES) +
                        " (--table sft; default all but pad-to-max) or " + ", ".join(DPO_MODES) +
                        " (--table dpo; default " + ", ".join(DPO_DEFAULT_MODES) + ")")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of every mode, interleaved (mode order rotated each round); the table gives "
                             "the median tokens/s and its min-max")
    parser.add_argument("--work_dir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, work_dir: Path) -> tuple[Path, Path]:
    """The model and the tokenized rows every mode shares (DPO: the trainer tokenizes the pairs)."""
    from transformers import AutoTokenizer

    from llm_tuning.data import TokenizeConfig, save_tokenized, tokenize_file
    from llm_tuning.tiny_models import save_tiny_model

    model_dir = save_tiny_model("qwen2", work_dir / "model", hidden_size=args.hidden_size, num_layers=args.num_layers)
    if args.table == "dpo":
        return model_dir, work_dir / "data"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = TokenizeConfig(str(model_dir), "qwen", args.max_seq_length, skip_overlength=False,
                            last_turn_only=False, max_samples=args.rows)
    dataset, metadata = tokenize_file(LONG_TAIL, tokenizer, config)
    return model_dir, save_tokenized(dataset, metadata, work_dir / "data")


class Counting:
    """Wrap a collator: count the positions it hands to the model."""

    def __init__(self, collator):
        self.collator, self.positions = collator, 0

    def __call__(self, rows):
        batch = self.collator(rows)
        self.positions += batch["input_ids"].numel()
        return batch


def dpo_trainer(mode: str, args: argparse.Namespace, model_dir: Path, out_dir: Path):
    """A DPO trainer over the first --pairs long-tailed pairs: ours (RLHF/dpo.py's) or TRL's own."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from llm_tuning.rlhf.pair_batches import PairBatchingArguments, pair_trainer
    from llm_tuning.rlhf.pairs import load_preference_pairs, render_pair
    from llm_tuning.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = load_preference_pairs(LONG_TAIL_PAIRS)[:args.pairs]
    dataset = Dataset.from_list([render_pair(tokenizer, get_template("qwen"), pair) for pair in pairs])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = DPOConfig(output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                       report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0,
                       bf16=torch.cuda.is_available())  # the same precision in every mode
    common = dict(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, ref_model=None,
                  peft_config=LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    if mode == "trl-dpo":
        return DPOTrainer(**common)
    batching = {"dpo-default": "auto", "dpo-sorted": "sorted", "dpo-random": "random"}[mode]
    return pair_trainer(DPOTrainer, PairBatchingArguments(batching=batching), **common)


def run_one(mode: str, args: argparse.Namespace, model_dir: Path, data_dir: Path) -> dict:
    """Train one epoch in one mode; time it and measure its padding and memory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from llm_tuning.batching import make_collator, prepare_batching, row_lengths
    from llm_tuning.data import IGNORE_INDEX, load_tokenized
    from llm_tuning.training import DataArguments

    if mode in DPO_MODES:
        from llm_tuning.rlhf.pair_batches import pair_lengths

        trainer = dpo_trainer(mode, args, model_dir, data_dir.parent / mode)
        real_tokens = sum(map(sum, pair_lengths(trainer.train_dataset, trainer.args.max_length)))
        trainer.data_collator = Counting(trainer.data_collator)
        return train_measured(mode, trainer, real_tokens)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset, _ = load_tokenized(data_dir)
    real_tokens = sum(row_lengths(dataset))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    common = dict(output_dir=str(data_dir.parent / mode), per_device_train_batch_size=args.batch_size,
                  num_train_epochs=1, learning_rate=2e-4, report_to="none", save_strategy="no",
                  logging_steps=10**6, disable_tqdm=True, seed=0,
                  bf16=torch.cuda.is_available())  # the same precision in every mode (TRL defaults to bf16)

    if mode.startswith("trl-"):
        from trl import SFTConfig, SFTTrainer

        rows = dataset.map(lambda row: {"completion_mask": [int(label != IGNORE_INDEX) for label in row["labels"]]},
                           remove_columns=["labels"])
        padding_free = mode == "trl-padding-free"  # rows are cut to max_seq_length already; TRL wants None here
        config = SFTConfig(**common, max_length=None if padding_free else args.max_seq_length,
                           padding_free=padding_free)
        trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)
        trainer.data_collator = Counting(trainer.data_collator)
    elif mode == BASELINE:
        from transformers import DataCollatorForSeq2Seq

        training_args = TrainingArguments(**common, train_sampling_strategy="group_by_length")
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
        trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=Counting(collator),
                          processing_class=tokenizer)
    else:
        training_args = TrainingArguments(**common)
        batching = {"default": "auto", "tokens": "auto", "pad-to-max": "random"}.get(mode, mode)
        data_args = DataArguments(str(data_dir), batching=batching,
                                  max_tokens_per_batch=args.max_tokens_per_batch if mode == "tokens" else None)
        batches = prepare_batching(dataset, tokenizer, data_args, training_args, args.max_seq_length)
        if mode == "pad-to-max":
            batches.collator = make_collator(tokenizer, max_length=args.max_seq_length)
        batches.collator = Counting(batches.collator)
        trainer = batches.trainer(model=model, args=training_args, processing_class=tokenizer)
    return train_measured(mode, trainer, real_tokens)


def train_measured(mode: str, trainer, real_tokens: int) -> dict:
    """Train, timing it and measuring the positions computed and the peak memory."""
    import torch

    from llm_tuning.run_logs import peak_memory_mib

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before_mb = torch.cuda.memory_allocated() / 2**20
    else:
        before_mb = resident_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = peak_memory_mib()
    positions = trainer.data_collator.positions
    return {"mode": mode, "seconds": seconds, "cpu_seconds": cpu_seconds, "real_tokens": real_tokens,
            "positions": positions, "steps": trainer.state.global_step, "peak_mb": peak_mb, "before_mb": before_mb}


def resident_mb() -> float:
    """The process's resident memory now (Linux), in MiB."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def markdown_table(results: list[dict], device: str) -> str:
    runs: dict[str, list[dict]] = {}
    for result in results:
        runs.setdefault(result["mode"], []).append(result)
    speeds = {m: sorted(r["real_tokens"] / r["seconds"] for r in rs) for m, rs in runs.items()}
    speed = {m: statistics.median(s) for m, s in speeds.items()}
    if any(mode in DPO_MODES for mode in runs):
        return dpo_markdown_table(runs, speeds, speed, device)
    trl_best = max((m for m in speed if m.startswith("trl-")), key=speed.get, default=None)
    repeated = any(len(s) > 1 for s in speeds.values())
    lines = [f"| batching ({device}) | real tokens/s{' (median, min-max)' if repeated else ''} | padding efficiency "
             f"| steps | peak memory (of it, training) | vs Trainer group_by_length "
             f"| vs TRL best ({trl_best or '-'}) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, rs in runs.items():
        r = rs[0]  # positions, steps: the same in every run of a mode
        vs_baseline = f"{speed[mode] / speed[BASELINE]:.2f}x" if BASELINE in speed else "-"
        vs_trl = f"{speed[mode] / speed[trl_best]:.2f}x" if trl_best else "-"
        spread = f" ({speeds[mode][0]:,.0f}-{speeds[mode][-1]:,.0f})" if len(rs) > 1 else ""
        peak_mb = max(run["peak_mb"] for run in rs)
        training_mb = max(run["peak_mb"] - run["before_mb"] for run in rs)
        lines.append(f"| {mode} | {speed[mode]:,.0f}{spread} | {r['real_tokens'] / r['positions']:.3f} | {r['steps']} "
                     f"| {peak_mb:,.0f} MiB ({training_mb:,.0f}) | {vs_baseline} | {vs_trl} |")
    return "\n".join(lines)


def dpo_markdown_table(runs: dict[str, list[dict]], speeds: dict[str, list[float]], speed: dict[str, float],
                       device: str) -> str:
    # Tokens per CPU-second as well: on a machine shared with other jobs the wall clock of a run
    # depends on what else ran meanwhile, the CPU time it took much less.
    per_cpu = {m: statistics.median(r["real_tokens"] / r["cpu_seconds"] for r in rs) for m, rs in runs.items()}
    baseline = runs.get(DPO_BASELINE)
    lines = [f"| DPO batching ({device}) | real tokens/s (median, min-max) | real tokens per CPU-second | padding "
             f"efficiency | steps | peak memory (of it, training) | tokens/s vs TRL DPOTrainer | per CPU-second vs TRL "
             f"| peak memory vs TRL |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, rs in runs.items():
        r = rs[0]  # positions, steps: the same in every run of a mode
        peak_mb = statistics.median(run["peak_mb"] for run in rs)
        training_mb = statistics.median(run["peak_mb"] - run["before_mb"] for run in rs)
        vs_speed = f"{speed[mode] / speed[DPO_BASELINE]:.2f}x" if baseline else "-"
        vs_cpu = f"{per_cpu[mode] / per_cpu[DPO_BASELINE]:.2f}x" if baseline else "-"
        vs_memory = f"{peak_mb / statistics.median(run['peak_mb'] for run in baseline):.2f}x" if baseline else "-"
        spread = f" ({speeds[mode][0]:,.0f}-{speeds[mode][-1]:,.0f})" if len(rs) > 1 else ""
        lines.append(f"| {mode} | {speed[mode]:,.0f}{spread} | {per_cpu[mode]:,.0f} "
                     f"| {r['real_tokens'] / r['positions']:.3f} | {r['steps']} "
                     f"| {peak_mb:,.0f} MiB ({training_mb:,.0f}) | {vs_speed} | {vs_cpu} | {vs_memory} |")
    return "\n".join(lines)


def run_in_own_process(mode: str, args: argparse.Namespace, work_dir: Path) -> dict:
    command = [sys.executable, __file__, "--one", mode, "--work_dir", str(work_dir), "--table", args.table]
    command += sum(([f"--{k}", str(getattr(args, k))] for k in
                    ("rows", "max_seq_length", "batch_size", "max_tokens_per_batch", "hidden_size",
                     "num_layers", "pairs")), [])
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"error: mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    args = parse_args()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    if args.one:
        model_dir, data_dir = work_dir / "model", work_dir / "data"
        print("RESULT " + json.dumps(run_one(args.one, args, model_dir, data_dir)))
        return

    import torch
    from tqdm.auto import tqdm

    known, default = (DPO_MODES, DPO_DEFAULT_MODES) if args.table == "dpo" else (MODES, DEFAULT_MODES)
    modes = [m.strip() for m in (args.modes or ",".join(default)).split(",") if m.strip()]
    unknown = set(modes) - set(known)
    if unknown:
        sys.exit(f"error: unknown mode(s) {', '.join(sorted(unknown))} for --table {args.table}; "
                 f"choose from {', '.join(known)}")
    if args.repeats < 1:
        sys.exit(f"error: --repeats must be at least 1, not {args.repeats}")
    prepare(args, work_dir)
    results = []
    # Rounds rotate the order, so no mode always runs first (a cold machine) or after the same one.
    schedule = [mode for round in range(args.repeats)
                for mode in modes[round % len(modes):] + modes[:round % len(modes)]]
    try:
        for mode in tqdm(schedule, desc="runs"):
            results.append(run_in_own_process(mode, args, work_dir))
            tqdm.write(f"{mode}: {results[-1]['real_tokens'] / results[-1]['seconds']:,.0f} real tokens/s")
    except KeyboardInterrupt:  # Ctrl-C: the table of the modes measured so far
        if not results:
            raise
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    if args.table == "dpo":
        print(f"\n{args.pairs} pairs of {LONG_TAIL_PAIRS.name} ({results[0]['real_tokens']:,} real tokens, chosen and "
              f"rejected), DPO, Qwen2 hidden {args.hidden_size} x {args.num_layers} layers + LoRA r=8, "
              f"batch {args.batch_size} pairs, one epoch each, {args.repeats} run(s) of each mode\n")
    else:
        print(f"\n{args.rows} rows of {LONG_TAIL.name} ({results[0]['real_tokens']:,} real tokens), Qwen2 "
              f"hidden {args.hidden_size} x {args.num_layers} layers + LoRA r=8, batch {args.batch_size}, "
              f"max_seq_length {args.max_seq_length}, tokens mode {args.max_tokens_per_batch} tokens per batch, "
              f"one epoch each, {args.repeats} run(s) of each mode\n")
    print(markdown_table(results, device))


if __name__ == "__main__":
    main()
