#!/usr/bin/env bash
# Set up flowcg in ./.venv: CPU torch (only if torch is not importable yet), then the package
# with its test extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    # the CPU build; installing torch explicitly first keeps dependencies from pulling a CUDA build
    .venv/bin/pip install -q --disable-pip-version-check "${FLOWCG_TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
