#!/usr/bin/env bash
# Set up (or refresh) the mmdist virtual environment, idempotently.
#
# Usage: bash tools/misc/install_env.sh            (VENV=path to override .venv)
#
# - torch/torchvision are installed only when the venv has none, so a user who
#   installed their own CUDA build first keeps it.
# - mmcv 2.1.0 has no wheel for current torch: it is built from source once and
#   the wheel is kept in a wheelhouse keyed by the torch version it was built
#   against (pip's cache cannot tell builds for different torches apart).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
WHEELHOUSE=${MMDIST_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmdist/wheelhouse}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
MMCV_VERSION=2.1.0

step() { echo "==> [$(date +%H:%M:%S)] $*"; }
pip() { "$PY" -m pip --disable-pip-version-check "$@"; }

if [ ! -x "$PY" ]; then
  step "creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi

if "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  step "keeping installed $("$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
else
  step "installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pip install $TORCH_SPEC
fi

step "build tools (setuptools<81: mmcv and mmengine still import pkg_resources)"
pip install -q 'setuptools>=77,<81' wheel ninja

TORCH_KEY=$("$PY" -c 'import sys, torch; print(f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")')
MMCV_DIR=$WHEELHOUSE/$TORCH_KEY

mmcv_ok() {
  "$PY" - <<'PY' 2>/dev/null
import mmcv, torch
from mmcv.ops import nms
assert mmcv.__version__ == '2.1.0'
b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]])
nms(b, torch.tensor([0.9, 0.8]), 0.5)
PY
}

if mmcv_ok; then
  step "mmcv $MMCV_VERSION with ops already works with this torch"
else
  wheel=$(ls "$MMCV_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    step "building mmcv $MMCV_VERSION with compiled ops for $TORCH_KEY"
    echo "    This takes ten minutes or so the first time; the wheel is kept in $MMCV_DIR."
    src=$(mktemp -d)
    pip download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$src"
    tar -xzf "$src"/mmcv-"$MMCV_VERSION".tar.gz -C "$src"
    # torch >= 2.14 headers require C++20; mmcv's setup.py pins C++17/14.
    sed -i -e 's/-std=c++17/-std=c++20/g' -e 's/-std=c++14/-std=c++20/g' \
      "$src/mmcv-$MMCV_VERSION/setup.py"
    mkdir -p "$MMCV_DIR"
    (cd "$src/mmcv-$MMCV_VERSION" &&
      MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "$PY" -m pip --disable-pip-version-check wheel -v --no-build-isolation --no-deps . -w "$MMCV_DIR" 2>&1 |
      sed -u -n -E -e 's#^ *(\[[0-9]+/[0-9]+\]) .* -c (-c )?[^ ]*/([^/ ]+\.(cpp|cu)) .*#    \1 \3#p' \
        -e '/[Ee]rror|Created wheel/p' || true)
    rm -rf "$src"
    wheel=$(ls "$MMCV_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    [ -n "$wheel" ] || { echo "mmcv build failed (no wheel in $MMCV_DIR)" >&2; exit 1; }
  fi
  step "installing $wheel"
  pip install --no-deps --force-reinstall "$wheel"
  pip install -q -c "$ROOT/requirements/tested.txt" addict mmengine opencv-python packaging pillow pyyaml yapf
  mmcv_ok || { echo "mmcv $MMCV_VERSION from $wheel does not import with this torch" >&2; exit 1; }
fi

step "OpenMMLab packages, openmim, test, lint and docs tools"
# The ranges of requirements/*.txt, held at the tried releases by the
# constraints file requirements/tested.txt. openmim (mim.txt) pulls openxlab,
# some versions of which pin setuptools~=60.2: mim.txt's setuptools bounds in
# the same command keep it at >=77,<81 (torch and pkg_resources users need both).
REQ=$ROOT/requirements
pip install -q -c "$REQ/tested.txt" -r "$REQ/runtime.txt" -r "$REQ/mmdet.txt" \
  -r "$REQ/mmseg.txt" -r "$REQ/mmpretrain.txt" -r "$REQ/mim.txt" -r "$REQ/tests.txt" -r "$REQ/docs.txt"

step "mmdist (editable)"
pip install -q --no-deps --no-build-isolation -e "$ROOT"

"$PY" -c 'import torch, mmcv, mmengine, mmdet, mmseg, mmpretrain, mmdist; print("    ready:", "torch", torch.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__, "mmpretrain", mmpretrain.__version__, "mmdist", mmdist.__version__)'
step "done"
