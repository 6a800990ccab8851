"""One module per stage. `run_task(cfg)` is the plain function run.py (and tests) call with a
composed config: it seeds, dispatches on `task`, writes metrics.json, and always finishes W&B.

A failed job records `status: failed` and the error in its own metrics.json and error.txt; in a
multirun the other jobs go on, in a single run the process exits non-zero.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import traceback
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

from tasks import tracking
from tasks.common import is_global_zero, output_dir, write_metrics
from xfergan.devices import device_slot, visible_gpus
from xfergan.errors import SelectionError, UserError
from xfergan.io import atomic_write_text
from xfergan.schema import enum_name

log = logging.getLogger(__name__)

TASKS = {
    "classify": "tasks.classify",
    "gan": "tasks.gan",
    "synthesize": "tasks.synthesize",
    "pipeline": "tasks.pipeline",
    "inspect": "tasks.inspect",
    "report": "tasks.report",
    "evaluate": "tasks.evaluate",
    "pseudolabel": "tasks.pseudolabel",
    "dashboard": "tasks.dashboard",
    "predict": "tasks.predict",
}


def _pool_size(cfg: DictConfig) -> int:
    """GPUs to share out, one per job: only for jobs of a multirun asking for one device."""
    if not cfg.get("device_pool", True) or str(cfg.trainer.accelerator) not in (
        "auto",
        "gpu",
        "cuda",
    ):
        return 0
    if str(cfg.trainer.devices) not in ("1", "auto") or "ddp" in str(cfg.trainer.strategy):
        return 0
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.get().mode.name != "MULTIRUN":
            return 0
    except ValueError:
        return 0
    return visible_gpus()


CHOOSABLE = ("val/", "train/")  # what may pick a checkpoint, a threshold or a setting


def choosable(key: str) -> bool:
    """An allow-list, not a deny-prefix: a val/ or train/ number, and no part of its name a
    test one (val/x_test, train/test/acc are refused too)."""
    key = str(key)
    return key.startswith(CHOOSABLE) and not any(
        part.startswith("test") for part in key.replace("_", "/").split("/")
    )


def check_selection(cfg: DictConfig) -> None:
    """No test label in any choice: what picks a checkpoint, a threshold or a hyper-parameter
    (sweep.objective, checkpoint.monitor, every callback's monitor) is a val/ or train/ number."""
    checks = [
        ("sweep.objective", cfg.sweep.objective),
        ("checkpoint.monitor", cfg.checkpoint.monitor),
    ]
    for name, cb in (cfg.get("callbacks") or {}).items():
        if cb and cb.get("monitor"):  # early stopping, checkpoints, ...
            checks.append((f"callbacks.{name}.monitor", cb.monitor))
    for key, value in checks:
        if not choosable(value):
            raise SelectionError(
                f"{key}={value}: choices (checkpoints, sweeps, early stopping) may only use a "
                "val/ or train/ metric -- test numbers are reported, never chosen on; use e.g. "
                "val/acc"
            )
    if cfg.checkpoint.test not in ("best", "last"):
        raise UserError(f"checkpoint.test={cfg.checkpoint.test!r}: use best or last")


def _where_job() -> None:
    """[job k/N] in every progress line of a multirun job."""
    from xfergan import progress

    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode.name == "MULTIRUN":
            progress.where.job, progress.where.jobs = int(hc.job.num) + 1, progress.sweep_size()
    except ValueError:
        pass


_depth = 0  # nesting of run_task calls (a pipeline runs its stages through run_task)


def run_task(cfg: DictConfig) -> dict[str, Any]:
    global _depth
    task = enum_name(cfg.task)
    out = output_dir(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    # CPU: flush denormal floats to zero. Tiny GAN weights and gradients otherwise turn into
    # denormals that make CPU arithmetic ~100x slower mid-training (no effect on GPUs).
    torch.set_flush_denormal(True)
    t0 = time.time()
    failed = True
    payload: dict[str, Any] | None = None
    tracking.start_job()
    zero = is_global_zero()  # only rank zero writes files (DDP children write none)
    pid_file = out / "job.pid"  # which process runs this job (to inspect or stop it)
    if zero:
        pid_file.write_text(f"{os.getpid()}\n")
        if _depth:  # a pipeline's stage: a complete run dir (evaluate, predict, teacher= read it)
            from omegaconf import OmegaConf

            (out / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    if not _depth:
        _where_job()
    try:
        check_selection(cfg)
        module = importlib.import_module(TASKS[task])
        # a pipeline's stages run inside their job's slot: only the outermost run_task takes one
        with device_slot(_pool_size(cfg) if not _depth else 0) as slot:
            if slot is not None:  # a parallel sweep job: one GPU each (queued when all are taken)
                with open_dict(cfg):
                    cfg.trainer.devices = [slot]
                log.info("sweep job pinned to GPU %d", slot)
            _depth += 1
            try:
                metrics = module.run(cfg)
            finally:
                _depth -= 1
        failed = False
        payload = write_metrics(out, metrics, cfg, status="ok", wall_s=round(time.time() - t0, 2))
        return payload
    except BaseException as e:
        kind = "error" if isinstance(e, UserError) else type(e).__name__
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        try:
            if zero:
                atomic_write_text(out / "error.txt", traceback.format_exc())
            payload = write_metrics(
                out,
                {},
                cfg,
                status="failed",
                error=f"{kind}: {msg}",
                wall_s=round(time.time() - t0, 2),
            )
        except Exception:  # noqa: BLE001 - never hide the original error
            log.exception("could not record the failure in %s", out)
        raise
    finally:
        tracking.finish_job(payload, failed, out)
        if zero:
            pid_file.unlink(missing_ok=True)
