#!/usr/bin/env bash
# Install the library into .venv (created if missing) and run the quickstart on the offline composed digits.
# Extra arguments go to cmkd-quickstart (e.g. --seeds 0 --epochs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e .
cmkd-quickstart "$@"
