#!/usr/bin/env bash
# Install everything the tests need into .venv (created if missing) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch/torchvision: these exact versions install from local files on the project's machines.
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[test]"
bash scripts/install_torchsort.sh
ruff check .
# pytest exits 5 when it collects no test: that is a failure here, as is any other non-zero code.
python -m pytest -q "$@"
