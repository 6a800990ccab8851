"""The logging contract every tracker gets (W&B, MLflow, and any logger that takes it):

- run name `{task}[-{arm}]-{dataset}[-{body_part}]-{source}-n{n_per_class}[v{val_per_class}]-s{seed}[-j{job}]`
  (v: the val images per class, part of the labelled budget),
  group = experiment (`name`), job_type = stage (classify, gan, synthesize, pseudolabel, report)
- flat top-level config keys for the comparison axes (AXES) next to the nested resolved config;
  `n_train_real` / `n_train_synthetic` are added once the data is loaded
- at the end of the job the run summary holds every scalar of metrics.json (same keys), `status`
  included, also for failed runs; `val/*` keep their best value (max for accuracy/AUROC/kappa,
  min for loss) and get the tested checkpoint's value as `tested`.

Loggers a task builds are registered on a per-job stack, so `finish_job` closes exactly the ones
this job (or pipeline stage) opened. This module is the contract; a backend (wandb_backend,
mlflow_backend) imports it and registers how its runs finish (`on_finish`), so the contract
never imports a backend. Plain data in, nothing from a stage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xfergan.schema import enum_name

log = logging.getLogger(__name__)

AXES = (
    "source",
    "n_per_class",
    "synthetic_ratio",
    "n_train_real",
    "n_train_synthetic",
    "seed",
    "body_part",
    "arm",
)
# best value of a val/ metric in the summary: min for losses, max for the rest
VAL_BEST = {
    "val/acc": "max",
    "val/balanced_acc": "max",
    "val/auroc": "max",
    "val/kappa": "max",
    "val/f1": "max",
    "val/loss": "min",
}

_stack: list[list[tuple[str, Any]]] = []
# how a backend's runs finish: per logger of that kind, and once at every job's end
_finish: dict[str, Callable[[Any, dict, bool, Path | None], None]] = {}
_job_end: list[Callable[[bool, dict], None]] = []


def on_finish(kind: str, per_logger=None, job_end=None) -> None:
    """A backend registers its finishing: `per_logger(logger, summary, failed, out)` for each of
    its loggers a job opened, `job_end(failed, summary)` once when any job ends."""
    if per_logger is not None:
        _finish[kind] = per_logger
    if job_end is not None and job_end not in _job_end:
        _job_end.append(job_end)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def reason(e: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def job_number() -> int | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return hc.job.num if hc.mode.name == "MULTIRUN" else None
    except ValueError:
        return None


def run_name(cfg: DictConfig, job_type: str | None = None) -> str:
    task = job_type or enum_name(cfg.task)
    parts = [str(task)]
    if cfg.get("arm"):
        parts.append(str(cfg.arm))
    parts.append(str(cfg.dataset.name))
    bp = enum_name(cfg.body_part)
    if "body_part" in cfg.dataset and bp != "all":
        parts.append(str(bp))
    n = cfg.dataset.n_per_class
    shots = f"n{n if n is not None else 'all'}"
    val = cfg.dataset.get("val_per_class")
    if n is not None and val:  # the labelled budget is train + val per class: n8v8
        shots += f"v{val}"
    parts += [str(cfg.dataset.source), shots, f"s{cfg.seed}"]
    job = job_number()
    if job is not None:
        parts.append(f"j{job}")
    return "-".join(parts)


def axes(cfg: DictConfig, sizes: dict | None = None) -> dict[str, Any]:
    """The comparison axes as flat top-level config keys."""
    out = {
        "source": str(cfg.dataset.source),
        "n_per_class": cfg.dataset.n_per_class,
        "val_per_class": cfg.dataset.get("val_per_class"),
        "synthetic_ratio": float(cfg.dataset.synthetic_ratio)
        if cfg.dataset.source == "mixed"
        else (1.0 if cfg.dataset.source == "synthetic" else 0.0),
        "seed": int(cfg.seed),
        "body_part": str(enum_name(cfg.body_part)),
        "arm": cfg.get("arm"),
    }
    if cfg.get("semi") is not None and cfg.semi.method:
        out["semi_method"] = str(cfg.semi.method)
    for k in ("n_train_real", "n_train_synthetic", "n_unlabelled"):
        if sizes and k in sizes:
            out[k] = sizes[k]
    if sizes and "n_train_real" in sizes:  # a classifier without a pool: the dashboard's
        out.setdefault("n_unlabelled", 0)  # "0: labelled only" point (it never had one)
    return out


def tags(cfg: DictConfig, extra: list[str] | None = None) -> list[str]:
    base = [str(t) for t in list(cfg.logger.tags) + list(extra or []) if t]
    if cfg.get("arm"):
        base.append(f"arm:{cfg.arm}")
    return sorted(set(base))


# ----------------------------------------------------------------------------- job stack
def start_job() -> None:
    _stack.append([])


def register(kind: str, logger: Any) -> None:
    if _stack:
        _stack[-1].append((kind, logger))


def update_axes(loggers: list, cfg: DictConfig, sizes: dict) -> None:
    """Once the data is loaded: n_train_real / n_train_synthetic / n_unlabelled (the unlabelled
    pool's size) join the flat config."""
    extra = {k: v for k, v in axes(cfg, sizes).items() if k.startswith(("n_train", "n_unlabelled"))}
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    for lg in loggers:
        try:
            if isinstance(lg, WandbLogger):
                lg.experiment.config.update(extra, allow_val_change=True)
            elif isinstance(lg, MLFlowLogger):
                lg.log_hyperparams({k: str(v) for k, v in extra.items()})
        except Exception as e:  # noqa: BLE001 - a tracker never costs the run
            log.warning("could not record %s in %s: %s", extra, type(lg).__name__, e)


def scalars(payload: dict) -> dict[str, Any]:
    """What a run summary holds: every number and string of metrics.json (no lists/dicts)."""
    return {
        k: v
        for k, v in payload.items()
        if isinstance(v, (int, float, str, bool)) and not k.startswith("_")
    }


def finish_job(payload: dict | None, failed: bool, out: Path | None = None) -> None:
    """Write the job's summary to every logger it opened, attach its files, close them."""
    opened = _stack.pop() if _stack else []
    summary = scalars(payload or {})
    for kind, lg in opened:
        try:
            if kind in _finish:
                _finish[kind](lg, summary, failed, out)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: could not write the run summary (%s)", kind, e)
    for end in _job_end:
        end(failed, summary)
