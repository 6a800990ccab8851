"""What the training stages build from a config: the datamodule, loggers, callbacks and the
Trainer (with the config stamp resume checks, the fit clock and the process record), and scalar
metrics."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from xfergan.errors import UserError
from xfergan.io import atomic_write_json, earlier_logs
from xfergan.runtime import (
    DATA_KEY,
    MEASURING_KEYS,
    changed_inputs,
    config_digest,
    datamodule_spec,
    input_digests,
    same_record,
    world_size,
)

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig, **overrides: Any):
    """The configured datamodule; `overrides` replace dataset keys (e.g. the GAN's image size)."""
    from xfergan.errors import instantiate

    return instantiate(datamodule_spec(cfg, **overrides), seed=cfg.seed, _convert_="all")


def load_data(dm, out: Path) -> None:
    """dm.setup(), with every skipped input listed in the run dir's skipped_images.csv, also
    when too many are unreadable to go on (the log names only the first few)."""
    from xfergan.runtime import write_problems

    try:
        dm.setup()
    finally:
        write_problems(out, dm.problems)


class ConfigStamp(pl.Callback):
    """Every checkpoint records the config digest of the run that wrote it (config_digest, which
    covers its inputs' content) and its inputs' digests: resume=true continues a checkpoint
    only when it was written with the same settings from the same input bytes."""

    def __init__(self, cfg: DictConfig):
        self.digest = config_digest(cfg, MEASURING_KEYS)
        self.inputs = input_digests(cfg, MEASURING_KEYS)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["xfergan_config_sha256"] = self.digest
        checkpoint["xfergan_inputs_sha256"] = self.inputs


class FitClock(pl.Callback):
    """Seconds spent fitting, summed over resumes: each checkpoint carries the fit time of the
    steps it holds, so a resumed run's `train_s` is what all its steps cost, not just the last
    process's share (the time between a run's last save and its stop is work redone, counted
    once, where it is redone). None when resumed from a checkpoint that did not record it."""

    def __init__(self):
        self.before_s: float | None = 0.0  # fit seconds of the steps resumed from; None: unknown
        self.resumed = self.loaded = False
        self._t0 = self._t1 = None
        self.start_step: int | None = None  # global_step when training started (None: it did not)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0, self._t1 = time.perf_counter(), None

    def on_train_start(self, trainer, pl_module) -> None:
        # after every strategy has restored its checkpoint (some restore after on_fit_start)
        self.resumed = bool(trainer.ckpt_path)
        self.start_step = trainer.global_step
        if self.resumed and not self.loaded:  # a checkpoint from before the clock
            self.before_s = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self._t1 = time.perf_counter()

    def seconds(self) -> float | None:
        if self.before_s is None or self._t0 is None:  # unknown, or no fit in this process
            return self.before_s if self.loaded else None
        return round(self.before_s + (self._t1 or time.perf_counter()) - self._t0, 2)

    def state_dict(self) -> dict:
        return {"train_s": self.seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        got = state_dict.get("train_s")
        self.loaded, self.before_s = True, float(got) if got is not None else None


def fit_time(trainer: pl.Trainer, prefix: str = "") -> dict[str, float | None]:
    """`<prefix>train_s`: fit seconds over every resume; a resumed run also has the seconds of
    the steps it continued from (`<prefix>train_s_before_resume`, None when not recorded).
    Read it right after fit (validate/test restore other checkpoints)."""
    clock = next((c for c in trainer.callbacks if isinstance(c, FitClock)), None)
    if clock is None:
        return {}
    out = {f"{prefix}train_s": clock.seconds()}
    if clock.resumed:
        out[f"{prefix}train_s_before_resume"] = clock.before_s
    return out


def trained_steps(trainer: pl.Trainer) -> int:
    """Optimizer steps this process's fit made (0 when a resumed run was already at its budget:
    Lightning then skips training altogether)."""
    clock = next((c for c in trainer.callbacks if isinstance(c, FitClock)), None)
    if clock is None or clock.start_step is None:
        return 0
    return trainer.global_step - clock.start_step


def resume_checkpoint(cfg: DictConfig, out: Path) -> str | None:
    """resume=true: this run dir's checkpoints/last.ckpt when it exists, loads, and was written
    with the same settings; otherwise one line saying why, and a fresh start (None). A damaged
    checkpoint stops with one line naming it."""
    if not cfg.resume:
        return None
    from xfergan.io import safe_torch_load

    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file():
        log.warning("resume=true, but %s has no checkpoints/last.ckpt: starting from scratch", out)
        drop_earlier_logs(out)
        return None
    try:
        blob = safe_torch_load(last, "checkpoint to resume from")
    except Exception as e:  # noqa: BLE001 - named in one line
        raise UserError(f"{e}; delete it to start this run from scratch") from None
    blob = blob if isinstance(blob, dict) else {}
    stamp, inputs = blob.get("xfergan_config_sha256"), blob.get("xfergan_inputs_sha256")
    if not same_record(stamp, inputs, cfg, MEASURING_KEYS):
        now = config_digest(cfg, MEASURING_KEYS)
        why = why_not_same(blob, cfg, now, MEASURING_KEYS)
        log.warning("resume=true, but %s %s: starting from scratch", last, why)
        drop_earlier_logs(out)
        return None
    log.info(
        "resuming from %s (epoch %s, step %s)", last, blob.get("epoch"), blob.get("global_step")
    )
    return str(last)


def why_not_same(record: dict, cfg: DictConfig, now: str, skip: tuple[str, ...] = ()) -> str:
    """Why a checkpoint (xfergan_* keys) or a finished stage's metrics.json does not match the
    run asked for now: the inputs whose content changed, by name, else other settings."""
    key = "xfergan_inputs_sha256" if "xfergan_config_sha256" in record else "inputs_sha256"
    stamp = record.get("xfergan_config_sha256", record.get("config_sha256"))
    inputs = record.get(key)
    # a record from before the data's content was recorded: only what it recorded is compared
    now_inputs = input_digests(cfg, skip, data=DATA_KEY in (inputs or {}))
    changed = changed_inputs(inputs, now_inputs) if inputs is not None else []
    if changed:
        return f"was made from other inputs ({', '.join(changed)}: other content now)"
    return (
        f"was written with other settings (config {(stamp or 'not recorded')[:12]}, now {now[:12]})"
    )


class ProcessRecord(pl.Callback):
    """Under DDP every process writes processes/rank<r>.json: pid, argv, Hydra mode, seed, world
    size -- which processes ran this job, and how they were started."""

    def __init__(self, out: Path, seed: int):
        self.out, self.seed = out, seed

    def setup(self, trainer, pl_module, stage):
        if trainer.world_size < 2:
            return
        import sys

        try:
            from hydra.core.hydra_config import HydraConfig

            mode = HydraConfig.get().mode.name
        except ValueError:
            mode = None
        atomic_write_json(
            self.out / "processes" / f"rank{trainer.global_rank}.json",
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "pid": os.getpid(),
                "argv": sys.argv,
                "hydra_mode": mode,
                "seed": self.seed,
                "stage": stage,
            },
        )


# ----------------------------------------------------------------------------- loggers
def drop_earlier_logs(out: Path) -> None:
    """A fresh start in a run dir: earlier attempts' CSV logs belong to another training."""
    for f in earlier_logs(out):
        f.unlink(missing_ok=True)


def keep_earlier_log(out: Path, resume: bool) -> None:
    """Lightning's CSVLogger empties csv/metrics.csv when it starts: with resume=true and a
    last.ckpt to continue, the earlier attempt's log is kept as csv/metrics.<k>.csv (the val
    curve reads them all, xfergan/evaluation/curves.py; `resume_checkpoint` drops them when it
    starts from scratch after all); otherwise earlier attempts' logs are dropped."""
    log_file = out / "csv" / "metrics.csv"
    if not (resume and (out / "checkpoints" / "last.ckpt").is_file()):
        drop_earlier_logs(out)
    elif log_file.is_file() and log_file.stat().st_size:
        log_file.replace(log_file.with_name(f"metrics.{len(earlier_logs(out)) + 1}.csv"))


def build_loggers(
    cfg: DictConfig,
    out: Path,
    job_type: str | None = None,
    tags: list[str] | None = None,
    sizes: dict | None = None,
) -> list:
    """CSV, W&B and MLflow as configured, each with the logging contract of xfergan/tracking/__init__.py
    (`sizes`: the loaded data's sizes, for the n_train_* axes). A tracker that cannot start
    warns in one line and the run goes on: metrics.json always holds every number."""
    lc = cfg.logger
    loggers: list = []
    if lc.csv:
        keep_earlier_log(out, bool(cfg.get("resume")))
        loggers.append(pl.loggers.CSVLogger(save_dir=str(out), name="csv", version=""))
    if lc.wandb and lc.mode != "disabled":
        from xfergan.tracking.wandb_backend import make_wandb_logger

        wb = make_wandb_logger(cfg, out, job_type=job_type, tags=tags, sizes=sizes)
        if wb is not None:
            loggers.append(wb)
    if lc.mlflow:
        from xfergan.tracking.mlflow_backend import make_mlflow_logger

        ml = make_mlflow_logger(cfg, out, job_type=job_type, tags=tags, sizes=sizes)
        if ml is not None:
            loggers.append(ml)
    return loggers


# ----------------------------------------------------------------------------- callbacks
def build_callbacks(cfg: DictConfig, task: str, loggers: list) -> list:
    """The `callbacks` group's entries that apply to `task` (each entry lists its tasks), built
    from their `_target_`. A learning-rate monitor needs a logger and a progress bar
    `trainer.enable_progress_bar`: without them they are left out."""
    from pytorch_lightning.callbacks import LearningRateMonitor, ProgressBar

    out = []
    for name, spec in (OmegaConf.to_container(cfg.callbacks, resolve=True) or {}).items():
        if not spec:
            continue
        spec = dict(spec)
        if task not in spec.pop("tasks", ["classify"]):
            continue
        cb = hydra.utils.instantiate(spec, _convert_="all")
        if isinstance(cb, LearningRateMonitor) and not loggers:
            continue
        from xfergan.progress import ProgressLog

        if isinstance(cb, (ProgressBar, ProgressLog)) and not cfg.trainer.enable_progress_bar:
            continue
        log.debug("callback %s: %s", name, type(cb).__name__)
        out.append(cb)
    return out


# ----------------------------------------------------------------------------- trainer
SMOKE_STEPS = 2  # debug=smoke: the most optimizer steps any stage runs


def smoke_cap(cfg: DictConfig, steps: int) -> int:
    """A step budget under debug=smoke (the one place that caps it)."""
    return min(int(steps), SMOKE_STEPS) if cfg.get("smoke") else int(steps)


def batch_limit(cfg: DictConfig, split: str) -> int | None:
    """trainer.limit_<split>_batches when it is a count of batches (debug=smoke), else None."""
    limit = cfg.trainer.get(f"limit_{split}_batches")
    return (
        int(limit) if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
    )


def plan_steps(cfg: DictConfig, dm, steps: int) -> int:
    """A step budget (under the smoke cap) as a number of equal epochs of full batches that end
    at exactly that step (dm.plan_epochs): classifier and GAN budgets alike. A fraction of the
    batches (trainer.limit_train_batches=0.5) would cut every epoch short of the plan: refused."""
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, float) and limit != 1.0:
        raise UserError(
            f"trainer.limit_train_batches={limit} with a step budget ({int(steps)} steps): a "
            "fraction of each epoch's batches would make fewer steps than the budget; drop it "
            "(or give a whole number of batches, a debug cap)"
        )
    return dm.plan_epochs(smoke_cap(cfg, int(steps)), world_size(cfg), batch_limit(cfg, "train"))


