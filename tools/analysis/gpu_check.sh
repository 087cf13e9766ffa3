#!/usr/bin/env bash
# DISTLoss on one CUDA GPU against the published formulation (time, kernel
# launches, peak memory) plus a few correctness checks on the GPU.
#
# Needs a Python with a CUDA build of torch; MMEngine and the rest of
# OpenMMLab are optional (tools/analysis/gpu_check.py loads mmdist's losses
# on their own without them). Runs in about a minute on an H100/H200.
#
# Usage (from the repository root):
#   bash tools/analysis/gpu_check.sh            # results in $OUT or /tmp
#   PYTHON=/path/to/python RUNS=50 bash tools/analysis/gpu_check.sh
set -euo pipefail

cd "$(dirname "$0")/../.."
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi
out_dir="${OUT:-/tmp}"
mkdir -p "$out_dir"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda",
    torch.version.cuda, "available", torch.cuda.is_available())'
"$PYTHON" tools/analysis/gpu_check.py --runs "${RUNS:-20}" \
    --json "$out_dir/gpu_check.json" 2>&1 | tee "$out_dir/gpu_check.txt"
