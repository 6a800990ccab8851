"""The W&B dashboard spec that compares synthetic and real runs of one experiment group (plain
data: panels, their keys, the offline runs that have them), and the wandb-workspaces objects
built from it. task=dashboard (tasks/dashboard.py) writes and publishes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xfergan.schema import BODY_PARTS

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
        {  # semi and semi_gan runs carry the pool's size (config.n_unlabelled, config.semi_method)
            "section": "Unlabelled images",
            "kind": "scatter",
            "title": "test/acc vs the unlabelled pool's size (semi, semi_gan; 0: labelled only)",
            "x": "config.n_unlabelled",
            "y": "test/acc",
            "question": "Do the unlabelled images beat the labelled ones alone (semi - real)?",
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


def build_spec(entity: str | None, project: str, group: str, runs: list[dict] | None) -> dict:
    """The panels for `group`; with `runs` (offline runs read from disk) only those whose keys
    the runs have."""
    chosen, dropped = [], []
    for p in panels():
        ok = runs is None or all(has_key(runs, k) for k in panel_keys(p))
        (chosen if ok else dropped).append(p)
    return {
        "entity": entity,
        "project": project,
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
