"""task=report dir=<run or multirun dir>: every metrics.json below it -> grouped by the swept
keys, aggregated over seeds (mean ± std, n) -> report.md, report.csv and PNG plots in that dir
(xfergan/evaluation/report_files.py), and into W&B when it is on. Failed runs (status failed)
and missing ones (a job dir without metrics.json: killed) are listed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xfergan.errors import UserError, first_line
from xfergan.evaluation.report_files import collect, write_report

log = logging.getLogger(__name__)


def log_to_trackers(cfg: DictConfig, root: Path) -> None:
    """A report run (job_type=report) in W&B: the aggregate, the arms, the paired comparisons
    and the report's PNGs."""
    if not cfg.logger.wandb or cfg.logger.mode == "disabled":
        return
    from xfergan.runtime import output_dir
    from xfergan.tracking.wandb_backend import log_report, wandb_run
    from xfergan.training import build_loggers

    loggers = build_loggers(cfg, output_dir(cfg), job_type="report", tags=["report"])
    run = wandb_run(loggers)
    if run is not None:
        rep = json.loads((root / "report.json").read_text())
        log_report(run, rep, sorted(root.glob("plot_*.png")))


def run(cfg: DictConfig) -> dict:
    if not cfg.dir:
        raise UserError("task=report needs dir=<a run or multirun dir>")
    root = Path(cfg.dir)
    if not root.is_dir():
        raise UserError(f"report dir {root} does not exist")
    runs, missing = collect(root)
    if not runs and not missing:
        raise UserError(f"no metrics.json below {root}: nothing to report")
    res = write_report(root, runs, missing)
    print((root / "report.md").read_text())
    log_to_trackers(cfg, root)
    log.info("wrote %s/report.md, report.csv and %d plots", root, res["report/plots"])
    return res


class ReportWhenDone(Callback):
    """Writes this report (report.md / report.json / plots) into a multirun's sweep dir when the
    last job ends, so one command (e.g. `python run.py experiment=synthetic_ablation`) ends with
    the answer; a report that cannot be written fails the command. Enable it for any sweep with
    `+hydra.callbacks.report._target_=tasks.report.ReportWhenDone`."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from xfergan import outcome

        try:
            self._report(Path(config.hydra.sweep.dir))
        except Exception as e:  # noqa: BLE001 - Hydra would make it a warning: fail the command
            first = first_line(e)
            log.error("the report could not be written: %s: %s", type(e).__name__, first)
            outcome.failures.append(f"report failed: {first}")

    def _report(self, root: Path) -> None:
        runs, missing = collect(root)
        if not runs and not missing:
            log.warning("no job wrote metrics.json under %s: no report", root)
            return
        res = write_report(root, runs, missing)
        log.info(
            "report: %s/report.md (%d runs, %d failed, %d missing)",
            root,
            res["report/runs"],
            res["report/failed"],
            res["report/missing"],
        )
        print(f"report: {root / 'report.md'}")
