#!/usr/bin/env bash
# What a device run of benchmarks/gpu_check.sh needs in .device-carry/: the shared prep
# (../shared/tools/device-prep.sh: hydra-core, omegaconf, antlr4, wandb wheels, MNIST, the
# MobileNetV2 weights, prologue.sh) plus the wheels our configs need that the GPU image lacks:
# hydra-joblib-launcher (hydra/launcher=local_parallel: K jobs at once, gpu_check steps 5 and 7).
# The prologue installs every wheel in .device-carry/whl/. Run from the project root:
#   bash benchmarks/device_prep.sh [--no-wandb]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SHARED="${SHARED_DIR:-../shared}"
bash "$SHARED/tools/device-prep.sh" "$@"
PY="${PYTHON:-$(command -v python || command -v python3)}"
want="hydra_joblib_launcher-1.2.0-py3-none-any.whl"
if ! "$PY" -m pip download -q --no-deps --only-binary=:all: -d .device-carry/whl \
  "hydra-joblib-launcher==1.2.0" 2>/dev/null; then
  # no package index: rebuild the same pure-Python wheel from this environment's install
  "$PY" - .device-carry/whl <<'PY'
import sys, zipfile
from importlib.metadata import distribution
from pathlib import Path

d = distribution("hydra-joblib-launcher")
out = Path(sys.argv[1]) / f"hydra_joblib_launcher-{d.version}-py3-none-any.whl"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for f in d.files:
        if "__pycache__" in f.parts or f.suffix == ".pyc":
            continue
        z.write(f.locate(), str(f))
print("rebuilt", out)
PY
fi
ls .device-carry/whl/hydra_joblib_launcher-*.whl >/dev/null || {
  echo "device_prep: no $want (pip download failed and no local install to rebuild it from)" >&2
  exit 2
}
du -sh .device-carry
