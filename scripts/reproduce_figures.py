"""Regenerate the tables of figures in the docs by running the commands the docs tell users to run.

    python scripts/reproduce_figures.py                          # every table, seeds 0 1 2
    python scripts/reproduce_figures.py --only rlhf rulai --seeds 0 1 2
    python scripts/reproduce_figures.py --only sde --reuse       # re-print from the logs of an earlier run

Each figure runs its folder's own command once per seed (a subprocess, exactly the command in the
docs plus the seed), keeps the output under --work_dir/<figure>/seed<N>/ (log.txt and what the
command wrote), and prints the table the docs show: one cell per figure, the mean ± the sample
standard deviation over the seeds (a single value for a deterministic table), headed by the seeds,
the package versions and the machine. Paste the printed block into the docs as it is.

Figures: rlhf (RLHF/README.md and both READMEs: the policy table and the GRPO table, from
`sh RLHF/rlhf.sh`), sde (SDE/README.md: the design grid), sde_bigger (SDE/README.md: ES-SDE on a
bigger stand-in), rulai (projects/RulaiGPT/README.md and both READMEs), hc3
(projects/ChatBaichuan-HC3/README.md), pretrain (pretrain/README.md: held-out perplexities of
continued pretraining, and the token mixture), mixture (pretrain/README.md: the deterministic shard
and mixture tables), vocab (pretrain/README.md: the token counts before and after the vocabulary
merge), generation (both READMEs: batched generation speed, three
timed repeats), real (both READMEs: SmolLM2-135M-Instruct before and after `REAL=1 bash demo.sh`).
With OMP_NUM_THREADS=1 on 2 CPU cores shared with other jobs one seed took:
rlhf 2-3.5 min, sde 2.5-5.5 min, sde_bigger 1 min, rulai 1-2 min, hc3 20-45 s, pretrain 12-30 s
(two runs), generation 12 s; all of them, three seeds, about 25 minutes.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from llm_tuning.real_model import (
    GENERAL_QUESTIONS_FILE,
    GENERAL_REPLAY_FILE,
    HELD_OUT_ROWS,
    score_real_replies,
    write_real_eval_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "peft", "trl", "datasets")
DOCS_SEEDS = [0, 1, 2]  # the seeds of the figures in the docs


# --- running the docs' commands -----------------------------------------------------------------

def run_logged(command: Sequence[str], log_file: Path, reuse: bool, env: dict[str, str] | None = None) -> str:
    """Run a docs command from the repository root, its output teed into log_file; return the output.
    Its folder is emptied first: everything the command writes goes there. With reuse, an existing
    log stands for the run (to re-print tables without training again)."""
    if reuse and log_file.is_file():
        return log_file.read_text(encoding="utf-8")
    shutil.rmtree(log_file.parent, ignore_errors=True)
    log_file.parent.mkdir(parents=True)
    started = time.monotonic()
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    # shell scripts call `python`: make it this interpreter; scripts import this checkout's llm_tuning
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PATH": path, "PYTHONPATH": str(REPO_ROOT), **(env or {})})
    output = result.stdout
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed with exit code {result.returncode}:\n{output[-3000:]}")
    log_file.write_text(output, encoding="utf-8")
    print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return output


def python_command(script: str, *args: str) -> list[str]:
    return [sys.executable, script, *args]


# --- cells: mean ± spread over seeds --------------------------------------------------------------

def cell(values: Sequence[float], digits: int, signed: bool = False) -> str:
    """One table cell: the value of a single seed, or mean ± sample std over several."""
    sign = "+" if signed else ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def header_line(name: str, seeds: Sequence[int] | None) -> str:
    """The line above a table: the command that prints it, the seeds, the versions and the machine."""
    versions = ", ".join(f"{package} {importlib.metadata.version(package)}" for package in PACKAGES)
    if seeds is None:
        runs = "deterministic"
    elif name in REPEATED:
        runs = f"{len(seeds)} runs (mean ± sample std over the runs)"
    else:
        runs = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        runs += " (mean ± sample std over the seeds)" if len(seeds) > 1 else ""
        if list(seeds) != DOCS_SEEDS:
            name += f" --seeds {' '.join(map(str, seeds))}"
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    return f"`python scripts/reproduce_figures.py --only {name}`: {runs}; {versions}; {machine}"


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def rows_of_text_table(output: str, column: str) -> dict[str, tuple[list[float], str]]:
    """Parse a fixed-width table the scripts print (a name, numbers, then a quoted sample reply) whose
    header starts with `policy` and names column: {name: (numbers, reply)}. The last such table wins."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("policy") and column in line.split())
    rows = {}
    for line in lines[start + 1:]:
        match = re.match(r"^(\S+)((?:\s+-?\d+(?:\.\d+)?)+)\s+(['\"].*)$", line)
        if not match:
            break
        rows[match.group(1)] = ([float(x) for x in match.group(2).split()], match.group(3))
    return rows


