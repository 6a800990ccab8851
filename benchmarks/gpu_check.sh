#!/usr/bin/env bash
# One prepared GPU check, sized for one call of the device tool (≤ 8 min on an H100/H200):
#   ../shared/tools/device-prep.sh            # here, once: wheels + MNIST + weights -> .device-carry
#   device run: carry [".device-carry"], timeout_s 590, command:
#     source .device-carry/prologue.sh && XFERGAN_COMMIT=<sha> bash benchmarks/gpu_check.sh
# Steps (each with its own time limit, all inside one deadline, GPU_CHECK_BUDGET_S, default 540 s):
#   1. benchmarks/bench.py --preset gpu: framework vs plain-loop ratios (classifier ResNet50 and
#      MobileNetV2 224 px bf16 channels_last batch 256, GAN step, MURA input from the cache)
#   2. experiment=paper_table3_full end to end (the paper's GAN: 3,000 passes over 320 images),
#      recorded with results/record.py as results/paper_table3_full/
#   3. the same GAN at batch 256 (same 3,000 passes in a quarter of the steps, learning rates x2),
#      with FID/KID/precision/recall from the same feature net: is the faster setting as good?
#   4. bench.py --cases gan_speed: the GAN step's options (batch, bf16, torch.compile, CUDA graphs)
#   5. experiment=synthetic_ablation_full for n in {8, 32} x seeds 0-2 (GANs fused per n), K jobs at once on the GPU
#      (GPU_CHECK_K, default 4; XFERGAN_JOBS_PER_GPU), the report at the end
#   6. bench.py --cases gan_fused: K = 1, 5, 25 GANs trained as one (task=gan_fused's model)
#      against the same K stepped one after another, aggregate GAN steps/s
#   7. experiment=unlabelled GPU-sized (issue 29: the CPU run stopped at 600 steps, its val
#      curves still rising): n=8, its fresh seeds 300-304, GPU_CHECK_UNL_STEPS classifier steps
#      per arm (default 3000) at batch 64, K jobs at once, with whatever time is left; the report
#      and its accuracy-vs-steps curves (report_curves.csv) at the end
# run in the order 1 4 6 2 3 5 7 (GPU_CHECK_STEPS). Step 4 includes gan.compile=graph (the whole
# step as one CUDA graph). Every GAN budget is sized from the last measured
# GAN speed (the newest-named benchmarks/results/*gpu*|*nvidia*.json; this run's step 1 once written) so
# that the step can end inside its cap; sized.log says what was asked, what ran and why.
# Everything it writes lands under benchmarks/results/ and results/ in the working tree, and is
# packed into $OUT/gpu_results.tgz (the device tool returns $OUT): unpack it in the checkout.
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps at toy sizes on the CPU (rehearsal)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
SMOKE=0 SUFFIX=""
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1 SUFFIX="_cpu_smoke"
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-540}
OUT="${OUT:-/tmp/xfergan-gpu-out}"
WORK="${GPU_CHECK_WORK:-/tmp/xfergan-gpu}"
mkdir -p "$OUT" "$WORK"
export XFERGAN_COMMIT="${XFERGAN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
DAY=$(date -u +%F)
TAG=$([[ $SMOKE == 1 ]] && echo cpu-smoke || echo gpu)
BENCH="benchmarks/results/${DAY}_${TAG}.json"
SPEED="benchmarks/results/${DAY}_${TAG}_gan-speed.json"
FUSED="benchmarks/results/${DAY}_${TAG}_gan-fused.json"
python -c "import xfergan" 2>/dev/null || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)"

