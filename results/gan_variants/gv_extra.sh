#!/usr/bin/env bash
# issue 22's goal asks >= 5 seeds at n=8: seeds 103 and 104, each its own one-job sweep nested in
# the grid's sweep dir (task=report there reads them with the rest), from the same snapshot
# $1: seed; starts when grid job $2 has finished (so two jobs run at a time, as in the grid)
seed=$1; after=$2
while [ ! -f /work/runs/gan_variants/$after/metrics.json ]; do sleep 30; done
cd /work/grid2
export DATA_DIR=/work/shared/data TORCH_HOME=/work/shared/weights WANDB_MODE=offline
export PYTHONPATH=/work/grid2 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XFERGAN_JOBS=1
t0=$(date +%s)
/work/main/.venv/bin/python run.py experiment=gan_variants hydra/launcher=local_parallel trainer.enable_progress_bar=false \
  hydra.sweep.dir=/work/runs/gan_variants/n8_seed$seed paths.cache_dir=/work/runs/cache resume=true \
  dataset.n_per_class=8 seed=$seed >> /work/runs/gan_variants_extra$seed.log 2>&1
echo "gan_variants n8 seed$seed rc=$? wall_s=$(( $(date +%s) - t0 )) start=$t0" >> /work/runs/times.txt
