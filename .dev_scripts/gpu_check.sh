#!/usr/bin/env bash
# The prepared GPU check, one command: DISTLoss against the published
# formulation (CUDA-event times, peak memory, kernel launches) on the shapes
# users train with; the teacher's fast form (teacher_precision: BatchNorm
# folded, channels_last, bf16/fp16 autocast; mmdist/distillers/fast_form.py)
# and autocast alone against fp32 on a ResNet-50 (time ratio, max logit
# difference, KL, top-1 agreement); and the loss's edge cases on the GPU.
# See .dev_scripts/gpu_check.py.
#
# Needs a python3 with a CUDA build of torch (2.4 or newer). Nothing from
# OpenMMLab and no network: with a wheel folder it installs the wheels in it
# (into a temporary folder, --no-index --no-deps) so that mmdist's losses
# register in MMEngine's registry; without one gpu_check.py loads the losses
# with a stub registry (the loss code is the same). Fill the folder, on a
# machine with network, for the GPU machine's Python (3.12 here) with:
#
#   python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl \
#       mmengine==0.10.7 addict==2.4.0 yapf==0.43.0 termcolor==3.3.0 \
#       platformdirs==4.14.8
#
# (`import mmengine.registry` also needs numpy, pyyaml, rich and packaging,
# which such machines have; mmengine's opencv and matplotlib are not
# imported by it.)
#
# Usage (from anywhere; results in $OUT, else /tmp/gpu_check):
#   bash .dev_scripts/gpu_check.sh [WHEEL_DIR] [gpu_check.py options]
#   bash .dev_scripts/gpu_check.sh .whl
#   bash .dev_scripts/gpu_check.sh --device cpu --runs 5   # CPU smoke run
#   bash .dev_scripts/gpu_check.sh --teacher-only --trained DIR
#       # trained teachers exported by .dev_scripts/trained_teacher_gpu.py
#       # (their outputs come back in $OUT for its 'evaluate')
# PYTHON picks the interpreter (default python3). Its run times are on
# docs/en/notes/benchmarks.md.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
out_dir="${OUT:-/tmp/gpu_check}"
mkdir -p "$out_dir"

if [[ $# -gt 0 && "$1" != -* ]]; then
    wheels="$1"
    shift
    if ! compgen -G "$wheels/*.whl" >/dev/null; then
        echo "gpu_check.sh: no wheels in '$wheels'" >&2
        exit 2
    fi
    site="$(mktemp -d /tmp/gpu_check_site.XXXXXX)"
    trap 'rm -rf "$site"' EXIT
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(ls "$wheels"/*.whl | wc -l) wheels from $wheels"
fi

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv ||
        true
fi
PYTHONUNBUFFERED=1 "$PYTHON" .dev_scripts/gpu_check.py \
    --json "$out_dir/gpu_check.json" "$@" 2>&1 |
    tee "$out_dir/gpu_check.txt"
