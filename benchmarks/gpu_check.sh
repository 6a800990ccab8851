#!/usr/bin/env bash
# One prepared GPU check, sized for one call of the device tool (≤ 8 min on an H100/H200):
#   ../shared/tools/device-prep.sh            # here, once: wheels + MNIST + weights -> .device-carry
#   device run: carry [".device-carry"], command:
#     source .device-carry/prologue.sh && bash benchmarks/gpu_check.sh
# Prints: framework-vs-plain-loop ratios (classifier, GAN step, MURA input), the paper's GAN
# (3,000 epochs on 320 images) wall time, and the whole paper_table3 pipeline with its table.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
OUT="${OUT:-/tmp/xfergan-gpu}"
mkdir -p "$OUT"
pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

echo "== 1. overhead ratios (plain loop vs Trainer + our module + our datamodule) =="
timeout 200 python benchmarks/bench.py --preset gpu --out "$OUT/bench.json" | tail -8

echo "== 2. paper Table 3 at paper scale (GAN 3,000 epochs on 320 images, 3,200/class) =="
start=$(date +%s)
timeout 330 python run.py experiment=paper_table3_full trainer=gpu logger=csv \
  trainer.enable_progress_bar=false hydra.run.dir="$OUT/table3" 2>&1 | grep -E "error|Error" | tail -5
echo "pipeline wall: $(( $(date +%s) - start )) s"
python - "$OUT/table3" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
for stage in ("feature_net", "gan", "synthesize", "classify_real", "classify_synthetic", "classify_mixed"):
    f = d / stage / "metrics.json"
    if f.exists():
        m = json.loads(f.read_text())
        keys = [k for k in ("test/acc", "gan/fid", "gan/recall", "gan/steps") if k in m]
        print(f"{stage:20s} wall {m.get('wall_s')} s  " + "  ".join(f"{k}={m[k]:.4g}" for k in keys))
print((d / "table3.md").read_text() if (d / "table3.md").exists() else "no table3.md")
PY
