#!/usr/bin/env bash
# Set up (if needed) and run the demo: the simulated-oracle loop with live PCC.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."  # the real checkout, also when called through a link
./scripts/setup.sh
exec .venv/bin/fbloop demo "$@"
