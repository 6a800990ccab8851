"""The sweep's own Hydra callback.

`SweepSummary` (on for every multirun, conf/hydra/default.yaml): when the last job ends, one
summary of the jobs -- ok / failed / missing, each failure's job dir and one-line error -- and
the command exits non-zero when any job failed or is missing (run.py reads xfergan.outcome).
(`ReportWhenDone`, the report at a sweep's end, belongs to its stage: tasks/report.py.)"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def job_outcomes(root: Path, n_jobs: int | None) -> dict[str, list]:
    """{ok: [dir], failed: [(dir, error)], missing: [dir]} of a sweep's job dirs (0, 1, ...)."""
    from xfergan.io import read_json

    dirs = {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
    if n_jobs:  # a dir beyond this sweep's jobs is an earlier, larger sweep's: not this one's
        dirs = {k: d for k, d in dirs.items() if k < n_jobs}
    for k in range(n_jobs or 0):
        dirs.setdefault(k, root / str(k))
    out: dict[str, list] = {"ok": [], "failed": [], "missing": []}
    for _, d in sorted(dirs.items()):
        f = d / "metrics.json"
        if not f.is_file():
            out["missing"].append(str(d))
            continue
        try:
            m = read_json(f)
        except Exception as e:  # noqa: BLE001 - a damaged file is a failure to report
            out["failed"].append((str(d), str(e)))
            continue
        if m.get("status") == "ok":
            out["ok"].append(str(d))
        else:
            out["failed"].append((str(d), m.get("error") or "failed"))
    return out


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from xfergan import outcome
        from xfergan.progress import sweep_size

        root = Path(config.hydra.sweep.dir)
        if not root.is_dir():
            return
        o = job_outcomes(root, sweep_size())
        n = sum(len(v) for v in o.values())
        lines = [
            f"sweep {root}: {n} jobs -- {len(o['ok'])} ok, {len(o['failed'])} failed, "
            f"{len(o['missing'])} missing (no metrics.json: killed or never started)"
        ]
        lines += [f"  FAILED  {d}: {err}" for d, err in o["failed"]]
        lines += [f"  MISSING {d}" for d in o["missing"]]
        for line in lines:
            log.info(line)
        print("\n".join(lines))
        if o["failed"] or o["missing"]:
            outcome.failures.append(lines[0])
