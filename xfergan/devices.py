"""K sweep jobs per GPU.

Parallel local launchers (joblib) start N jobs at once; Lightning would put every one of them on
GPU 0. Each job instead takes the first free seat among the visible GPUs -- K seats per GPU
(`XFERGAN_JOBS_PER_GPU`, default 1), an exclusive file lock per seat, held until the job ends --
and runs every stage on that device alone (`job_device`); when every seat is taken, jobs queue.
K > 1 shares a GPU between jobs: through CUDA MPS when an MPS daemon runs (its pipe directory
exists), by plain time-slicing otherwise; the log says which. Small GAN and classifier jobs use a
few percent of a large GPU each, so several at once raise the aggregate speed; the default stays
1 because K has not been measured on a GPU in this project. With no GPU nothing changes: jobs
run on the CPU. `CUDA_VISIBLE_DEVICES=2,3` gives a sweep a subset of the GPUs; lock files live
in XFERGAN_GPU_LOCKS (default: the temp dir), so two sweeps on one machine share the pool."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_lock_dir() -> Path:
    return Path(
        os.environ.get("XFERGAN_GPU_LOCKS", Path(tempfile.gettempdir()) / "xfergan-gpu-locks")
    )


def jobs_per_gpu() -> int:
    """K, the jobs one GPU takes at once (XFERGAN_JOBS_PER_GPU, default 1)."""
    raw = os.environ.get("XFERGAN_JOBS_PER_GPU", "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        from xfergan.errors import UserError

        raise UserError(f"XFERGAN_JOBS_PER_GPU={raw!r}: use a whole number >= 1")
    return int(raw)


def sharing() -> str:
    """How K jobs share one GPU here: "mps" when a CUDA MPS daemon's pipe directory exists."""
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return "mps" if Path(pipe).is_dir() else "time-slicing"


@contextmanager
def device_slot(
    n_devices: int,
    lock_dir: Path | None = None,
    poll_s: float = 1.0,
    per_device: int | None = None,
) -> Iterator[int | None]:
    """Yields the index of a device with a free seat (`per_device` seats each, default
    jobs_per_gpu(); waits for one), or None without devices. Seats fill device by device in
    turn (device 0 seat 0, device 1 seat 0, ..., device 0 seat 1): jobs spread before they
    share."""
    if n_devices < 1:
        yield None
        return
    from filelock import FileLock, Timeout

    k = per_device or jobs_per_gpu()
    lock_dir = Path(lock_dir or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    physical = physical_ids(n_devices)
    seats = [(i, j) for j in range(k) for i in range(n_devices)]
    while True:
        for i, j in seats:
            lock = FileLock(  # keyed by the physical GPU: sweeps with other visible sets share
                str(
                    lock_dir
                    / (f"device{physical[i]}.lock" if j == 0 else f"device{physical[i]}-{j}.lock")
                ),
                thread_local=False,
                is_singleton=False,
            )
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield i
            finally:
                lock.release()
            return
        time.sleep(poll_s)


def job_device(cfg):
    """The torch.device every stage of this job computes on outside the Trainer (sampling,
    teachers, predictions, GAN metrics): its sweep slot's GPU when it has one
    (trainer.devices=[i]), the current GPU when the trainer may use one, else the CPU."""
    import torch
    from omegaconf import OmegaConf

    accel = str(cfg.trainer.accelerator)
    # a GPU when the job asks for one (accelerator=gpu) or may use one (auto) and has one
    if accel == "cpu" or (accel != "gpu" and not torch.cuda.is_available()):
        return torch.device("cpu")
    devices = cfg.trainer.devices
    devices = OmegaConf.to_container(devices) if OmegaConf.is_config(devices) else devices
    if isinstance(devices, (list, tuple)) and len(devices) == 1:
        return torch.device("cuda", int(devices[0]))  # the sweep slot's GPU
    if not torch.cuda.is_available():  # accelerator=gpu without one: the Trainer says so
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def physical_ids(n: int) -> list[str]:
    """The physical id of each visible device index (CUDA_VISIBLE_DEVICES maps them)."""
    vis = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [vis[i] if i < len(vis) else str(i) for i in range(n)]


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0
