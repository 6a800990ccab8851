"""Hydra + Lightning DDP without extra output dirs.

Lightning's subprocess launcher re-runs `sys.argv` for ranks > 0. Under a Hydra multirun that
argv still holds `-m` and the whole sweep, so each child would start a sweep of its own in new
dirs. We replace its command builder: a child gets exactly this job's overrides and this job's
output dir, and writes no Hydra files of its own."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def _child_cmd(local_rank: int) -> tuple[Sequence[str], str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    script = os.path.abspath(os.path.join(get_original_cwd(), sys.argv[0]))
    overrides = [o for o in hc.overrides.task if not o.startswith("hydra.")]
    command = [
        sys.executable,
        script,
        *overrides,
        f"hydra.run.dir={hc.runtime.output_dir}",
        f"hydra.job.name=ddp_rank_{local_rank}",
        "hydra.output_subdir=null",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    return command, get_original_cwd()


def patch_lightning_launcher() -> None:
    from lightning_fabric.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = _child_cmd
