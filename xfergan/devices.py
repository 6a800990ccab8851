"""One GPU per sweep job.

Parallel local launchers (joblib) start N jobs at once; Lightning would put every one of them on
GPU 0. Each job instead takes the first free slot among the visible GPUs (an exclusive file lock
per GPU, held until the job ends) and trains on that device alone; when every GPU is taken, jobs
queue for one (on a one-GPU machine: one job at a time on it). With no GPU, nothing changes: jobs
run on the CPU. `CUDA_VISIBLE_DEVICES=2,3` gives a sweep a subset of the GPUs; lock files live in
XFERGAN_GPU_LOCKS (default: the temp dir), so two sweeps on one machine share the same pool."""

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


@contextmanager
def device_slot(
    n_devices: int, lock_dir: Path | None = None, poll_s: float = 1.0
) -> Iterator[int | None]:
    """Yields the index of a device no other job holds (waits for one), or None without devices."""
    if n_devices < 1:
        yield None
        return
    from filelock import FileLock, Timeout

    lock_dir = Path(lock_dir or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    physical = physical_ids(n_devices)
    while True:
        for i in range(n_devices):
            lock = FileLock(  # keyed by the physical GPU: sweeps with other visible sets share
                str(lock_dir / f"device{physical[i]}.lock"),
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
