#!/usr/bin/env bash
# Install the library into .venv (created if missing) and run the quickstart on the offline composed digits.
# Extra arguments go to cmkd-quickstart (e.g. --seeds 0 --epochs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh quickstart,wandb  # cmkd-quickstart (digits, figures, rich) and the W&B logger of the configs
cmkd-quickstart "$@"
echo
echo "The package is installed in .venv/. To use cmkd, cmkd-quickstart or the examples in this shell, run:"
echo "  source .venv/bin/activate"
