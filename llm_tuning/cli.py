"""User-facing errors: one clear sentence and exit code 2, never a traceback for a user mistake."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

USER_ERROR_EXIT_CODE = 2

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (bad path, bad record, wrong flag). The message says how."""


def exits_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a script's entry point: a `UserError` prints `error: <message>` and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapper


def parse_bool(value: str | bool) -> bool:
    """Parse true/false flags the way users type them (fixes argparse's `type=bool` trap)."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes", "y", "on"}:
        return True
    if lowered in {"false", "0", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# --- Flag rules: declared once by flag name, checked for every script right after parsing ---------


@dataclass(frozen=True)
class Rule:
    """What a flag's value must be: `holds(value)` is the test, `must` finishes "--flag must be …",
    and `bad_values` are values that break it (the tests try each on every flag with this rule)."""

    holds: Callable[[Any], bool]
    must: str
    bad_values: tuple[str, ...]


POSITIVE = Rule(lambda v: v > 0, "positive", ("0", "-3"))
NON_NEGATIVE = Rule(lambda v: v >= 0, "zero or more", ("-1",))
FRACTION = Rule(lambda v: 0 <= v <= 1, "between 0 and 1", ("-0.1", "1.5"))
OPEN_FRACTION = Rule(lambda v: 0 < v < 1, "between 0 and 1 (both excluded)", ("0", "1"))
SHARE = Rule(lambda v: 0 < v <= 1, "above 0 and at most 1", ("0", "1.5"))
DROPOUT = Rule(lambda v: 0 <= v < 1, "at least 0 and below 1", ("-0.1", "1"))
POSITIVE_OR_MINUS_ONE = Rule(lambda v: v == -1 or v > 0, "positive (or -1: no limit)", ("0", "-2"))
PORT = Rule(lambda v: 0 <= v <= 65535, "a port number from 0 to 65535", ("-1", "70000"))


def one_of(*choices) -> Rule:
    bad = "3" if all(isinstance(c, int) for c in choices) else "bogus"
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(str, choices)), (bad,))


# One name means one thing in every script, so each flag's rule is declared here once; a script
# (or a dataclass field) with a flag of this name gets it checked by `checked_flags`.
FLAG_RULES: dict[str, Rule] = {
    # counts and lengths
    **dict.fromkeys((
        "max_samples", "max_seq_length", "num_proc", "max_new_tokens", "max_context_tokens", "max_model_len",
        "max_batch_size", "default_max_tokens", "max_queued_requests", "max_request_bytes", "tensor_parallel_size",
        "max_lora_rank", "batch_size", "eval_batch_size", "max_eval", "max_train", "max_texts", "lora_rank",
        "adalora_target_rank", "num_virtual_tokens", "freeze_trainable_layers", "freeze_layers", "packing_max_length",
        "generation_eval_steps", "generation_eval_max_new_tokens", "block_size", "texts_per_batch", "max_eval_blocks",
        "lines_per_shard", "vocab_size", "seq_len", "num_layers", "hidden_size", "tiny_layers", "tiny_hidden_size",
        "total_draws", "num_iterations", "mini_batch_size", "ppo_epochs", "max_prompt_length", "max_length",
        "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
        "num_train_epochs", "logging_steps", "save_steps", "eval_steps", "save_total_limit", "num_generations",
        "max_completion_length", "level", "min_answer_chars", "max_tokens_per_batch", "eval_samples",
    ), POSITIVE),
    "max_steps": POSITIVE_OR_MINUS_ONE,
    "heldout_lines": NON_NEGATIVE,
    "dataloader_num_workers": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE,
    # rates, scales and penalties
    "learning_rate": POSITIVE,
    "lora_alpha": POSITIVE,
    "rope_factor": POSITIVE,
    "repetition_penalty": POSITIVE,
    "shutdown_grace_s": NON_NEGATIVE,
    "temperature": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
    "kl_coef": NON_NEGATIVE,
    "beta": NON_NEGATIVE,
    "cliprange": POSITIVE,
    "cliprange_value": POSITIVE,
    "vf_coef": NON_NEGATIVE,
    "missing_eos_penalty": NON_NEGATIVE,
    "alpha": NON_NEGATIVE,
    "top_p": SHARE,
    "gamma": FRACTION,
    "lam": FRACTION,
    "warmup_ratio": FRACTION,
    "test_ratio": OPEN_FRACTION,
    "character_coverage": SHARE,
    "gpu_memory_utilization": SHARE,
    "lora_dropout": DROPOUT,
    "port": PORT,
    # choices
    "dtype": one_of("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"),
    "quantization_bit": one_of(4, 8),
}


def flag_problem(values: dict[str, Any], rules: dict[str, Rule] = FLAG_RULES) -> str | None:
    """The first flag in `values` whose value breaks its rule, as one sentence; None if all hold.
    Unset optional flags (None) are not checked; a list flag is checked element by element."""
    for name, value in values.items():
        rule = rules.get(name)
        if rule is None or value is None or isinstance(value, bool):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            try:
                holds = rule.holds(item)
            except TypeError:  # a value of another kind than the rule's (a string where a number goes)
                holds = False
            if not holds:
                return f"--{name} must be {rule.must}, got {item!r}"
    return None


def exit_with_usage_error(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


def checked_flags(*parsed: Any, rules: dict[str, Rule] = FLAG_RULES):
    """Check parsed arguments (argparse Namespaces or argument dataclasses, e.g. read from a YAML
    config) against `rules` before anything runs: a broken rule prints `error: --flag must be …,
    got …` and exits with code 2. Returns what it was given (one object, or the tuple)."""
    for arguments in parsed:
        problem = flag_problem(vars(arguments), rules)
        if problem:
            exit_with_usage_error(problem)
    return parsed[0] if len(parsed) == 1 else parsed


class ChecksFlags:
    """Mixin for an argparse parser: every parse checks FLAG_RULES, and every mistake (a rule, an
    unknown flag, a bad choice) is one line `error: …` with exit code 2, not argparse's usage dump
    (hundreds of lines for TrainingArguments)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        problem = flag_problem(vars(namespace))
        if problem:
            self.error(problem)
        return namespace, extras

    def error(self, message: str):
        exit_with_usage_error(f"{message} (see --help)")


class ArgumentParser(ChecksFlags, argparse.ArgumentParser):
    """The scripts' argparse parser: use it in place of `argparse.ArgumentParser` and every flag
    named in FLAG_RULES is checked before the script does anything."""
