# Sourced by quickstart.sh and test.sh: create .venv if missing, activate it, install torch and this package.
# Usage: source scripts/_venv.sh [EXTRA]   (EXTRA: an optional-dependencies group, e.g. "test")
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch/torchvision: these exact versions install from local files on the project's machines, and they are the
# versions the tests ran on; pyproject.toml claims wider bounds (torch>=2.3) that no test has run (docs/INSTALL.md).
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".${1:+[$1]}"
