"""What every recipe shares around `transformers.Trainer`: arguments, LoRA wiring, callbacks, saving."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments

from .cli import ChecksFlags, UserError, checked_flags, exit_with_usage_error, parse_bool

TRAINER_LOG_FILE = "trainer_log.jsonl"
LOSS_PLOT_FILE = "loss.png"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model (hub id or path). Default: the one the dataset was tokenized with."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model's own code (ChatGLM, Baichuan, Qwen v1)."})
    dtype: str = field(default="auto", metadata={"help": "auto (the checkpoint's dtype on a GPU, float32 on a CPU), float32, bfloat16 or float16 for the base weights."})
    quantization_bit: int | None = field(default=None, metadata={"help": "4 or 8: QLoRA over a bitsandbytes-quantized base."})
    rope_scaling: str | None = field(
        default=None, metadata={"help": "linear, dynamic or yarn: stretch RoPE to contexts longer than the model's."}
    )
    rope_factor: float = field(default=2.0, metadata={"help": "Context extension factor for --rope_scaling."})


@dataclass
class DataArguments:
    tokenized_dataset: str = field(
        metadata={"help": "Name under data/tokenized_data/ (or a path) written by tokenize_dataset_rows.py."}
    )
    # Batching (llm_tuning/batching.py): auto = packing with flash-attention varlen on a GPU,
    # length-sorted token-budget batches otherwise.
    batching: str = field(
        default="auto",
        metadata={"help": "auto, tokens (length-sorted batches of a token budget), sorted (length-sorted "
                          "batches of --per_device_train_batch_size rows), group_by_length (transformers' "
                          "sampler), random (dynamic padding) or packing. auto: packing with flash-attention "
                          "on a GPU, else tokens."},
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={"help": "Token budget of a length-sorted batch (padded positions). Default with "
                          "--batching auto/tokens: the smallest budget giving no more batches than "
                          "--per_device_train_batch_size rows would."},
    )
    packing: bool = field(
        default=False,
        metadata={"help": "Same as --batching packing: pack samples into full rows of --packing_max_length "
                          "tokens; samples never attend to each other."},
    )
    packing_max_length: int | None = field(
        default=None, metadata={"help": "Tokens per packed row. Default: the dataset's --max_seq_length."}
    )
    group_by_length: bool = field(
        default=False,
        metadata={"help": "Same as --batching group_by_length (= --train_sampling_strategy group_by_length)."},
    )
    # Eval during training (llm_tuning/eval_callback.py): generation and choice scores every N steps.
    generation_eval_file: str | None = field(
        default=None, metadata={"help": "q/a json(l) to answer every --generation_eval_steps: rouge, bleu-4, exact match."}
    )
    choice_eval_file: str | None = field(
        default=None, metadata={"help": "C-Eval-style json(l) scored every --generation_eval_steps: choice accuracy."}
    )
    generation_eval_steps: int = field(default=50, metadata={"help": "Steps between generation/choice evals."})
    generation_eval_max_new_tokens: int = field(default=64, metadata={"help": "Reply budget of generation eval."})


FINETUNING_TYPES = ("lora", "qlora", "adalora", "prompt_tuning", "prefix_tuning", "p_tuning", "freeze", "full")


@dataclass
class FinetuneArguments:
    finetuning_type: str = field(
        default="lora", metadata={"help": "What to train: " + ", ".join(FINETUNING_TYPES) + "."}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (AdaLoRA: the rank it starts from)."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1)
    lora_target: str | None = field(
        default=None, metadata={"help": "Comma-separated module names, or all-linear. Default: the family's."}
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised scaling alpha / sqrt(r)."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    adalora_target_rank: int = field(default=4, metadata={"help": "AdaLoRA: average rank left after pruning."})
    num_virtual_tokens: int = field(default=16, metadata={"help": "prompt/prefix/p-tuning: learned virtual tokens."})
    prompt_tuning_init_text: str | None = field(
        default=None, metadata={"help": "prompt_tuning: start the soft prompt from this text's embeddings."}
    )
    prefix_projection: bool = field(default=False, metadata={"help": "prefix_tuning: reparametrise with an MLP."})
    freeze_trainable_layers: int = field(default=2, metadata={"help": "freeze: train only the last N decoder layers."})
    freeze_extra_modules: str | None = field(
        default=None, metadata={"help": "freeze: also train these modules, e.g. embed_tokens,lm_head."}
    )


def parse_args(*dataclass_types, argv: list[str] | None = None):
    """Parse recipe arguments with HfArgumentParser: every TrainingArguments flag works.

    A single `.yaml`/`.json` argument is read as a config file. `--resume_from_checkpoint true`
    means "the last checkpoint in --output_dir". An --output_dir holding an earlier run's
    checkpoints is refused unless the run resumes or passes --overwrite_output_dir true."""
    parser = CheckedArgumentParser(dataclass_types)
    trains = any(issubclass(t, TrainingArguments) for t in dataclass_types)
    if trains:  # transformers 5 dropped TrainingArguments.overwrite_output_dir: the flag is ours
        parser.add_argument(f"--{OVERWRITE_FLAG}", type=parse_bool, nargs="?", const=True, default=False,
                            help="Start over in an --output_dir that holds an earlier run: its checkpoints, "
                                 "trainer_log.jsonl and loss.png are deleted first.")
    argv = sys.argv[1:] if argv is None else argv
    overwrite = False
    try:
        if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
            config = read_config_file(argv[0])
            overwrite = parse_bool(config.pop(OVERWRITE_FLAG, False))
            parsed = parser.parse_dict(config, allow_extra_keys=False)
        else:
            parsed = parser.parse_args_into_dataclasses(args=argv)
            if trains:  # HfArgumentParser returns flags of no dataclass as a last Namespace
                overwrite, parsed = getattr(parsed[-1], OVERWRITE_FLAG), parsed[:-1]
    except ValueError as err:  # the configs' own checks (TrainingArguments.__post_init__): flags that clash
        exit_with_usage_error(config_error_sentence(err))
    checked_flags(*parsed)
    for arguments in parsed:
        if isinstance(arguments, TrainingArguments):
            claim_output_dir(arguments, overwrite)
    cap_training_steps(parsed)
    return tuple(parsed)


MAX_STEPS_ENV = "LLM_TUNING_MAX_STEPS"


def cap_training_steps(parsed) -> None:
    """LLM_TUNING_MAX_STEPS=N stops every run after N optimizer steps (PPO: N iterations) and logs each step,
    so a documented command can be tried in seconds (tests/test_docs.py runs every command of the docs so)."""
    limit = os.environ.get(MAX_STEPS_ENV, "").strip()
    if not limit:
        return
    if not limit.isdigit() or int(limit) < 1:
        exit_with_usage_error(f"{MAX_STEPS_ENV} must be a positive whole number of steps, not {limit!r}")
    steps = int(limit)
    for arguments in parsed:
        if isinstance(arguments, TrainingArguments):
            if arguments.max_steps <= 0 or arguments.max_steps > steps:
                arguments.max_steps = steps
            arguments.logging_steps = 1
            print(f"{MAX_STEPS_ENV}={steps}: training stops after {arguments.max_steps} step(s), "
                  f"logging each", flush=True)
        elif hasattr(arguments, "num_iterations"):
            arguments.num_iterations = min(arguments.num_iterations, steps)
            print(f"{MAX_STEPS_ENV}={steps}: training stops after {arguments.num_iterations} iteration(s)",
                  flush=True)


OVERWRITE_FLAG = "overwrite_output_dir"


def read_config_file(path: str) -> dict:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        exit_with_usage_error(f"cannot read the config file {path}: {err.strerror}")
    try:
        config = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        exit_with_usage_error(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                              f"{str(err).strip().splitlines()[0]}")
    if not isinstance(config, dict):
        exit_with_usage_error(f"{path} must hold a mapping of flag names to values")
    return config


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


# TrainingArguments refuses bf16 without a device for it in words that do not say what to pass.
_NO_BF16_DEVICE = "doesn't support bf16"
NO_BF16_DEVICE_HINT = ("--bf16 true needs a GPU (or TPU) with bf16 support and none is found: drop --bf16 "
                       "(or pass --bf16 false) to train in float32, or add --use_cpu true to train in bf16 on the CPU")


def config_error_sentence(err: ValueError) -> str:
    """A clash TrainingArguments found, as one sentence that says what to pass instead."""
    message = str(err).strip()
    if _NO_BF16_DEVICE in message:
        return NO_BF16_DEVICE_HINT
    return message.splitlines()[0]


class CheckedArgumentParser(ChecksFlags, HfArgumentParser):
    """HfArgumentParser whose flags are checked against `cli.FLAG_RULES`, mistakes in one line."""


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


def resolve_dataset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    return Path("data/tokenized_data") / name_or_path


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


def peak_memory_mib() -> float:
    """Peak memory of this process so far: CUDA's peak allocation on a GPU, else the peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
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
                     if key.startswith("eval_") and key not in {"eval_loss", "eval_runtime"} and "per_second" not in key})
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


def check_template_allowed(template: str, allowed: set[str], dataset_path: Path, recipe: str) -> None:
    """A registry template must be one of the recipe's; the tokenizer's own ("native") fits every recipe."""
    if template != "native" and template not in allowed:
        raise UserError(
            f"{dataset_path} was tokenized with the {template!r} template, but {recipe} trains "
            f"{' / '.join(sorted(allowed))}; tokenize again with --template {sorted(allowed)[0]}"
        )


def require_output_dir(training_args: TrainingArguments) -> None:
    if not training_args.output_dir:
        raise UserError("pass --output_dir, the directory to save the adapter to (e.g. weights/my_run)")
