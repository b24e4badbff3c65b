#!/usr/bin/env bash
# Set up (if needed) and run the default test suite; extra arguments go to pytest
# (e.g. `scripts/test.sh -m slow` for the long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
