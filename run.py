"""xfergan entry point: `python run.py [task=...] [group=option ...] [-m for sweeps]`."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from xfergan.errors import SelectionError, UserError
from xfergan.schema import register_configs

register_configs()
log = logging.getLogger("xfergan")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from tasks import run_task
    from xfergan.ddp import job_scope

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    # only a sweeper that optimizes (Optuna) reads the returned objective; the basic one does not
    optimizing = multirun and "BasicSweeper" not in str(hc.sweeper.get("_target_", ""))
    objective = str(cfg.sweep.objective)
    try:
        with job_scope():
            metrics = run_task(cfg)
    except UserError as e:
        if multirun and not isinstance(
            e, SelectionError
        ):  # record it (done by run_task) and let the other jobs go on
            log.error("job failed: %s", e)
            return None
        print(f"xfergan: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if multirun:
            log.exception("job failed: %s", e)
            return None
        raise
    value = metrics.get(objective)  # returned to sweepers (Optuna): a validation number
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        if optimizing and objective not in metrics:  # every trial would fail, then a traceback
            have = ", ".join(k for k in sorted(metrics) if k.startswith("val/"))[:300]
            print(
                f"xfergan: error: sweep.objective={objective} is not a number this task writes "
                f"(its val numbers: {have or 'none'}); set sweep.objective to one of them",
                file=sys.stderr,
            )
            sys.exit(2)
        return None
    return float(value)


if __name__ == "__main__":
    main()
    from xfergan import outcome

    if outcome.failures:  # a multirun whose jobs (or report) failed: after the others finished
        print(f"xfergan: error: {'; '.join(outcome.failures)}", file=sys.stderr)
        sys.exit(1)
