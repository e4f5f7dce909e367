#!/usr/bin/env bash
# Set up .venv (CPU torch first, then the project with every extra) and run the tests.
#   bash test.sh           every test (the command CI runs)
#   bash test.sh --fast    the quick tier: pytest -m "not slow" (README "Test tiers")
# Extra arguments go to pytest:  bash test.sh -k templates -x;  bash test.sh -n 0 runs every test in one process.
# The test files run in parallel, one worker per core (at most 4), a file's tests on one worker: they
# share its trained fixtures. tests/conftest.py gives each worker its share of the threads, starts
# the longest files first, and runs the scripts the tests start in a warm python (tests/prefork.py;
# LLM_TUNING_PREFORK=0 starts each one fresh).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh all,dev
ruff check .   # the linter (pyproject.toml [tool.ruff]): a finding stops the run (set -e) before any test
PARALLEL=(--numprocesses auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder)
if [ "${1:-}" = "--fast" ]; then
    shift
    python -m pytest "${PARALLEL[@]}" -m "not slow" "$@"
    exit
fi
# The web UI test drives Debian's Chromium; installing it needs root (CI runs as root).
bash scripts/install_browser.sh || echo "warning: without chromium, tests/test_web_demo.py fails" >&2
python -m pytest "${PARALLEL[@]}" "$@"
