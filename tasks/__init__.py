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
from omegaconf import DictConfig

from tasks.common import output_dir, write_metrics
from tasks.wandb_utils import finish_wandb
from xfergan.errors import UserError
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
}


def run_task(cfg: DictConfig) -> dict[str, Any]:
    task = enum_name(cfg.task)
    out = output_dir(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    t0 = time.time()
    failed = True
    pid_file = out / "job.pid"  # which process runs this job (to inspect or stop it)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        module = importlib.import_module(TASKS[task])
        metrics = module.run(cfg)
        failed = False
        return write_metrics(out, metrics, cfg, status="ok", wall_s=round(time.time() - t0, 2))
    except BaseException as e:
        kind = "error" if isinstance(e, UserError) else type(e).__name__
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        try:
            atomic_write_text(out / "error.txt", traceback.format_exc())
            write_metrics(
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
        finish_wandb(failed=failed)
        pid_file.unlink(missing_ok=True)
