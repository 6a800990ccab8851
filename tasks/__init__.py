"""One module per stage; `TASKS` maps each `task=` name to its stage function, and
`run_task(cfg)` runs the configured one inside the job lifecycle (xfergan/runtime.py).

A failed job records `status: failed` and the error in its own metrics.json and error.txt; in a
multirun the other jobs go on, in a single run the process exits non-zero.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from tasks import (
    classify,
    dashboard,
    evaluate,
    gan,
    gan_fused,
    inspect,
    pipeline,
    predict,
    pseudolabel,
    report,
    synthesize,
)
from xfergan.runtime import choosable, run_job  # noqa: F401 - choosable: the selection rule
from xfergan.schema import enum_name

TASKS = {
    "classify": classify.run,
    "gan": gan.run,
    "gan_fused": gan_fused.run,
    "synthesize": synthesize.run,
    "pipeline": pipeline.run,
    "inspect": inspect.run,
    "report": report.run,
    "evaluate": evaluate.run,
    "pseudolabel": pseudolabel.run,
    "dashboard": dashboard.run,
    "predict": predict.run,
}


def run_task(cfg: DictConfig) -> dict[str, Any]:
    return run_job(cfg, TASKS[enum_name(cfg.task)])
