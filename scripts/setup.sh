#!/usr/bin/env bash
# Sets up faster-chatterbox in the current Python environment.
#   bash scripts/setup.sh          the package
#   bash scripts/setup.sh --test   the package, its test extras and the upstream parity oracle (in its own venv)
# Torch is installed first and then pinned: an unpinned install would pull GBs of CUDA wheels here.
# A machine that already has torch (for example a CUDA build) keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { $PY -m pip install -q --disable-pip-version-check "$@"; }

if ! $PY -c "import torch" 2>/dev/null; then
    pip_install "torch==${TORCH_VERSION:-2.13.0}"
fi
constraints=$(mktemp)
$PY -c "import torch; print('torch==' + torch.__version__)" > "$constraints"

if [ "${1:-}" = "--test" ]; then
    pip_install -c "$constraints" -e ".[test]"
    bash scripts/install-oracle.sh
    bash scripts/install-browser.sh  # Debian's chromium and its driver, for the web page test
else
    pip_install -c "$constraints" -e .
fi
