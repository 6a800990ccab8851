"""W&B through Lightning's WandbLogger, with the logging contract of xfergan/tracking/__init__.py: offline
by default, run name from the comparison axes, resolved config plus flat axis keys, group =
experiment, job_type = stage, best-value summaries for val/*, bounded wait when online, always
finished with every scalar of metrics.json in the summary (failed runs marked failed)."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

from omegaconf import DictConfig

from xfergan.tracking import VAL_BEST, on_finish, reason

log = logging.getLogger(__name__)


def make_wandb_logger(
    cfg: DictConfig,
    out: Path,
    job_type: str | None = None,
    tags: list[str] | None = None,
    sizes: dict | None = None,
):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from xfergan.tracking import axes, resolved_config, run_name
    from xfergan.tracking import tags as contract_tags

    with contextlib.suppress(Exception):  # a speed-up only: never costs the run
        _list_packages_once(wandb)
    lc = cfg.logger
    mode = "offline" if lc.mode == "dryrun" else lc.mode  # wandb sets WANDB_MODE=dryrun itself
    settings = wandb.Settings(init_timeout=float(lc.init_timeout), silent=True)
    kwargs = dict(
        project=lc.project,
        entity=lc.entity,
        save_dir=str(out),
        name=run_name(cfg, job_type),
        group=lc.group,
        job_type=job_type or lc.job_type,
        tags=contract_tags(cfg, tags),
        config={**resolved_config(cfg), **axes(cfg, sizes)},
        settings=settings,
        reinit="finish_previous",
    )
    try:
        logger = WandbLogger(offline=mode == "offline", mode=mode, **kwargs)
        define_best(logger.experiment)  # starts the run now: a network failure shows, bounded
        return logger
    except Exception as e:  # noqa: BLE001 - any W&B failure must not cost the run
        if mode == "offline":
            log.warning(
                "W&B could not start (%s); this run goes on without W&B (metrics.json and csv/ "
                "still hold every number)",
                reason(e),
            )
            return None
        log.warning(
            "W&B %s could not start within %ss (%s); logging offline instead "
            "(`wandb sync %s/wandb` uploads later)",
            mode,
            lc.init_timeout,
            reason(e),
            out,
        )
        try:
            import wandb as _w

            if _w.run is not None:
                _w.finish(exit_code=1)
            logger = WandbLogger(offline=True, mode="offline", **kwargs)
            define_best(logger.experiment)
            return logger
        except Exception as e2:  # noqa: BLE001
            log.warning("W&B offline fallback failed too (%s); continuing without W&B", reason(e2))
            return None


def _list_packages_once(wandb) -> None:
    """Every W&B run saves the installed packages (requirements.txt); wandb lists them by parsing
    every package's metadata each time (about 0.2 s a run, 10 runs in a 7-arm pipeline). The
    list is the same for every run of this process: list it once."""
    util = getattr(wandb, "util", None)
    read_all = getattr(util, "working_set", None)  # (another wandb: left as it is)
    if read_all is None or getattr(read_all, "listed_once", False):
        return
    listed = functools.cache(lambda: tuple(read_all()))

    def working_set():
        return iter(listed())

    working_set.listed_once, working_set.__wrapped__ = True, read_all
    util.working_set = working_set


def define_best(run) -> None:
    """val/* metrics summarize to their best value (max; min for losses), not the last one."""
    if not hasattr(run, "define_metric"):  # a DDP child's dummy experiment
        return
    for key, how in VAL_BEST.items():
        run.define_metric(key, summary=how)


def finish_wandb(failed: bool, summary: dict | None = None) -> None:
    """Write the job's metrics.json scalars into the run summary (same keys; a val/ key keeps
    its best value and gets the tested checkpoint's as `tested`), then finish the run, so a
    multirun never merges runs."""
    try:
        import wandb
    except ImportError:
        return
    run = wandb.run
    if run is None:
        return
    try:
        run.log({}, commit=True)  # a history row still pending (log(step=)) lands before this
        have = set(run.summary.keys())  # (`k in run.summary` raises: Summary has no __contains__)
        for k, v in (summary or {}).items():
            if k in VAL_BEST and isinstance(v, (int, float)):
                best = run.summary[k] if k in have else None
                best = best.get(VAL_BEST[k], v) if hasattr(best, "get") else v
                run.summary[k] = {VAL_BEST[k]: best, "tested": v}
            else:
                run.summary[k] = v
    except Exception as e:  # noqa: BLE001 - the summary must never cost the run
        log.warning("W&B summary not written (%s)", reason(e))
    wandb.finish(exit_code=1 if failed else 0)


def log_image(loggers: list, key: str, path: Path, caption: str = "", step: int | None = None):
    """Log a PNG we wrote to every logger that takes images (W&B)."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.log_image(key=key, images=[str(path)], caption=[caption], step=step)


def wandb_run(loggers: list):
    """The W&B run of a job's loggers (None without one)."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            return lg.experiment
    return None


def record_lineage(
    loggers: list, inputs: dict[str, str], output: tuple[str, str, str] | None = None
):
    """Lineage GAN checkpoint -> synthetic dataset -> classifier. Online: the output is logged as
    an artifact and the inputs are `use_artifact`-ed by name, so W&B draws the graph. Offline (or
    if anything fails): the local paths are recorded in the run's config, with no error.

    inputs: {artifact_name: local_path}; output: (artifact_name, type, local_path)."""
    run = wandb_run(loggers)
    if run is None:
        return
    run.config.update({f"lineage/{k}": v for k, v in inputs.items()}, allow_val_change=True)
    if output:
        run.config.update({f"lineage/output/{output[0]}": output[2]}, allow_val_change=True)
    if getattr(run.settings, "mode", "offline") != "online":
        return
    try:
        import wandb

        for name in inputs:
            run.use_artifact(f"{name}:latest")
        if output:
            art = wandb.Artifact(output[0], type=output[1])
            p = Path(output[2])
            art.add_dir(str(p)) if p.is_dir() else art.add_file(str(p))
            run.log_artifact(art)
    except Exception as e:  # noqa: BLE001 - lineage is a nicety, never a failure
        log.warning("W&B lineage not recorded (%s); local paths are in the run config", e)


def artifact_name(kind: str, path: str | Path) -> str:
    """A stable artifact name for a local output (kind + its run dir name)."""
    p = Path(path).resolve()
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent if p.is_file() else p
    tag = f"{run_dir.parent.name}-{run_dir.name}"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in tag)[-80:]
    return f"{kind}-{safe}"


# report/paired: a primary comparison's verdict reads p_holm (and its corrected interval), an
# exploratory one's the uncorrected p; kind and method say which and how
def log_report(run, rep: dict, pngs: list[Path]) -> None:
    """A report (report.json's content) into a W&B run: the aggregate as a wandb.Table, the
    arms with a bar chart, the paired comparisons, and the report's PNGs."""
    import wandb

    from xfergan.evaluation.arms import PAIRED_COLUMNS, paired_rows

    keys = rep["keys"]
    cols = keys + ["n", "metric", "mean", "std"]
    rows = [
        [r["group"].get(k) for k in keys] + [r["n"], m, v[0], v[1]]
        for r in rep["rows"]
        for m, v in r["metrics"].items()
    ]
    run.log({"report/aggregate": wandb.Table(columns=cols, data=rows)})
    arms = rep.get("arms") or {}
    if arms and arms.get("metrics"):
        m = arms["metrics"][0]
        arow = [
            [
                " ".join(str(v) for v in g["group"].values()) or "all",
                a,
                s["mean"],
                s["low"],
                s["high"],
                s["n"],
            ]
            for g in arms["groups"]
            for a, s in g["arms"][m].items()
        ]
        t = wandb.Table(columns=["group", "arm", "mean", "low", "high", "n"], data=arow)
        run.log(
            {
                "report/arms": t,
                "report/arms_bar": wandb.plot.bar(t, "arm", "mean", title=f"{m} by arm"),
            }
        )
        run.log({"report/paired": wandb.Table(columns=PAIRED_COLUMNS, data=paired_rows(arms))})
    for png in pngs:
        run.log({f"report/{png.stem}": wandb.Image(str(png))})


on_finish("wandb", job_end=finish_wandb)