sized() {  # sized <name> <wanted G+D steps> <cap s> <other work s> [jobs at once]: the steps the
  # last measured GAN speed fits in the cap (90% of it), never more than wanted; logged
  python - "$@" <<'PY' 2>>"$WORK/sized.log"
import glob, json, os, sys
name, want, cap, other = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
k = int(sys.argv[5]) if len(sys.argv) > 5 else 1
rate, src = None, None
files = glob.glob("benchmarks/results/*gpu*.json") + glob.glob("benchmarks/results/*nvidia*.json")
for f in sorted(set(files) - set(glob.glob("benchmarks/results/*cpu-smoke*"))):  # dated names: the last is newest
    try:
        rows = json.load(open(f)).get("results", [])
    except (OSError, ValueError):
        continue
    for r in rows:
        if r.get("case", "").startswith("GAN step") and r.get("ours"):
            rate, src = float(r["ours"]), f
if rate is None:
    steps, why = want, "no measured GAN speed: as asked"
else:  # k jobs at once: assume no speed-up from sharing (what is unmeasured is not counted)
    fit = int(0.9 * max(0.0, cap - other) * rate / k)
    steps = max(1, min(want, fit))
    why = f"{rate:.1f} steps/s ({src}), {k} job(s) at once, {cap:.0f} s cap, {other:.0f} s other work"
print(f"{name}: asked {want}, runs {steps} ({why})", file=sys.stderr)
print(steps)
PY
}

left() {  # seconds for the next step: its own cap, never past the deadline
  local cap=$1 rest=$((BUDGET - ($(date +%s) - T0)))
  ((rest < cap)) && cap=$rest
  ((cap < 5)) && cap=5
  echo "$cap"
}
run_logged() {  # run_logged <log> <cap s> command...: time-limited, output to the log
  local log=$1 cap=$2
  shift 2
  s=$(date +%s)
  timeout "$(left "$cap")" "$@" >"$log" 2>&1
  echo "exit $? after $(($(date +%s) - s)) s"
  grep -E "Error|error:" "$log" | tail -3
}
if [[ $SMOKE == 1 ]]; then
  BENCH_ARGS=(--preset cpu --backbones mobilenet_v2 --size 32 --batch 8 --steps 3 --mura-images 24 --repeats 1)
  SPEED_ARGS=(--preset cpu --steps 2 --repeats 1 --gan-variants eager_bs64,eager_bs256_bf16)
  FUSED_ARGS=(--preset cpu --steps 1 --repeats 1 --fused-k 1,2)
  RUN_ARGS=(trainer=cpu debug=smoke dataset.val_per_class=2)
  GAN256=(gan.steps=4)
  ABL_ARGS=(trainer=cpu debug=smoke)
  UNL_ARGS=(trainer=cpu debug=smoke seed=300,301)
else
  # these sizes took 125 s on the H200: step 2 of run 2 had 125 s left of its 250 s budget
  # (results/gpu_h200_2026-11-28/run2_gpu_check.log)
  BENCH_ARGS=(--preset gpu --repeats 1 --steps 20 --mura-images 1000)
  # gan.compile: CUDA graphs (reduce-overhead) is what a launch-bound step needs; it compiles
  # since spectral norm became a parametrization (the hook version failed at the backward:
  # benchmarks/results/2026-11-28_cpu-x2_gan-compile.json)
  SPEED_ARGS=(--preset gpu --repeats 1
    --gan-variants eager_bs64_bf16,step_bs64_bf16,graph_bs64_bf16)
  FUSED_ARGS=(--preset gpu --repeats 1 --steps 10 --fused-k 1,5,25)
  RUN_ARGS=()
  GAN256=(gan.steps=3750)  # 3,000 passes over 320 images at batch 256
  ABL_ARGS=()
  UNL_ARGS=("trainer.max_steps=${GPU_CHECK_UNL_STEPS:-3000}" dataset.batch_size=64)
fi

# a shorter check (e.g. what is left of a device budget): GPU_CHECK_STEPS picks steps and their
# order; GPU_CHECK_BENCH_ARGS, GPU_CHECK_SPEED_VARIANTS, GPU_CHECK_TABLE3_ARGS (extra overrides)
# and GPU_CHECK_TABLE3_NAME (its results/ folder) resize them
[[ -n "${GPU_CHECK_BENCH_ARGS:-}" ]] && read -ra BENCH_ARGS <<<"$GPU_CHECK_BENCH_ARGS"
[[ -n "${GPU_CHECK_SPEED_VARIANTS:-}" ]] && SPEED_ARGS+=(--gan-variants "$GPU_CHECK_SPEED_VARIANTS")
read -ra TABLE3_ARGS <<<"${GPU_CHECK_TABLE3_ARGS:-}"
TABLE3_NAME="${GPU_CHECK_TABLE3_NAME:-paper_table3_full}$SUFFIX"

