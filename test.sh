#!/usr/bin/env bash
# Set up .venv (CPU torch first, then the project with every extra) and run the tests.
#   bash test.sh           every test (the command CI runs)
#   bash test.sh --fast    the quick tier: pytest -m "not slow" (README "Test tiers")
# Extra arguments go to pytest:  bash test.sh -k templates -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh all,dev
ruff check . || exit 1   # the linter (pyproject.toml [tool.ruff]): a finding stops the run before any test
if [ "${1:-}" = "--fast" ]; then
    shift
    python -m pytest -m "not slow" "$@"
    exit
fi
# The web UI test drives Debian's Chromium; installing it needs root (CI runs as root).
bash scripts/install_browser.sh || echo "warning: without chromium, tests/test_web_demo.py fails" >&2
python -m pytest "$@"
