"""xfergan entry point: `python run.py [task=...] [group=option ...] [-m for sweeps]`."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from xfergan.errors import UserError
from xfergan.schema import register_configs

register_configs()
log = logging.getLogger("xfergan")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from tasks import run_task

    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        metrics = run_task(cfg)
    except UserError as e:
        if multirun:  # record it (done by run_task) and let the other jobs go on
            log.error("job failed: %s", e)
            return None
        print(f"xfergan: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if multirun:
            log.exception("job failed: %s", e)
            return None
        raise
    value = metrics.get("test/acc")  # returned for sweepers (Optuna)
    return float(value) if isinstance(value, (int, float)) else None


if __name__ == "__main__":
    main()
