"""task=dashboard group=<experiment> [dir=<its run or sweep dir>]: the W&B workspace and report
that compare synthetic and real runs of one experiment group, built with wandb-workspaces:

  test/acc by pipeline arm (bars, mean ± std over seeds: arms, not sources -- a teacher and a
  fine-tuned model are both "real"), accuracy vs n_per_class (scatter by arm), the synthetic
  set's GAN quality (val/gan_fid) vs test/acc (scatter), val/acc curves grouped by arm, study kappa per body part (MURA), the latest GAN sample grids, a run comparer.

`dir=` (a finished run or sweep dir) keeps only the panels whose keys those runs have. Offline
(the default) the spec is written as dashboard.json into this run's dir with the command that
publishes it; online (logger.mode=online, after `wandb sync`) the workspace and report are saved
and their URLs printed. A group-by on a config key is always `config.<key>`: a bare
`dataset.source` would be read as a section."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xfergan.errors import UserError
from xfergan.io import atomic_write_json
from xfergan.runtime import output_dir
from xfergan.tracking.dashboard import build_report, build_spec, build_workspace, local_runs

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    group = cfg.group or None
    if not group:
        raise UserError("task=dashboard needs group=<experiment name> (the W&B group)")
    runs = None
    if cfg.dir:
        root = Path(cfg.dir)
        if not root.is_dir():
            raise UserError(f"dir={root} does not exist")
        runs = [r for r in local_runs(root) if r["group"] == group]
        if not runs:
            raise UserError(f"no offline W&B run of group {group!r} below {root}")
    spec = build_spec(cfg.logger.entity, cfg.logger.project, group, runs)
    build_workspace(spec)  # the objects build offline too: a spec that would not save fails here
    build_report(spec)
    spec_path = atomic_write_json(out / "dashboard.json", spec)
    result: dict[str, Any] = {
        "dashboard/panels": len(spec["panels"]),
        "dashboard/spec": str(spec_path),
    }
    if cfg.logger.mode == "online":
        try:
            ws_url = build_workspace(spec).save().url
            rep_url = build_report(spec).save().url
        except Exception as e:  # noqa: BLE001 - e.g. no API key, no network
            raise UserError(
                f"could not save the dashboard to W&B ({str(e).splitlines()[0][:160]}); the spec "
                f"is in {spec_path}"
            ) from None
        print(f"workspace: {ws_url}\nreport: {rep_url}")
        result.update({"dashboard/workspace_url": ws_url, "dashboard/report_url": rep_url})
    else:
        print(
            f"dashboard spec ({len(spec['panels'])} panels) written to {spec_path}.\n"
            "Publish it: `wandb sync <run dirs>/wandb/offline-run-*`, then\n"
            f"  WANDB_MODE=online python run.py task=dashboard group={group} logger.mode=online"
        )
    log.info("dashboard: %s", json.dumps([p["title"] for p in spec["panels"]]))
    return result
