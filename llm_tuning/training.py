"""What every recipe shares around `transformers.Trainer`: arguments, LoRA wiring, callbacks, saving."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TrainerCallback, TrainingArguments

from .cli import ChecksFlags, UserError, checked_flags, exit_with_usage_error

TRAINER_LOG_FILE = "trainer_log.jsonl"
LOSS_PLOT_FILE = "loss.png"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model (hub id or path). Default: the one the dataset was tokenized with."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model's own code (ChatGLM, Baichuan, Qwen v1)."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16 for the base weights."})
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
    # length-sorted batches otherwise.
    batching: str = field(
        default="auto",
        metadata={"help": "auto, sorted (length-sorted batches), group_by_length (transformers' sampler), "
                          "random (dynamic padding) or packing. auto: packing with flash-attention on a GPU, "
                          "else sorted."},
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={"help": "Length-sorted batches of at most N padded tokens each instead of a fixed row count "
                          "(caps memory; --per_device_train_batch_size is then unused)."},
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
    means "the last checkpoint in --output_dir"."""
    parser = CheckedArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
            parsed = parser.parse_yaml_file(argv[0], allow_extra_keys=False)
        elif len(argv) == 1 and argv[0].endswith(".json"):
            parsed = parser.parse_json_file(argv[0], allow_extra_keys=False)
        else:
            parsed = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # the configs' own checks (TrainingArguments.__post_init__): flags that clash
        exit_with_usage_error(str(err).strip().splitlines()[0])
    checked_flags(*parsed)
    return parsed


class CheckedArgumentParser(ChecksFlags, HfArgumentParser):
    """HfArgumentParser whose flags are checked against `cli.FLAG_RULES`, mistakes in one line."""


def resume_argument(training_args: TrainingArguments) -> str | None:
    """What to hand to `Trainer.train(resume_from_checkpoint=...)`: a checkpoint path or None.

    `true` means the last checkpoint in --output_dir, and it is a mistake if there is none."""
    value = training_args.resume_from_checkpoint
    if value is None or value.strip().lower() in {"false", "0", "no", "none", ""}:
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
    """Append every log (step, loss, lr, …) to output_dir/trainer_log.jsonl; a resumed run appends."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(args.output_dir) / TRAINER_LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class LossPlotCallback(TrainerCallback):
    """Save output_dir/loss.png from the logged training (and eval) losses when training ends."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss(state.log_history, Path(args.output_dir) / LOSS_PLOT_FILE)


def plot_loss(log_history: list[dict], out_file: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {key: [(log["step"], log[key]) for log in log_history if key in log and "step" in log]
              for key in ("loss", "eval_loss")}
    if not series["loss"]:
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