step1() {
echo "== 1. framework vs plain loop ($(left 130) s) =="
timeout "$(left 130)" python benchmarks/bench.py "${BENCH_ARGS[@]}" --out "$BENCH" 2>&1 |
  grep -vE "Warning|warn\(|^\s*$" | tail -9
}

step2() {
echo "== 2. experiment=paper_table3_full end to end ($(left 320) s) =="
GAN_STEPS=()  # the paper's 15,000 steps unless the last measured speed says they cannot fit
[[ $SMOKE == 0 ]] && GAN_STEPS=("gan.steps=$(sized table3_gan 15000 "$(left 320)" 120)")
cmd=(python run.py experiment=paper_table3_full logger=csv
  "hydra.run.dir=$WORK/table3" "${RUN_ARGS[@]}" "${GAN_STEPS[@]}" "${TABLE3_ARGS[@]}")
run_logged "$WORK/table3.log" 320 "${cmd[@]}"
note="seed 0; one command end to end on one GPU (each stage's metrics in jobs/)"
grep -q '"status": "ok"' "$WORK/table3/metrics.json" 2>/dev/null ||
  note="PARTIAL: stopped (time limit or error, see metrics.json); finished stages in jobs/"
ls "$WORK"/table3/*/metrics.json >/dev/null 2>&1 && python results/record.py "$TABLE3_NAME" "$WORK/table3" \
  --command "${cmd[*]}" --commit "$XFERGAN_COMMIT" --wall-s $(($(date +%s) - s)) \
  --files table3.md table3.json table3.png metrics.json --glob --note "$note"
FEAT_CKPT=$(python - "$WORK/table3/metrics.json" 2>/dev/null <<'PY'
import json, pathlib, sys  # the feature net the pipeline trained: its last checkpoint
d = pathlib.Path(json.loads(pathlib.Path(sys.argv[1]).read_text())["feature_net/dir"])
print(json.loads((d / "metrics.json").read_text())["last_checkpoint"])
PY
)
}

step3() {
echo "== 3. the paper's GAN at batch 256, lr x2, the same passes ($(left 70) s) =="
cmd=(python run.py experiment=paper_table3_full task=gan logger=csv
  gan.batch_size=256 gan.lr_g=4e-4 gan.lr_d=4e-4 "${GAN256[@]}" "gan.feature_ckpt=${FEAT_CKPT:-}"
  "hydra.run.dir=$WORK/gan_bs256" "${RUN_ARGS[@]}")
run_logged "$WORK/gan_bs256.log" 70 "${cmd[@]}"
[[ -f "$WORK/gan_bs256/metrics.json" ]] && python results/record.py "gan_bs256$SUFFIX" "$WORK/gan_bs256" --command "${cmd[*]}" \
  --commit "$XFERGAN_COMMIT" --wall-s $(($(date +%s) - s)) --files metrics.json samples_final.png \
  --glob --note "the paper_table3_full GAN (seed 0) at batch 256 for the same 3,000 passes"
}

step4() {
echo "== 4. the GAN step's speed options ($(left 150) s) =="
timeout "$(left 150)" python benchmarks/bench.py --cases gan_speed "${SPEED_ARGS[@]}" --out "$SPEED" 2>&1 |
  grep -vE "Warning|warn\(|^\s*$" | tail -7
}

step6() {
echo "== 6. K GANs trained as one vs one after another ($(left 90) s) =="
timeout "$(left 90)" python benchmarks/bench.py --cases gan_fused "${FUSED_ARGS[@]}" --out "$FUSED" 2>&1 |
  grep -vE "Warning|warn\(|^\s*$" | tail -5
}

step5() {
K=${GPU_CHECK_K:-4}
echo "== 5. experiment=synthetic_ablation_full, n 8,32 x seeds 0-2, $K jobs at once ($(left 300) s) =="
ABL_STEPS=()
[[ $SMOKE == 0 ]] && ABL_STEPS=(gan.epochs=null "gan.steps=$(sized ablation_gan 15000 "$(left 300)" 150 "$K")")
cmd=(python run.py experiment=synthetic_ablation_full pipeline.fused_gans=true hydra/launcher=local_parallel logger=csv
  dataset.n_per_class=8,32 seed=0,1,2 "hydra.sweep.dir=$WORK/ablation_full" "${ABL_STEPS[@]}"
  "${ABL_ARGS[@]}")
XFERGAN_JOBS=$K XFERGAN_JOBS_PER_GPU=$K run_logged "$WORK/ablation_full.log" 300 "${cmd[@]}"
note="n 8,32 x seeds 0-2, $K jobs at once on one GPU; jobs without metrics.json did not finish"
[[ -d "$WORK/ablation_full" ]] && python results/record.py "synthetic_ablation_full_k$K$SUFFIX" \
  "$WORK/ablation_full" --command "XFERGAN_JOBS=$K XFERGAN_JOBS_PER_GPU=$K ${cmd[*]}" \
  --commit "$XFERGAN_COMMIT" --wall-s $(($(date +%s) - s)) \
  --files report.md report.json report.csv --glob --note "$note"
}

step7() {
K=${GPU_CHECK_K:-4}
echo "== 7. experiment=unlabelled GPU-sized, n=8, $K jobs at once ($(left 200) s) =="
cmd=(python run.py experiment=unlabelled hydra/launcher=local_parallel logger=csv
  dataset.n_per_class=8 pipeline.feature_net=false "hydra.sweep.dir=$WORK/unlabelled"
  "${UNL_ARGS[@]}")
XFERGAN_JOBS=$K XFERGAN_JOBS_PER_GPU=$K run_logged "$WORK/unlabelled.log" 200 "${cmd[@]}"
note="n=8, seeds 300-304 unless overridden, $K jobs at once on one GPU, no GAN-quality row (feature net off for time); jobs without metrics.json did not finish"
[[ -d "$WORK/unlabelled" ]] && python results/record.py "unlabelled_gpu$SUFFIX" "$WORK/unlabelled" \
  --command "XFERGAN_JOBS=$K XFERGAN_JOBS_PER_GPU=$K ${cmd[*]}" --commit "$XFERGAN_COMMIT" \
  --wall-s $(($(date +%s) - s)) --files report.md report.json report.csv report_curves.csv \
  --glob --note "$note"
}

# the GAN's speed options (one minute) before the long pipeline: on the H200 the eager GAN step
# ran 33.9 steps/s and paper_table3_full did not finish in 320 s (results/gpu_h200_2026-11-28)
for n in ${GPU_CHECK_STEPS:-1 4 6 2 3 5 7}; do "step$n"; done
cp "$WORK/sized.log" "$OUT/" 2>/dev/null

echo "== summary =="
python - "$WORK" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
for name in ("table3", "gan_bs256"):
    for f in sorted(w.glob(f"{name}/*/metrics.json")) + [w / name / "metrics.json"]:
        if f.exists():
            m = json.loads(f.read_text())
            keys = [k for k in ("test/acc", "gan/fid", "gan/kid", "gan/precision", "gan/recall",
                                "gan/steps") if isinstance(m.get(k), (int, float))]
            print(f"{str(f.parent.relative_to(w)):28s} {m.get('status')} wall {m.get('wall_s')} s  "
                  + "  ".join(f"{k}={m[k]:.4g}" for k in keys))
for d in sorted(w.glob("*/gan")) + sorted(w.glob("gan_*")):  # how far a stopped GAN got
    grids = sorted((d / "samples").glob("step_*.png"))
    if grids:
        print(f"{str(d.relative_to(w)):28s} last sample grid at step {int(grids[-1].stem[5:])}")
t = w / "table3" / "table3.md"
print(t.read_text() if t.exists() else "no table3.md")
PY
tar czf "$OUT/gpu_results.tgz" benchmarks/results/*"_${TAG}"*.json "results/$TABLE3_NAME" \
  "results/gan_bs256$SUFFIX" results/synthetic_ablation_full_k*"$SUFFIX" "results/unlabelled_gpu$SUFFIX" 2>/dev/null
cp "$WORK"/*.log "$OUT"/ 2>/dev/null
echo "total $(($(date +%s) - T0)) s; results packed in $OUT/gpu_results.tgz"
