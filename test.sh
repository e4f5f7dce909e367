#!/usr/bin/env bash
# Set up .venv (CPU torch first, then the project with every extra) and run the whole test suite.
# Extra arguments go to pytest:  bash test.sh -k templates -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh all,dev
python -m pytest "$@"
