"""A run's --output_dir and the checkpoints in it: an --output_dir is required; one that holds an
earlier run's checkpoints is refused, or emptied with --overwrite_output_dir true; and
--resume_from_checkpoint true means its last checkpoint that was saved to the end."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from transformers import TrainingArguments

from .cli import UserError, exit_with_usage_error
from .run_logs import LOSS_PLOT_FILE, TRAINER_LOG_FILE

OVERWRITE_FLAG = "overwrite_output_dir"  # transformers 5 dropped it from TrainingArguments: the flag is ours


def require_output_dir(training_args: TrainingArguments) -> None:
    if not training_args.output_dir:
        raise UserError("pass --output_dir, the directory to save the adapter to (e.g. weights/my_run)")


def claim_output_dir(training_args: TrainingArguments, overwrite: bool) -> None:
    """Refuse an --output_dir that holds an earlier run's checkpoints unless this run resumes it or
    --overwrite_output_dir true starts over, in which case the earlier run's checkpoints, log and
    plot go first (on the main process), so this run's log is its own."""
    output_dir = Path(training_args.output_dir or "")
    earlier = (sorted(p for p in output_dir.glob("checkpoint-*") if p.is_dir())
               if training_args.output_dir and output_dir.is_dir() else [])
    if not earlier or resume_requested(training_args.resume_from_checkpoint):
        return
    if not overwrite:
        exit_with_usage_error(
            f"{output_dir} holds checkpoints of an earlier run ({', '.join(p.name for p in earlier[:3])}"
            f"{', …' if len(earlier) > 3 else ''}); pass --resume_from_checkpoint true to continue it, "
            f"--{OVERWRITE_FLAG} true to start over, or another --output_dir")
    if int(os.environ.get("RANK", "0")) == 0:  # before the Trainer starts torch.distributed
        for path in earlier:
            shutil.rmtree(path, ignore_errors=True)
        for name in (TRAINER_LOG_FILE, LOSS_PLOT_FILE):
            (output_dir / name).unlink(missing_ok=True)
        print(f"note: --{OVERWRITE_FLAG}: deleted the earlier run's {len(earlier)} checkpoint(s) in {output_dir}")


def resume_requested(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in {"false", "0", "no", "none", ""}


def resume_argument(training_args: TrainingArguments) -> str | None:
    """What to hand to `Trainer.train(resume_from_checkpoint=...)`: a checkpoint path or None.

    `true` means the last checkpoint in --output_dir, and it is a mistake if there is none."""
    value = training_args.resume_from_checkpoint
    if not resume_requested(value):
        return None
    if value.strip().lower() in {"true", "1", "yes"}:
        output_dir = Path(training_args.output_dir)
        last = last_complete_checkpoint(output_dir) if output_dir.is_dir() else None
        if last is None:
            raise UserError(f"--resume_from_checkpoint true, but {output_dir} has no checkpoint-* directory to resume from")
        return str(last)
    if not Path(value).is_dir():
        raise UserError(f"--resume_from_checkpoint {value}: no such checkpoint directory")
    if not checkpoint_is_complete(Path(value)):
        raise UserError(f"--resume_from_checkpoint {value}: the checkpoint is incomplete (the run stopped while "
                        f"saving it); resume from an earlier one")
    return value


def checkpoint_is_complete(checkpoint: Path) -> bool:
    """Trainer writes trainer_state.json last when it saves a checkpoint, so a checkpoint whose
    trainer_state.json is missing or cut short was interrupted while being saved."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest `checkpoint-N` in output_dir that was saved to the end; says which it skips."""
    steps = {int(p.name.split("-")[1]): p for p in output_dir.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[1].isdigit()}
    for step in sorted(steps, reverse=True):
        if checkpoint_is_complete(steps[step]):
            return steps[step]
        print(f"warning: skipping {steps[step]}: it is incomplete (the run stopped while saving it)", file=sys.stderr)
    return None