def build_trainer(
    cfg: DictConfig, out: Path, loggers: list, callbacks: list, **overrides: Any
) -> pl.Trainer:
    tc = OmegaConf.to_container(cfg.trainer, resolve=True)
    tc.update(overrides)
    tc["default_root_dir"] = str(out)
    if cfg.get("smoke"):  # debug=smoke caps every stage, whatever a pipeline arm says
        tc["max_epochs"] = (
            min(int(tc.get("max_epochs") or 1), 1) if tc.get("max_epochs") != -1 else 1
        )
        if tc.get("max_steps") and tc["max_steps"] > 0:
            tc["max_steps"] = smoke_cap(cfg, int(tc["max_steps"]))
    # our datamodules shard every split themselves (no padding duplicates in evaluation)
    tc["use_distributed_sampler"] = False
    if "ddp" in str(tc.get("strategy", "")):
        from xfergan.ddp import patch_lightning_launcher

        patch_lightning_launcher()
    from pytorch_lightning.callbacks import ProgressBar

    if not any(isinstance(c, ProgressBar) for c in callbacks):  # no bar chosen: none at all
        tc["enable_progress_bar"] = False  # (Lightning's default bar redraws every step)
    stamps = [ProcessRecord(out, int(cfg.seed)), ConfigStamp(cfg), FitClock()]
    callbacks = [*callbacks, *stamps]
    from xfergan.checkpoint_io import AtomicCheckpointIO

    tc.setdefault("plugins", [AtomicCheckpointIO()])
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory.*exists and is not empty.*")
    return hydra.utils.instantiate(
        tc, logger=loggers or False, callbacks=callbacks, _convert_="all"
    )


def scalar_metrics(trainer: pl.Trainer, prefix: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith(prefix) and not k.endswith("_bar")
    }
