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
from xfergan.schema import BODY_PARTS

log = logging.getLogger(__name__)

PARTS = BODY_PARTS  # the schema's BodyPart enum, the one list


def panels() -> list[dict[str, Any]]:
    """Every panel the dashboard can have: (section, kind, title, keys). `metrics` are summary or
    history keys; `groupby`/`x` config keys carry the `config.` prefix."""
    return [
        {  # by arm, not by source: teacher and finetune are "real", distill_* "mixed"
            "section": "Synthetic vs real",
            "kind": "bar",
            "title": "test/acc by pipeline arm (mean ± std over seeds)",
            "metrics": ["test/acc"],
            "groupby": "config.arm",
            "question": "Does any arm (synthetic, mixed, teacher, distill_*) beat the real images?",
        },
        {
            "section": "Synthetic vs real",
            "kind": "scatter",
            "title": "test/acc vs real images per class",
            "x": "config.n_per_class",
            "y": "test/acc",
            "question": "Where, in shots per class, does synthetic data help?",
        },
        {
            "section": "GAN quality",
            "kind": "scatter",
            "title": "GAN FID (our features) vs test/acc of the classifier trained on its images",
            "x": "synthetic_val_gan_fid",
            "y": "test/acc",
            "question": "Do better GANs give better classifiers?",
        },
        {
            "section": "GAN quality",
            "kind": "media",
            "title": "latest GAN sample grids (one row per class)",
            "media": ["gan/samples"],
            "question": "What do the synthetic images look like?",
        },
        {
            "section": "Training",
            "kind": "line",
            "title": "val/acc during training, grouped by arm",
            "metrics": ["val/acc"],
            "groupby": "config.arm",
            "question": "Do synthetic-data arms converge differently on the real val set?",
        },
        {
            "section": "MURA",
            "kind": "bar",
            "title": "study-level kappa per body part",
            "metrics": ["test/study_kappa"],
            "groupby": "config.body_part",
            "question": "Which body parts does the model read (kappa > 0), and which not?",
        },
        {
            "section": "Runs",
            "kind": "run_comparer",
            "title": "run comparer",
            "question": "How do two runs' configs and summaries differ?",
        },
    ]


def panel_keys(p: dict) -> list[str]:
    keys = list(p.get("metrics", [])) + list(p.get("media", []))
    keys += [p[k] for k in ("groupby", "x", "y") if p.get(k)]
    return keys


# ----------------------------------------------------------------------------- local runs
def local_runs(root: Path) -> list[dict]:
    """Config and summary keys of the offline W&B runs below `root` (read from the .wandb files)."""
    from xfergan.tracking.wandb_files import read_offline_run

    return [read_offline_run(f) for f in sorted(root.rglob("offline-run-*/run-*.wandb"))]


def has_key(runs: list[dict], key: str) -> bool:
    if key.startswith("config."):
        return any(key[7:] in r["config"] for r in runs)
    return any(key in r["summary"] or key in r["history_keys"] for r in runs)


def build_spec(cfg: DictConfig, group: str, runs: list[dict] | None) -> dict:
    chosen, dropped = [], []
    for p in panels():
        ok = runs is None or all(has_key(runs, k) for k in panel_keys(p))
        (chosen if ok else dropped).append(p)
    return {
        "entity": cfg.logger.entity,
        "project": cfg.logger.project,
        "group": group,
        "panels": chosen,
        "dropped_panels": [p["title"] for p in dropped],
        "runs_checked": None if runs is None else len(runs),
    }


# ----------------------------------------------------------------------------- W&B objects
def build_workspace(spec: dict):
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections: dict[str, list] = {}
    for p in spec["panels"]:
        sections.setdefault(p["section"], []).append(_panel(wr, p))
    return ws.Workspace(
        entity=spec["entity"] or "",
        project=spec["project"],
        name=f"xfergan: {spec['group']}",
        sections=[ws.Section(name=n, panels=ps, is_open=True) for n, ps in sections.items()],
        runset_settings=ws.RunsetSettings(filters=f"Group = '{spec['group']}'"),
    )


def build_report(spec: dict):
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(
        entity=spec["entity"] or "",
        project=spec["project"],
        name=spec["group"],
        filters=f"Group = '{spec['group']}'",
    )
    blocks = [
        wr.H1(text=f"{spec['group']}: synthetic vs real"),
        wr.P(text="Every classifier is tested on the real test set; seeds pair the arms."),
    ]
    for p in spec["panels"]:
        blocks.append(wr.H2(text=p["title"]))
        blocks.append(wr.P(text=p["question"]))
        blocks.append(wr.PanelGrid(runsets=[runset], panels=[_panel(wr, p)]))
    return wr.Report(
        entity=spec["entity"] or "",
        project=spec["project"],
        title=f"xfergan: {spec['group']}",
        blocks=blocks,
    )


def _panel(wr, p: dict):
    k = p["kind"]
    grouped = {
        "groupby": p.get("groupby"),
        "groupby_aggfunc": "mean",
        "groupby_rangefunc": "stddev",
    }
    if k == "bar":
        return wr.BarPlot(title=p["title"], metrics=p["metrics"], **grouped)
    if k == "line":
        return wr.LinePlot(title=p["title"], y=p["metrics"], **grouped)
    if k == "scatter":
        return wr.ScatterPlot(title=p["title"], x=p["x"], y=p["y"])
    if k == "media":
        return wr.MediaBrowser(media_keys=p["media"])
    if k == "run_comparer":
        return wr.RunComparer(diff_only="split")
    raise ValueError(k)


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
    spec = build_spec(cfg, group, runs)
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
