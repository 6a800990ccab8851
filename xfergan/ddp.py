"""Hydra + Lightning DDP: a child process runs exactly its parent's job.

Lightning's subprocess launcher starts ranks > 0 with `_hydra_subprocess_cmd(local_rank)`, which
re-runs `sys.argv`. Inside a Hydra multirun that argv still holds `-m` and every sweep list, so
each child would start a whole sweep of its own. `pytorch_lightning`'s launcher imported that
function into its own module and calls that copy, so that is the name we replace (and lightning
_fabric's, for Fabric): a child gets this job's overrides, this job's output dir, RUN mode, and
writes no Hydra files of its own. tests/test_reliability.py checks both names and the children's
argv and Hydra mode."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

LAUNCHER_MODULES = (
    "pytorch_lightning.strategies.launchers.subprocess_script",
    "lightning_fabric.strategies.launchers.subprocess_script",
)


def child_command(local_rank: int) -> tuple[Sequence[str], str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    script = os.path.abspath(os.path.join(get_original_cwd(), sys.argv[0]))
    overrides = [o for o in hc.overrides.task if not o.startswith("hydra.")]
    out = str(hc.runtime.output_dir).replace("\\", "\\\\").replace("'", "\\'")
    command = [
        sys.executable,
        script,
        *overrides,
        f"hydra.run.dir='{out}'",
        "hydra.mode=RUN",
        f"hydra.job.name=ddp_rank_{local_rank}",
        "hydra.output_subdir=null",
        # its own log file beside the job's run.log
        f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/run_rank{local_rank}.log",
        "hydra/hydra_logging=disabled",
    ]
    return command, get_original_cwd()


def patch_lightning_launcher() -> None:
    import importlib

    for name in LAUNCHER_MODULES:
        module = importlib.import_module(name)
        if not hasattr(module, "_hydra_subprocess_cmd"):
            raise RuntimeError(
                f"{name} has no _hydra_subprocess_cmd: this Lightning version launches DDP "
                "children differently; xfergan's DDP-in-sweeps support needs updating"
            )
        module._hydra_subprocess_cmd = child_command


DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class job_scope:
    """Around one job of a (possibly multi-)run: Lightning's DDP launcher leaves MASTER_PORT,
    LOCAL_RANK, WORLD_SIZE in the parent's environment and its process group open; the next job
    in the same process would then wait for children that are gone. Restore both at job end."""

    def __enter__(self):
        self.env = {k: os.environ.get(k) for k in DIST_ENV}
        return self

    def __exit__(self, *exc):
        if self.env.get("LOCAL_RANK") is None:  # we were the launching parent (or not DDP)
            for k, v in self.env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            try:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - cleanup only
                pass
        return False
