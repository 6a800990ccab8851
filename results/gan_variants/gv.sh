#!/usr/bin/env bash
# issue 22's CPU comparison, from a snapshot of the tree at the commit that adds gan_variants
cd /work/grid2
export DATA_DIR=/work/shared/data TORCH_HOME=/work/shared/weights WANDB_MODE=offline
export PYTHONPATH=/work/grid2 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XFERGAN_JOBS=2
t0=$(date +%s)
/work/main/.venv/bin/python run.py experiment=gan_variants hydra/launcher=local_parallel trainer.enable_progress_bar=false hydra.sweep.dir=/work/runs/gan_variants paths.cache_dir=/work/runs/cache resume=true >> /work/runs/gan_variants.log 2>&1
echo "gan_variants rc=$? wall_s=$(( $(date +%s) - t0 )) start=$t0" >> /work/runs/times.txt
