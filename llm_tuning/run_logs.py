"""What every training run writes beside its weights as it trains: `trainer_log.jsonl` (each log
line as it is logged) and `loss.png` (the logged losses and eval scores, when training ends).
Recipes, RLHF stages and continued pretraining all attach `run_log_callbacks()`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

TRAINER_LOG_FILE = "trainer_log.jsonl"
LOSS_PLOT_FILE = "loss.png"


class TrainerLogCallback(TrainerCallback):
    """Append every log (step, loss, lr, …) to output_dir/trainer_log.jsonl; a resumed run appends,
    a run from step 0 starts the file afresh."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step == 0:
            (Path(args.output_dir) / TRAINER_LOG_FILE).unlink(missing_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            if "train_runtime" in logs:  # the run's summary: what it cost, beside how long it took
                logs = {**logs, "peak_memory_mib": round(peak_memory_mib())}
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(args.output_dir) / TRAINER_LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def peak_memory_mib(device: torch.device | None = None) -> float:
    """Peak memory of this process: CUDA's peak allocation (since the last reset) on `device`, or on the
    current GPU when there is one and no device is named; else the peak resident set so far."""
    on_gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_gpu:
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class LossPlotCallback(TrainerCallback):
    """Save output_dir/loss.png from the logged training and/or eval losses when training ends,
    or say in one line why there is nothing to plot."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and plot_loss(state.log_history, Path(args.output_dir) / LOSS_PLOT_FILE) is None:
            print(f"note: no {LOSS_PLOT_FILE} written: {no_loss_logged_reason(args, state)}")


def run_log_callbacks() -> list[TrainerCallback]:
    """What every training run writes beside its weights: trainer_log.jsonl as it logs, loss.png at the end."""
    return [TrainerLogCallback(), LossPlotCallback()]


def no_loss_logged_reason(args: TrainingArguments, state) -> str:
    """Why a run ended without logging a loss, with the flag that would log one."""
    steps, every = state.global_step, state.logging_steps
    strategy = getattr(args.logging_strategy, "value", args.logging_strategy)
    if strategy != "steps":
        return f"no loss was logged with --logging_strategy {strategy}; pass --logging_strategy steps to get one"
    return (f"training ran {steps} step(s) and a loss is logged every {every} (--logging_steps); "
            f"pass --logging_steps {max(1, steps // 10)} (or an --eval_strategy) to get one")


def plot_loss(log_history: list[dict], out_file: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {key: [(log["step"], log[key]) for log in log_history if key in log and "step" in log]
              for key in ("loss", "eval_loss")}
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, points in series.items():
        if points:
            ax.plot(*zip(*points), label=key, marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    # Scores from eval during training (llm_tuning/eval_callback.py), on a right-hand axis.
    scores = sorted({key for log in log_history for key in log
                     if key.startswith("eval_") and key not in {"eval_loss", "eval_runtime"}
                     and "per_second" not in key})
    if scores:
        right = ax.twinx()
        for key in scores:
            points = [(log["step"], log[key]) for log in log_history if key in log and "step" in log]
            right.plot(*zip(*points), label=key.removeprefix("eval_"), linestyle="--", marker=".")
        right.set_ylabel("eval score")
        right.legend(loc="center right", fontsize="small")
    ax.grid(alpha=0.3)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_file
