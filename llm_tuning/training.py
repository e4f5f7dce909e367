"""The arguments of a training run and their parser.

The dataclasses every recipe parses (`ModelArguments`, `DataArguments`, `FinetuneArguments`, next
to transformers' `TrainingArguments`), and `parse_args`: flags, or one YAML/JSON config file in
their place; flag values checked against `cli.FLAG_RULES` and clashes refused in one sentence;
an --output_dir holding an earlier run claimed (`checkpoints.claim_output_dir`); and
LLM_TUNING_MAX_STEPS, which shortens every run for the docs test.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from .checkpoints import OVERWRITE_FLAG, claim_output_dir
from .cli import ChecksFlags, checked_flags, exit_with_usage_error, parse_bool


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


CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def parse_args(*dataclass_types, argv: list[str] | None = None):
    """Parse recipe arguments with HfArgumentParser: every TrainingArguments flag works.

    A single `.yaml`/`.json` argument is a config file: a mapping of flag names to values, each
    value read as that flag's value on the command line would be. `--resume_from_checkpoint true`
    means "the last checkpoint in --output_dir". An --output_dir holding an earlier run's
    checkpoints is refused unless the run resumes or passes --overwrite_output_dir true."""
    parser = CheckedArgumentParser(dataclass_types)
    trains = any(issubclass(t, TrainingArguments) for t in dataclass_types)
    if trains:  # transformers 5 dropped TrainingArguments.overwrite_output_dir: the flag is ours
        parser.add_argument(f"--{OVERWRITE_FLAG}", type=parse_bool, nargs="?", const=True, default=False,
                            help="Start over in an --output_dir that holds an earlier run: its checkpoints, "
                                 "trainer_log.jsonl and loss.png are deleted first.")
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(CONFIG_FILE_SUFFIXES):
        use_config_file(parser, argv[0])
        argv = []
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # the configs' own checks (TrainingArguments.__post_init__): flags that clash
        exit_with_usage_error(config_error_sentence(err))
    overwrite = False
    if trains:  # HfArgumentParser returns flags of no dataclass as a last Namespace
        overwrite, parsed = getattr(parsed[-1], OVERWRITE_FLAG), parsed[:-1]
    checked_flags(*parsed)
    for arguments in parsed:
        if isinstance(arguments, TrainingArguments):
            claim_output_dir(arguments, overwrite)
    cap_training_steps(parsed)
    return tuple(parsed)


def use_config_file(parser: HfArgumentParser, path: str) -> None:
    """Make the file's values the parser's defaults. argparse converts a string default as it would
    the same text on the command line, so `learning_rate: 2e-4` (a string to YAML, which wants
    2.0e-4 for a float) is the number it is as a flag."""
    config = read_config_file(path)
    flags = {action.dest: action for action in parser._actions}
    unknown = sorted(set(config) - set(flags))
    if unknown:
        exit_with_usage_error(f"{path}: {', '.join(unknown)} {'is no flag' if len(unknown) == 1 else 'are no flags'} "
                              f"of this script (see --help)")
    for name in config:
        flags[name].required = False  # given by the file
    parser.set_defaults(**config)


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
