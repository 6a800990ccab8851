"""Hydra callbacks: `ReportWhenDone` writes task=report's report.md / report.json / plots into a
multirun's sweep dir when the last job ends, so one command (e.g.
`python run.py experiment=synthetic_ablation`) ends with the answer. Enable it for any sweep with
`+hydra.callbacks.report._target_=tasks.hydra_callbacks.ReportWhenDone`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ReportWhenDone(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from tasks.report import collect, write_report

        root = Path(config.hydra.sweep.dir)
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
