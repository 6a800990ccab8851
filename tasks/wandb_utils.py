"""W&B through Lightning's WandbLogger: offline by default, resolved config, group/job_type/tags
from config, bounded wait when online, always finished (failed runs marked failed)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def make_wandb_logger(
    cfg: DictConfig, out: Path, job_type: str | None = None, tags: list[str] | None = None
):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from tasks.common import resolved_config

    lc = cfg.logger
    mode = lc.mode
    settings = wandb.Settings(init_timeout=float(lc.init_timeout), silent=True)
    all_tags = [str(t) for t in list(lc.tags) + list(tags or []) if t]
    kwargs = dict(
        project=lc.project,
        entity=lc.entity,
        save_dir=str(out),
        group=lc.group,
        job_type=job_type or lc.job_type,
        tags=sorted(set(all_tags)),
        config=resolved_config(cfg),
        settings=settings,
        reinit="finish_previous",
    )
    try:
        logger = WandbLogger(offline=mode == "offline", mode=mode, **kwargs)
        _ = logger.experiment  # start now, so a network failure shows up here, bounded
        return logger
    except Exception as e:  # noqa: BLE001 - any W&B failure must not cost the run
        if mode == "offline":
            log.warning("W&B offline logging failed (%s); continuing without W&B", e)
            return None
        log.warning(
            "W&B %s could not start within %ss (%s); logging offline instead "
            "(`wandb sync %s/wandb` uploads later)",
            mode,
            lc.init_timeout,
            str(e).splitlines()[0][:120],
            out,
        )
        try:
            import wandb as _w

            if _w.run is not None:
                _w.finish(exit_code=1)
            logger = WandbLogger(offline=True, mode="offline", **kwargs)
            _ = logger.experiment
            return logger
        except Exception as e2:  # noqa: BLE001
            log.warning("W&B offline fallback failed too (%s); continuing without W&B", e2)
            return None


def finish_wandb(failed: bool) -> None:
    """Finish the current W&B run, if any, so a multirun never merges runs."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def log_image(loggers: list, key: str, path: Path, caption: str = "", step: int | None = None):
    """Log a PNG we wrote to every logger that takes images (W&B)."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.log_image(key=key, images=[str(path)], caption=[caption], step=step)
