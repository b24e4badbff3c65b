#!/usr/bin/env bash
# Build the package venvs (sae-lens, dictionary-learning; torch pinned to the CPU build) and write
# tests/fixtures/real with them: checkpoints the real packages wrote, and the atoms they decode.
#
#   scripts/make_real_checkpoints.sh [OUT]      (default: tests/fixtures/real)
#
# dictionary-learning pulls torchvision, whose import fails beside the CPU torch build
# ("operator torchvision::nms does not exist"); it is uninstalled (dictionary_learning never needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-tests/fixtures/real}"
PY="${PYTHON:-python3}"
if [ ! -x .venv-saelens/bin/python ]; then
    "$PY" -m venv .venv-saelens
    .venv-saelens/bin/pip install -q "sae-lens==6.54.12" "torch==2.13.0" -c constraints.txt
fi
if [ ! -x .venv-dictlearn/bin/python ]; then
    "$PY" -m venv .venv-dictlearn
    .venv-dictlearn/bin/pip install -q "dictionary-learning==0.1.0" "torch==2.13.0" -c constraints.txt
    .venv-dictlearn/bin/pip uninstall -y -q torchvision
fi
rm -rf "$OUT"
mkdir -p "$OUT"
.venv-saelens/bin/python scripts/make_real_checkpoints.py saelens "$OUT"
.venv-dictlearn/bin/python scripts/make_real_checkpoints.py dictlearn "$OUT"
find "$OUT" -name "__pycache__" -prune -exec rm -rf {} +
echo "wrote $(find "$OUT" -name expect.json | wc -l) checkpoints to $OUT ($(du -sb "$OUT" | cut -f1) bytes)"
