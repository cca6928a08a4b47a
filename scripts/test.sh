#!/usr/bin/env bash
# Install everything the tests need into .venv (created if missing) and run the test suite.
# Usage: bash scripts/test.sh [--fast] [pytest arguments]
#   --fast: skip the tests marked `slow` (subprocess CLI runs, the quickstart, DDP, the config sweep): the edit-test
#           loop; CI (.ci/run) runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
marker=()
if [ "${1:-}" = "--fast" ]; then
  shift
  marker=(-m "not slow")
fi
source scripts/_venv.sh test
# Printed however the run ends (the exit status is unchanged): the venv cannot outlive this script's shell.
trap 'echo; echo "Tests ran in .venv/. To use cmkd, pytest or the examples in this shell, run: source .venv/bin/activate"' EXIT
bash scripts/install_torchsort.sh
ruff check .
# pytest exits 5 when it collects no test (also when --fast deselects them all): that is a failure here, as is any
# other non-zero code.
python -m pytest -q ${marker[@]+"${marker[@]}"} "$@"
