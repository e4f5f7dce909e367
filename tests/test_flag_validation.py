"""Every flag of every script is checked before anything runs: a bad value is one sentence naming
the flag and exit code 2, never a traceback and never a silently different run.

The cases come from the scripts themselves: each script's parser is captured, and every flag that
has a rule in `llm_tuning.cli.FLAG_RULES` is tried with each of that rule's bad values (in
process: only start-up cost, no model is ever loaded). A subprocess per script proves the same as
a user sees it."""

from __future__ import annotations

import argparse
import runpy
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llm_tuning.cli import FLAG_RULES, ChecksFlags
from tests.conftest import REPO_ROOT, run_script

SCRIPTS = sorted(
    [p for p in REPO_ROOT.glob("*.py") if p.name not in {"setup.py"}]
    + list(REPO_ROOT.glob("RLHF/*.py")) + list(REPO_ROOT.glob("pretrain/*.py"))
)
# Numeric flags where every value means something (no rule needed).
ANY_NUMBER = {"seed"}


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


def run_in_process(script: Path, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    monkeypatch.syspath_prepend(str(script.parent))
    runpy.run_path(str(script), run_name="__main__")


def script_parser(script: Path, monkeypatch) -> argparse.ArgumentParser | None:
    """The parser `script` builds when run (None if it takes no flags)."""
    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    with monkeypatch.context() as patch:
        patch.setattr(ChecksFlags, "parse_known_args", capture)
        try:
            run_in_process(script, [], patch)
        except _Captured as captured:
            return captured.parser
        except SystemExit:
            pass
    return None


def flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def required_argv(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for the required arguments: validation fails before any is used."""
    def value(action: argparse.Action) -> str:
        return str(action.choices[0]) if action.choices else "unused"

    argv = [value(a) for a in parser._actions if not a.option_strings and a.nargs in (None, 1)]
    required = [a for a in flag_actions(parser) if a.required]
    required += [group._group_actions[0] for group in parser._mutually_exclusive_groups if group.required]
    for action in required:
        argv += [action.option_strings[0], value(action)]
    return argv


def bad_cases(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """(flag, bad value, dest) for every flag of `parser` that has a rule."""
    return [(action.option_strings[0], bad, action.dest) for action in flag_actions(parser)
            if action.dest in FLAG_RULES for bad in FLAG_RULES[action.dest].bad_values]


def test_the_scripts_are_found():
    names = {str(p.relative_to(REPO_ROOT)) for p in SCRIPTS}
    assert {"tokenize_dataset_rows.py", "qwen_lora_tuning.py", "chat.py", "merge_lora.py", "eval.py",
            "web_demo.py", "api_server.py", "RLHF/dpo.py", "RLHF/ppo.py",
            "pretrain/continue_pretraining.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_numeric_flag_has_a_rule_and_every_rule_is_enforced(script, monkeypatch, capsys):
    parser = script_parser(script, monkeypatch)
    if parser is None:
        pytest.skip(f"{script.name} takes no flags")
    # a numeric flag with no rule is a flag nobody checks (TrainingArguments' own are left to it)
    # (a script's subclass of a TRL config only changes defaults: those fields stay TRL's)
    dataclasses_ = getattr(parser, "dataclass_types", ())
    theirs = {name for cls in dataclasses_ for base in cls.__mro__
              if base.__module__.startswith(("transformers", "trl"))
              for name in getattr(base, "__dataclass_fields__", ())}
    ours = {name for cls in dataclasses_ for name in cls.__dataclass_fields__} - theirs
    unchecked = [a.dest for a in flag_actions(parser)
                 if a.type in (int, float) and not a.choices and a.dest not in FLAG_RULES.keys() | ANY_NUMBER
                 and (not hasattr(parser, "dataclass_types") or a.dest in ours)]
    assert not unchecked, f"{script.name}: give these flags a rule in llm_tuning/cli.py FLAG_RULES: {unchecked}"

    cases = bad_cases(parser)
    assert cases or not any(a.type in (int, float) for a in flag_actions(parser))
    base = required_argv(parser)
    capsys.readouterr()
    for flag, bad, dest in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_in_process(script, [*base, f"{flag}={bad}"], monkeypatch)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert exit_info.value.code == 2, (script.name, flag, bad, err)
        assert "Traceback" not in err and len(errors) == 1, (script.name, flag, bad, err)
        assert flag in errors[0] or f"--{dest}" in errors[0], (script.name, flag, bad, errors[0])


# One script of each kind of parser, run as a user runs it (each costs a full start-up: torch,
# transformers; the in-process test above covers every script and every flag).
AS_A_USER = [
    (["tokenize_dataset_rows.py", "--model_checkpoint", "m", "--input_file", "d.jsonl", "--save_name", "s",
      "--max_samples", "-3"], "--max_samples"),
    (["qwen_lora_tuning.py", "--tokenized_dataset", "d", "--output_dir", "o", "--learning_rate", "-1"],
     "--learning_rate"),
    (["api_server.py", "--base", "m", "--max_queued_requests", "0"], "--max_queued_requests"),
    (["RLHF/dpo.py", "--model_name_or_path", "m", "--train_file", "t.jsonl", "--output_dir", "o", "--lora_rank", "0"],
     "--lora_rank"),
    (["pretrain/continue_pretraining.py", "--corpus_dir", "c", "--output_dir", "o", "--block_size", "-5"],
     "--block_size"),
]


def test_as_a_user_runs_them_a_bad_flag_is_one_line_and_exit_2():
    def run(case):
        argv, flag = case
        return flag, run_script(*argv, timeout=300)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run, AS_A_USER))
    for flag, result in results:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and len(errors) == 1 and flag in errors[0], result.stderr
        assert errors[0].startswith(f"error: {flag} must be "), errors[0]


# Scripts outside the folders above that take --trust_remote_code too (projects and SDE).
WITH_REMOTE_CODE = [*SCRIPTS, REPO_ROOT / "SDE" / "run_sde.py", *sorted(REPO_ROOT.glob("projects/*/run_*.py"))]


def test_trust_remote_code_takes_true_or_false_in_every_script(monkeypatch):
    checked = []
    for script in WITH_REMOTE_CODE:
        parser = script_parser(script, monkeypatch)
        if parser is None or "--trust_remote_code" not in parser._option_string_actions:
            continue
        for word, value in (("true", True), ("false", False)):
            parsed, _ = parser.parse_known_args([*required_argv(parser), "--trust_remote_code", word])
            assert parsed.trust_remote_code is value, (script.name, word, parsed.trust_remote_code)
        checked.append(str(script.relative_to(REPO_ROOT)))
    assert {"SDE/run_sde.py", "pretrain/extend_embeddings.py", "projects/RulaiGPT/run_rulai.py", "chat.py",
            "tokenize_dataset_rows.py", "RLHF/dpo.py"} <= set(checked), checked
