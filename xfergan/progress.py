"""Where a long run is, for a person watching a terminal or reading a log.

An interactive terminal gets Lightning's bar (TQDMProgressBar, redrawn every N steps). Anything
else (CI, SLURM, nohup, a pipe) gets `ProgressLog`: one line every `every_s` seconds per running
stage, and one when it ends:

    [job 3/10] stage 4/11 classify_distill_gan: 312/600 steps (52%), 21.3 steps/s, ETA 0:00:14
    [job 3/10] stage 4/11 classify_distill_gan done in 0:00:29
    [job 3/10] pipeline: 5/11 stages done, ETA 0:03:10

Neither reads a tensor back from the device: steps come from the Trainer's host-side counter.
`where` holds what the job, pipeline and stage are (set by run_task and task=pipeline).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import pytorch_lightning as pl

log = logging.getLogger("xfergan.progress")


@dataclass
class Where:
    job: int | None = None  # 1-based job of a sweep
    jobs: int | None = None
    stage: int | None = None  # 1-based stage of a pipeline
    stages: int | None = None
    stage_name: str | None = None
    stage_times: list[float] = field(default_factory=list)  # finished stages' wall times

    def prefix(self) -> str:
        parts = []
        if self.job is not None:
            parts.append(f"[job {self.job}/{self.jobs or '?'}]")
        if self.stage is not None:
            parts.append(f"stage {self.stage}/{max(self.stages or 0, self.stage)}")
        if self.stage_name:
            parts.append(self.stage_name)
        return " ".join(parts)


where = Where()


def clock(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def interactive() -> bool:
    """A person at a terminal (stderr is a TTY): bars; otherwise log lines."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressLog(pl.Callback):
    """One log line every `every_s` seconds while training (steps done/total, steps/s, ETA) and
    one at the end. Total steps: the Trainer's max_steps, else max_epochs x batches per epoch."""

    def __init__(self, every_s: float = 30.0, name: str | None = None):
        self.every_s = float(every_s)
        self.name = name
        self._t0 = self._last = 0.0
        self._s0 = 0

    def _total(self, trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        nb = trainer.num_training_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and isinstance(nb, int) and nb > 0:
            return int(trainer.max_epochs) * nb
        return None

    def on_train_start(self, trainer, pl_module):
        self._t0 = self._last = time.time()
        self._s0 = self._done(trainer, pl_module)  # a resumed run counts its speed from here

    def _head(self) -> str:
        return where.prefix() or self.name or "training"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.time()
        if now - self._last < self.every_s or not trainer.is_global_zero:
            return
        self._last = now
        done = self._done(trainer, pl_module)
        total = self._total(trainer)
        rate = (done - self._s0) / max(now - self._t0, 1e-9)
        if total:
            eta = clock((total - done) / rate) if rate > 0 else "?"
            log.info(
                "%s: %d/%d steps (%d%%), %.1f steps/s, ETA %s",
                self._head(),
                done,
                total,
                100 * done // max(total, 1),
                rate,
                eta,
            )
        else:
            log.info("%s: %d steps, %.1f steps/s", self._head(), done, rate)

    def _done(self, trainer, pl_module) -> int:
        steps = getattr(pl_module, "steps_done", None)  # the GAN counts G+D steps itself
        if isinstance(steps, int):
            return steps
        count = getattr(pl_module, "classifier_steps", None)  # semi_gan: G's steps not counted
        return int(count(trainer)) if callable(count) else int(trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            log.info(
                "%s: training done, %d steps in %s",
                self._head(),
                self._done(trainer, pl_module),
                clock(time.time() - self._t0),
            )


def progress_callback(refresh_rate: int = 20, every_s: float = 30.0) -> pl.Callback:
    """The `callbacks.progress_bar` entry: a bar at a terminal (or XFERGAN_PROGRESS=bar), log
    lines anywhere else."""
    import os

    if os.environ.get("XFERGAN_PROGRESS") == "bar" or interactive():
        from pytorch_lightning.callbacks import TQDMProgressBar

        return TQDMProgressBar(refresh_rate=refresh_rate)
    return ProgressLog(every_s=every_s)


def stage_started(k: int, total: int, name: str) -> float:
    where.stage, where.stages, where.stage_name = k, total, name
    log.info("%s: started", where.prefix())
    return time.time()


def stage_finished(t0: float, headline: str = "", reused: bool = False) -> None:
    took = time.time() - t0
    if not reused:
        where.stage_times.append(took)
    what = "reused (finished before, same settings)" if reused else f"done in {clock(took)}"
    log.info("%s: %s%s", where.prefix(), what, f", {headline}" if headline else "")
    if where.stage is not None and where.stages:
        left = max(0, where.stages - where.stage)
        times = where.stage_times
        eta = clock(left * sum(times) / len(times)) if times and left else "0:00:00"
        log.info(
            "%spipeline: %d/%d stages done, ETA %s",
            f"[job {where.job}/{where.jobs or '?'}] " if where.job is not None else "",
            where.stage,
            where.stages,
            eta,
        )
    where.stage_name = None


def pipeline_done() -> None:
    where.stage = where.stages = where.stage_name = None
    where.stage_times = []


def sweep_size() -> int | None:
    """Jobs in this multirun (BasicSweeper grids: the product of every swept list, command line
    over `hydra.sweeper.params`, read from the sweep dir's multirun.yaml); Optuna: n_trials;
    None when unknown."""
    try:
        from pathlib import Path

        import yaml
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hc = HydraConfig.get()
        if hc.mode.name != "MULTIRUN":
            return None
        if "n_trials" in hc.sweeper:
            return int(hc.sweeper.n_trials)
        f = Path(hc.sweep.dir) / "multirun.yaml"
        saved = yaml.safe_load(f.read_text())["hydra"]
        params = {k: f"{k}={v}" for k, v in (saved["sweeper"].get("params") or {}).items()}
        for o in saved["overrides"]["task"]:
            params[o.split("=", 1)[0].lstrip("+~")] = o
        n = 1
        for o in OverridesParser.create().parse_overrides(list(params.values())):
            if o.is_sweep_override():
                n *= len(list(o.sweep_string_iterator()))
        return n
    except Exception:  # noqa: BLE001 - progress text only: never fail a job over it
        return None
