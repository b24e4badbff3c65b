#!/usr/bin/env bash
# Set up (if needed) and run the default test suite; extra arguments go to pytest
# (e.g. `scripts/test.sh -m slow` for the long runs).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."  # the real checkout, also when called through a link
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
