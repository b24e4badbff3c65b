#!/usr/bin/env bash
# Set up (if needed) and run the demo: the simulated-oracle loop with live PCC.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/fbloop demo "$@"
