#!/usr/bin/env bash
# Set up (if needed) and run the default test suite; extra arguments go to pytest
# (e.g. `scripts/test.sh -m slow` for the long runs, `-n 0` for one process).
# The test files are spread over the machine's cores (pytest-xdist), a whole file to one worker: a file's
# tests may share a module fixture (a Streamlit server, a browser) and build on each other's answers.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."  # the real checkout, also when called through a link
./scripts/setup.sh
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
