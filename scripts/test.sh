#!/usr/bin/env bash
# Install everything the tests need into .venv (created if missing) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh test
# Printed however the run ends (the exit status is unchanged): the venv cannot outlive this script's shell.
trap 'echo; echo "Tests ran in .venv/. To use cmkd, pytest or the examples in this shell, run: source .venv/bin/activate"' EXIT
bash scripts/install_torchsort.sh
ruff check .
# pytest exits 5 when it collects no test: that is a failure here, as is any other non-zero code.
python -m pytest -q "$@"
