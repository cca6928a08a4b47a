#!/usr/bin/env bash
# Build torchsort's CPU kernel into the active Python environment.
#
# torchsort 0.1.10 ships as source only. It compiles a CUDA kernel whenever `nvcc` is on PATH; on machines
# with an nvcc but no CUDA libraries (these development and CI machines) that build fails, so we hide nvcc
# from PATH for the build. --no-build-isolation makes the build see the torch already installed.
set -euo pipefail
PY=${PYTHON:-python}
if "$PY" -c "import torchsort" 2>/dev/null; then
  echo "torchsort already installed"
  exit 0
fi
clean_path=""
IFS=':' read -ra parts <<<"$PATH"
for d in "${parts[@]}"; do
  if [ -n "$d" ] && [ ! -x "$d/nvcc" ]; then clean_path="${clean_path:+$clean_path:}$d"; fi
done
PATH="$clean_path" "$PY" -m pip install --no-build-isolation "torchsort>=0.1.9"
"$PY" -c "import torch, torchsort; torchsort.soft_rank(torch.randn(2, 4)); print('torchsort CPU kernel OK')"
