"""Pieces every task shares: datamodule/trainer/logger construction, run metadata, metrics.json."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from xfergan.io import atomic_write_json
from xfergan.ranks import is_global_zero
from xfergan.schema import enum_name

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def build_datamodule(cfg: DictConfig, **overrides: Any):
    """The configured datamodule; `overrides` replace dataset keys (e.g. the GAN's image size)."""
    from hydra.errors import InstantiationException

    from xfergan.errors import UserError

    ds = OmegaConf.to_container(cfg.dataset, resolve=True, enum_to_str=True)
    ds.update(ds.pop("args", None) or {})  # a user datamodule's own arguments
    ds.update(overrides)
    try:
        return hydra.utils.instantiate(ds, seed=cfg.seed, _convert_="all")
    except InstantiationException as e:  # a UserError inside the constructor stays one line
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


class ConfigStamp(pl.Callback):
    """Every checkpoint records the config digest of the run that wrote it (config_digest):
    resume=true continues a checkpoint only when it was written with the same settings."""

    def __init__(self, digest: str):
        self.digest = digest

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["xfergan_config_sha256"] = self.digest


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
        return None
    try:
        blob = safe_torch_load(last, "checkpoint to resume from")
    except Exception as e:  # noqa: BLE001 - named in one line
        from xfergan.errors import UserError

        raise UserError(f"{e}; delete it to start this run from scratch") from None
    stamp = blob.get("xfergan_config_sha256") if isinstance(blob, dict) else None
    now = config_digest(cfg)
    if stamp != now:
        log.warning(
            "resume=true, but %s was written with other settings (config %s, now %s): "
            "starting from scratch",
            last,
            (stamp or "not recorded")[:12],
            now[:12],
        )
        return None
    log.info(
        "resuming from %s (epoch %s, step %s)", last, blob.get("epoch"), blob.get("global_step")
    )
    return str(last)


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


# ----------------------------------------------------------------------------- finished runs
def find_checkpoint(run_dir: Path, which: str = "tested") -> tuple[Path, str]:
    """(checkpoint, kind) of a finished task=classify run dir (a pipeline stage dir too): the one
    it tested, or best / last / a path. The one resolver evaluate, predict and pseudolabel use;
    a relative recorded path is relative to the run's checkpoints/."""
    from xfergan.errors import UserError

    if which not in ("tested", "best", "last"):
        p = Path(which)
        if not p.is_file():
            raise UserError(f"evaluate.checkpoint={which}: no such file (use tested, best, last)")
        return p, "path"
    from xfergan.io import read_json

    mf = run_dir / "metrics.json"
    if not mf.is_file():
        raise UserError(f"{run_dir} has no metrics.json: is it a finished task=classify run?")
    m = read_json(mf)
    if m.get("status") != "ok":
        raise UserError(f"{run_dir} did not finish ({m.get('error') or m.get('status')})")
    key = {"tested": "tested_checkpoint", "best": "best_checkpoint", "last": "last_checkpoint"}
    p = m.get(key[which])
    if p and not Path(p).is_absolute() and not Path(p).is_file():  # a file name (older runs)
        p = str(run_dir / "checkpoints" / Path(p).name)
    if not p or not Path(p).is_file():
        raise UserError(
            f"{run_dir}: its {which} checkpoint ({p or 'none recorded'}) does not exist; pass "
            "evaluate.checkpoint=best|last|<path>"
        )
    kind = m.get("tested_checkpoint_kind", which) if which == "tested" else which
    return Path(p), kind


# ----------------------------------------------------------------------------- loggers
def build_loggers(
    cfg: DictConfig,
    out: Path,
    job_type: str | None = None,
    tags: list[str] | None = None,
    sizes: dict | None = None,
) -> list:
    """CSV, W&B and MLflow as configured, each with the logging contract of tasks/tracking.py
    (`sizes`: the loaded data's sizes, for the n_train_* axes). A tracker that cannot start
    warns in one line and the run goes on: metrics.json always holds every number."""
    lc = cfg.logger
    loggers: list = []
    if lc.csv:
        loggers.append(pl.loggers.CSVLogger(save_dir=str(out), name="csv", version=""))
    if lc.wandb and lc.mode != "disabled":
        from tasks.wandb_utils import make_wandb_logger

        wb = make_wandb_logger(cfg, out, job_type=job_type, tags=tags, sizes=sizes)
        if wb is not None:
            loggers.append(wb)
    if lc.mlflow:
        from tasks.mlflow_utils import make_mlflow_logger

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
def world_size(cfg: DictConfig) -> int:
    """Processes a DDP run will have (1 otherwise), known before the Trainer exists."""
    tc = cfg.trainer
    if "ddp" not in str(tc.strategy):
        return 1
    devices = tc.devices
    if isinstance(devices, int) and devices > 0:
        n = devices
    elif isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        n = len(devices)
    elif str(devices).isdigit() and int(devices) > 0:
        n = int(devices)
    else:  # "auto" / -1: every visible GPU (Lightning: 1 process on a CPU)
        from xfergan.devices import visible_gpus

        n = max(1, visible_gpus())
    return n * int(tc.num_nodes)


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
            tc["max_steps"] = min(int(tc["max_steps"]), 4)
    # our datamodules shard every split themselves (no padding duplicates in evaluation)
    tc["use_distributed_sampler"] = False
    if "ddp" in str(tc.get("strategy", "")):
        from xfergan.ddp import patch_lightning_launcher

        patch_lightning_launcher()
    from pytorch_lightning.callbacks import ProgressBar

    if not any(isinstance(c, ProgressBar) for c in callbacks):  # no bar chosen: none at all
        tc["enable_progress_bar"] = False  # (Lightning's default bar redraws every step)
    callbacks = [*callbacks, ProcessRecord(out, int(cfg.seed)), ConfigStamp(config_digest(cfg))]
    from xfergan.checkpoint_io import AtomicCheckpointIO

    tc.setdefault("plugins", [AtomicCheckpointIO()])
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory.*exists and is not empty.*")
    return hydra.utils.instantiate(
        tc, logger=loggers or False, callbacks=callbacks, _convert_="all"
    )


# ----------------------------------------------------------------------------- metrics.json
# keys that change where or how visibly a job runs, never what it computes
VOLATILE_KEYS = {
    "resume": None,
    "paths": None,
    "logger": None,
    "device_pool": None,
    "name": None,  # the experiment's name: a W&B group
    "evaluate": None,
    "dir": None,
    "trainer": ("enable_progress_bar", "enable_model_summary", "default_root_dir", "devices"),
    "callbacks": ("progress_bar", "sample_grid"),
    "dataset": ("cache_dir", "num_workers"),
}


def config_digest(cfg: DictConfig) -> str:
    """sha256 of the resolved config without VOLATILE_KEYS (and, for a stage, without the
    pipeline section no stage reads), with the number of processes in place of the device
    list: two runs with the same digest computed the same thing. What a resumed pipeline
    compares before it reuses a stage, and a checkpoint before it is continued."""
    import hashlib
    import json

    c = resolved_config(cfg)
    for key, sub in VOLATILE_KEYS.items():
        if sub is None:
            c.pop(key, None)
        elif isinstance(c.get(key), dict):
            for k in sub:
                c[key].pop(k, None)
    if c.get("task") != "pipeline":
        c.pop("pipeline", None)
    c["world_size"] = world_size(cfg)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()


def run_meta(cfg: DictConfig) -> dict[str, Any]:
    """Flat keys every metrics.json carries, so reports can group runs without reading configs."""
    meta: dict[str, Any] = {
        "task": enum_name(cfg.task),
        "seed": int(cfg.seed),
        "name": cfg.name,
        "dataset": cfg.dataset.name,
        "source": cfg.dataset.source,
        "n_per_class": cfg.dataset.n_per_class,
        "body_part": enum_name(cfg.body_part),
        "model": cfg.model.backbone,
        "arm": cfg.get("arm"),
        "config_sha256": config_digest(cfg),
    }
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        meta["overrides"] = ",".join(hc.overrides.task)
        meta["job_num"] = hc.job.num if hc.mode.name == "MULTIRUN" else None
    except ValueError:  # not under Hydra (tests calling a task directly)
        meta["overrides"] = ""
    return meta


def write_metrics(out: Path, metrics: dict[str, Any], cfg: DictConfig, **extra: Any) -> dict:
    payload = {**run_meta(cfg), **extra, **metrics}
    if is_global_zero():
        atomic_write_json(out / METRICS_FILE, payload)
    return payload


def scalar_metrics(trainer: pl.Trainer, prefix: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith(prefix) and not k.endswith("_bar")
    }


def write_problems(out: Path, problems: list[dict]) -> None:
    """List every skipped input (path, reason) in the run dir, so nothing is lost silently."""
    if not problems or not is_global_zero():
        return
    import csv
    import io

    from xfergan.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["split", "path", "reason"])
    w.writeheader()
    w.writerows(problems)
    atomic_write_text(out / "skipped_images.csv", buf.getvalue())
