#!/usr/bin/env bash
# Device check on a CUDA machine: CUDA tests, every config on synthetic data (config precision and bf16-mixed),
# 2-GPU DDP when two GPUs exist, and the quick benchmark suite. Prints a pass/fail table and writes
# runs/gpu_check/gpu_check.json (and bench.json next to it), or where --out says. Designed to end within
# 8 minutes (--budget-s 450 by default). Extra arguments go to scripts/gpu_check.py, e.g.
#   bash scripts/gpu_check.sh --parts b --configs 'cifar100/*'
# Uses .venv when it exists (its torch must be a CUDA build), else the python on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then . .venv/bin/activate; fi
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible to torch " + torch.__version__)'
python scripts/gpu_check.py --device cuda "$@"