# --- RLHF ------------------------------------------------------------------------------------------

RLHF_COLUMNS = [("reward", 2), ("KL", 2), ("style", 2), ("empty", 1), ("logp-margin", 2), ("DPO-margin", 2)]
GRPO_COLUMNS = [("pass@1", 2), ("sampled", 2), ("pass@8", 2), ("reward", 2), ("KL", 2), ("length", 2)]


def rlhf(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """`sh RLHF/rlhf.sh` once per seed: the reward-model accuracy, the policy table and the GRPO table."""
    outputs = {}
    for seed in seeds:
        out = work_dir / "rlhf" / f"seed{seed}"
        outputs[seed] = run_logged(["sh", "RLHF/rlhf.sh"], out / "log.txt", reuse,
                                   env={"SEED": str(seed), "OUT": str(out / "weights")})
    accuracy = [float(re.search(r"reward model held-out pairwise accuracy: ([\d.]+)", output).group(1))
                for output in outputs.values()]
    first = seeds[0]
    return "\n".join([
        f"reward model held-out pairwise accuracy: {cell(accuracy, 3)}", "",
        policy_table(outputs, "logp-margin", RLHF_COLUMNS, f"first reply (seed {first})"), "",
        "GRPO on 24 training prompts (sampled at temperature 0.7):", "",
        policy_table(outputs, "pass@1", GRPO_COLUMNS, f"first greedy reply (seed {first})"),
    ])


def policy_table(outputs: dict[int, str], column: str, columns: Sequence[tuple[str, int]], reply_header: str) -> str:
    """One of the per-policy tables the RLHF scripts print (the one naming `column`), each number the
    mean ± std over the seeds' outputs, with the first seed's sample reply."""
    tables = {seed: rows_of_text_table(output, column) for seed, output in outputs.items()}
    first = next(iter(tables))
    rows = [[name] + [cell([table[name][0][i] for table in tables.values()], digits)
                      for i, (_, digits) in enumerate(columns)] + [f"`{tables[first][name][1]}`"]
            for name in tables[first]]
    return markdown_table(["policy", *(c for c, _ in columns), reply_header], rows)


# --- SDE -------------------------------------------------------------------------------------------

SDE_DESIGNS = ["ES-SDE", "inst-last", "no-inst", "MI", "json", "natural", "numeric", "omit", "cot", "rcot"]
SDE_METRICS = [("sent. acc", "sentence_accuracy"), ("aspect acc", "mean_aspect_accuracy"), ("kappa", "kappa"),
               ("format err", "format_error_rate")]


SDE_GRID = ["--max_steps", "300", "--learning_rate", "5e-3", "--lora_dropout", "0", "--max_eval", "60"]
# SDE/README.md's bigger stand-in, the grid's flags with these on top (later flags win)
SDE_BIGGER = ["--tiny_hidden_size", "128", "--lora_rank", "32", "--max_steps", "600", "--learning_rate", "3e-3"]


def sde_table(seeds: Sequence[int], work_dir: Path, reuse: bool, designs: Sequence[str], flags: Sequence[str]) -> str:
    """SDE/run_sde.py once per seed: ID and OOD metrics per design."""
    results = {}
    for seed in seeds:
        out = work_dir / f"seed{seed}"
        run_logged(python_command("SDE/run_sde.py", "--designs", *designs, *flags, "--output_dir", str(out / "grid"),
                                  "--seed", str(seed)), out / "log.txt", reuse)
        results[seed] = {r["design"]: r["splits"] for r in
                         json.loads((out / "grid" / "results.json").read_text(encoding="utf-8"))}
    header = ["design"] + [f"{split} {label}" for split in ("ID", "OOD") for label, _ in SDE_METRICS]
    rows = [[design] + [cell([results[s][design][split][key] for s in seeds], 3)
                        for split in ("id", "ood") for _, key in SDE_METRICS] for design in designs]
    return markdown_table(header, rows)


def sde(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """SDE/README.md's offline grid of the ten presets."""
    return sde_table(seeds, work_dir / "sde", reuse, SDE_DESIGNS, SDE_GRID)


def sde_bigger(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """SDE/README.md's bigger stand-in (hidden 128, LoRA r=32, 600 steps) on ES-SDE alone."""
    return sde_table(seeds, work_dir / "sde_bigger", reuse, ["ES-SDE"], SDE_GRID + SDE_BIGGER)


# --- the projects ----------------------------------------------------------------------------------

RULAI_COLUMNS = [("hit rate (trained questions)", "train_hit_rate", 2, False),
                 ("hit rate (held-out paraphrases)", "held_out_hit_rate", 2, False),
                 ("control replies kept", "control_kept", 2, False),
                 ("control loss shift (nats/token)", "control_loss_shift", 3, True)]


def rulai(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """`python projects/RulaiGPT/run_rulai.py` once per seed."""
    results = {}
    for seed in seeds:
        out = work_dir / "rulai" / f"seed{seed}"
        run_logged(python_command("projects/RulaiGPT/run_rulai.py", "--output_dir", str(out / "run"),
                                  "--seed", str(seed)), out / "log.txt", reuse)
        results[seed] = {r["run"]: r for r in json.loads((out / "run" / "results.json").read_text(encoding="utf-8"))}
    runs = list(results[seeds[0]])
    rows = [[run] + [cell([results[s][run][key] for s in seeds], digits, signed) for _, key, digits, signed
                     in RULAI_COLUMNS] for run in runs]
    return markdown_table(["run", *(c for c, _, _, _ in RULAI_COLUMNS)], rows)


def hc3(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """`python projects/ChatBaichuan-HC3/run_hc3.py` once per seed: the converter's counts and the
    exact-match rate on the training answers."""
    outputs = {}
    for seed in seeds:
        out = work_dir / "hc3" / f"seed{seed}"
        outputs[seed] = run_logged(python_command("projects/ChatBaichuan-HC3/run_hc3.py", "--output_dir",
                                                  str(out / "run"), "--seed", str(seed)), out / "log.txt", reuse)
    counts = {re.search(r"^records .*$", o, re.M).group(0) for o in outputs.values()}
    exact = [re.search(r"reproduced exactly: ([\d.]+) of (\d+)", o) for o in outputs.values()]
    return "\n".join([*sorted(counts), f"training answers reproduced exactly: "
                      f"{cell([float(m.group(1)) for m in exact], 2)} of {exact[0].group(2)}"])


# --- pretrain --------------------------------------------------------------------------------------

SOURCES = ["zh_general", "zh_medical", "en_general"]
CORPUS = "data/tokenized_data/pretrain_corpus"


def printed_table(output: str, stop: str) -> str:
    """A fixed-width table a script printed: from its `source` header line up to the line starting
    with stop (progress bars and other lines around it left out)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("source"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(stop))
    return "\n".join(lines[start:end])


def make_corpus(work_dir: Path, reuse: bool) -> str:
    """pretrain/README.md step 1: the shards every later step reads."""
    shutil.rmtree(REPO_ROOT / CORPUS, ignore_errors=True)
    output = run_logged(python_command(
        "pretrain/compress_data.py", "--inputs", *(f"pretrain/data/{s}.jsonl" for s in SOURCES),
        "--output_dir", CORPUS, "--lines_per_shard", "200", "--heldout_lines", "40"),
        work_dir / "mixture" / "shards" / "log.txt", reuse)
    return printed_table(output, stop="wrote")


def mixture(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """pretrain/README.md steps 1 and 2: deterministic, so run once."""
    shards = make_corpus(work_dir, reuse)
    output = run_logged(python_command("pretrain/data_mixture.py", "--corpus_dir", CORPUS, "--mixture_weights",
                                       "zh_medical=3", "--total_draws", "20000", "--plot", f"{CORPUS}/mixture.png"),
                        work_dir / "mixture" / "table" / "log.txt", reuse)
    return shards + "\n\n" + printed_table(output, stop="saved")


def vocab(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """pretrain/README.md step 3a and 3b: deterministic, so run once; the token counts of the shipped
    samples before and after the merge, as merge_tokenizer.py prints them."""
    if not (REPO_ROOT / CORPUS / "manifest.json").is_file():
        make_corpus(work_dir, reuse=False)
    out = work_dir / "vocab"
    run_logged(python_command("pretrain/train_tokenizer.py", "--corpus_dir", CORPUS, "--vocab_size", "600",
                              "--output_dir", str(out / "train" / "zh_sp")), out / "train" / "log.txt", reuse)
    output = run_logged(python_command("pretrain/merge_tokenizer.py", "--base_tokenizer", "models/tiny-qwen2",
                                       "--sp_model", str(out / "train" / "zh_sp" / "tokenizer.model"), "--output_dir",
                                       str(out / "merge" / "tokenizer")), out / "merge" / "log.txt", reuse)
    counts = dict(re.findall(r"^(\w+)\.jsonl: (\d+ -> \d+ tokens \(ratio [\d.]+)", output, re.M))
    return markdown_table(["base tokenizer", "zh_general.jsonl tokens", "en_general.jsonl tokens"], [
        ["`models/tiny-qwen2` (byte-level BPE)", f"{counts['zh_general']})", f"{counts['en_general']})"]])


PRETRAIN_COLUMNS = [("eval_loss", "eval_loss", 3)] + [("perplexity", "eval_perplexity", 1)] + [
    (s, f"eval_perplexity_{s}", 1) for s in SOURCES]
PRETRAIN_COMMAND = [
    "pretrain/continue_pretraining.py", "--model_name_or_path", "models/tiny-qwen2", "--corpus_dir", CORPUS,
    "--mixture_weights", "zh_medical=3", "--max_steps", "60", "--block_size", "64",
    "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--lora_rank", "16", "--lora_dropout", "0",
    "--eval_on_start", "true", "--eval_strategy", "steps", "--eval_steps", "20", "--logging_steps", "10",
    "--save_steps", "30", "--save_total_limit", "2", "--report_to", "tensorboard"]
TOKEN_SHARES = re.compile(r"^token shares of the ([\d,]+) tokens trained on: (.*)$", re.M)


def token_shares_line(outputs: Sequence[str]) -> str:
    """`token shares of the N tokens trained on: zh_general 41.23% ± 3.78, …` over the runs."""
    matches = [TOKEN_SHARES.search(output) for output in outputs]
    shares = [dict((name, float(pct.rstrip("%"))) for name, pct in (part.split() for part in m.group(2).split(", ")))
              for m in matches]
    return f"token shares of the {matches[0].group(1)} tokens trained on: " + ", ".join(
        f"{name} {cell([s[name] for s in shares], 2)} %" for name in shares[0])


def pretrain(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """pretrain/README.md step 4 once per seed: held-out loss and perplexities at steps 0, 20, 40, 60;
    then the same command with --mixture_by tokens: its token mixture table and the shares it trained on."""
    if not (REPO_ROOT / CORPUS / "manifest.json").is_file():
        make_corpus(work_dir, reuse=False)
    logs, outputs, token_outputs = {}, [], []
    for seed in seeds:
        out = work_dir / "pretrain" / f"seed{seed}"
        outputs.append(run_logged(python_command(*PRETRAIN_COMMAND, "--output_dir", str(out / "run"),
                                                 "--seed", str(seed)), out / "log.txt", reuse))
        entries = [json.loads(line) for line in (out / "run" / "trainer_log.jsonl").read_text().splitlines()]
        logs[seed] = {e["step"]: e for e in entries if "eval_loss" in e}
        by_tokens = work_dir / "pretrain_tokens" / f"seed{seed}"
        token_outputs.append(run_logged(python_command(*PRETRAIN_COMMAND, "--mixture_by", "tokens", "--output_dir",
                                                       str(by_tokens / "run"), "--seed", str(seed)),
                                        by_tokens / "log.txt", reuse))
    steps = sorted(logs[seeds[0]])
    rows = [[str(step)] + [cell([logs[s][step][key] for s in seeds], digits) for _, key, digits in PRETRAIN_COLUMNS]
            for step in steps]
    return "\n".join([
        markdown_table(["step", *(c for c, _, _ in PRETRAIN_COLUMNS)], rows), "", token_shares_line(outputs), "",
        "with --mixture_by tokens:", "", printed_table(token_outputs[0], stop="held-out blocks"),
        token_shares_line(token_outputs)])


# --- a real model ----------------------------------------------------------------------------------

REAL_MODEL = "models/smollm2-135m-instruct"  # demo.sh's REAL=1 model
REAL_ADAPTER = "weights/demo_math_real"      # and the adapter it trains


def real(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """`REAL=1 bash demo.sh` once per seed (SmolLM2-135M-Instruct, LoRA on 96 rows of arithmetic and 24
    replayed general questions), then `eval.py generate` on 50 held-out arithmetic rows and 10 other
    general questions: the base model once (greedy, no seed), each seed's adapter; the training time
    and peak memory from its trainer_log.jsonl."""
    folder = work_dir / "real"
    eval_file = write_real_eval_file(folder / "eval.jsonl")

    def evaluate(model_flags: list[str], out: Path):
        run_logged(python_command("eval.py", "generate", *model_flags, "--data", str(eval_file), "--output",
                                  str(out / "replies.jsonl"), "--max_new_tokens", "32", "--batch_size", "60",
                                  "--progress", "false"), out / "log.txt", reuse)
        return score_real_replies(out / "replies.jsonl")

    tuned, runtime, memory = [], [], []
    for seed in seeds:
        out = folder / f"seed{seed}"
        run_logged(["bash", "demo.sh"], out / "demo" / "log.txt", reuse, env={"REAL": "1", "SEED": str(seed)})
        summary_file = out / "demo" / "trainer_log.jsonl"
        if not summary_file.is_file():  # this seed's run, before the next seed's replaces it
            shutil.copy2(REPO_ROOT / REAL_ADAPTER / "trainer_log.jsonl", summary_file)
        summary = [json.loads(line) for line in summary_file.read_text().splitlines()][-1]
        runtime.append(summary["train_runtime"])
        memory.append(summary["peak_memory_mib"])
        tuned.append(evaluate(["--adapter", REAL_ADAPTER], out / "eval"))
    base = evaluate(["--base", REAL_MODEL], folder / "base")
    general = f"general questions right (of {base.general_total})"
    return markdown_table(
        ["model", f"held-out exact match ({HELD_OUT_ROWS} rows)", general, "training time", "peak memory"],
        [["SmolLM2-135M-Instruct (Q4_1-rounded)", cell([base.exact_match], 2), str(base.general_right), "", ""],
         ["+ LoRA, `REAL=1 bash demo.sh`", cell([t.exact_match for t in tuned], 2),
          cell([float(t.general_right) for t in tuned], 1), f"{cell(runtime, 0)} s", f"{cell(memory, 0)} MiB"]],
    ) + (f"\n\nheld-out rows: the last {HELD_OUT_ROWS} of data/simple_math_4op.jsonl (the demo trains on its "
         f"first 96, with the 24 general questions of {GENERAL_REPLAY_FILE}); general questions: "
         f"{GENERAL_QUESTIONS_FILE} (none of them replayed), a reply is right when it names the answer")


# --- batched generation ----------------------------------------------------------------------------

def generation(seeds: Sequence[int], work_dir: Path, reuse: bool) -> str:
    """`python bench/bench_batched_generation.py` on one thread, once per seed slot: a timing, so the
    runs are repeats (the model is the same) and the spread is the machine's."""
    speeds = []
    for run in seeds:
        output = run_logged(python_command("bench/bench_batched_generation.py"),
                            work_dir / "generation" / f"run{run}" / "log.txt", reuse, env={"OMP_NUM_THREADS": "1"})
        sequential = float(re.search(r"one at a time:\s+([\d.]+) tokens/s", output).group(1))
        batched, speedup = re.search(r"one batch:\s+([\d.]+) tokens/s .*, ([\d.]+)x", output).groups()
        speeds.append((sequential, float(batched), float(speedup)))
    sequential, batched, speedup = zip(*speeds)
    return (f"one request at a time {cell(sequential, 0)} tokens/s, one batch {cell(batched, 0)} tokens/s "
            f"({cell(speedup, 1)}×)")


FIGURES: dict[str, Callable[[Sequence[int], Path, bool], str]] = {
    "rlhf": rlhf, "sde": sde, "rulai": rulai, "hc3": hc3, "pretrain": pretrain, "mixture": mixture,
    "generation": generation, "vocab": vocab, "sde_bigger": sde_bigger, "real": real,
}
DETERMINISTIC = {"mixture", "vocab"}
REPEATED = {"generation"}  # timings: the seeds only count the runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), default=list(FIGURES))
    parser.add_argument("--seeds", nargs="+", type=int, default=DOCS_SEEDS)
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "runs" / "figures")
    parser.add_argument("--reuse", action="store_true", help="read the logs of an earlier run instead of running")
    args = parser.parse_args(argv)
    for name in args.only:
        started = time.monotonic()
        table = FIGURES[name](args.seeds, args.work_dir.resolve(), args.reuse)
        seeds = None if name in DETERMINISTIC else args.seeds
        print(f"{header_line(name, seeds)}\n\n{table}\n", flush=True)
        print(f"({name}: {time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
