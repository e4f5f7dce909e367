# Sourced by demo.sh and test.sh: make .venv and install the project into it, once.
#   source scripts/setup_env.sh [EXTRAS]     e.g. EXTRAS=all,dev
# The CPU build of torch goes in first (TORCH_SPEC): a plain `torch` requirement would pull a
# multi-GB CUDA build. On a GPU machine set TORCH_SPEC=torch to get the CUDA build instead.
# Any error stops the set-up. A sourcing script keeps its own `set -e` afterwards (demo.sh and
# test.sh stop at a failed step); a shell without it, such as your terminal, gets it back off.
case $- in *e*) caller_errexit=1 ;; *) caller_errexit= ;; esac
set -e
EXTRAS=${1:-}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
stamp=".venv/.llm_tuning-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $TORCH_SPEC $spec"
if ! grep -qxF "$want" "$stamp" 2>/dev/null; then
    echo "==> installing $TORCH_SPEC, then the project ($spec)"
    python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
    python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC" -e "$spec"
    echo "$want" >> "$stamp"
fi
export TOKENIZERS_PARALLELISM=false
[ -n "$caller_errexit" ] || set +e
unset caller_errexit
