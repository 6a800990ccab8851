"""Where each method is heading: the val accuracy logged during training (each stage's CSV log,
csv/metrics.csv) against the classifier's optimizer steps, per arm and report group over seeds:
report_curves.csv (every point) and plot_val_curves.png (the seed mean per arm). Val only: the
test split is evaluated once, at the end."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

from xfergan.io import atomic_write_text, earlier_logs

METRIC = "val/acc"


def _stages(run: dict) -> list[tuple[str, Path]]:
    """(arm, stage dir) of a pipeline's classify stages, or the run itself."""
    d = Path(run["_dir"])
    if run.get("task") == "pipeline":
        return [(p.name.removeprefix("classify_"), p) for p in sorted(d.glob("classify_*"))]
    return [(str(run.get("arm") or run.get("source") or "run"), d)]


def _read(f: Path) -> list[tuple[int, float]]:
    try:
        rows = list(csv.DictReader(io.StringIO(f.read_text())))
    except (OSError, ValueError):
        return []
    # the loggers' step is the batches that stepped: the classifier's steps, also for a module
    # that steps a generator too (a semi-supervised GAN)
    out = []
    for r in rows:
        v, s = r.get(METRIC), r.get("step")
        if v and s:
            out.append((int(float(s)), float(v)))
    return out


def _points(stage: Path) -> list[tuple[int, float]]:
    """The stage's val points over every attempt (a resumed stage's earlier logs are
    csv/metrics.<k>.csv, xfergan/training.keep_earlier_log): an attempt's points replace the
    earlier ones from its first logged step on (those were logged after the checkpoint it
    continued, by the attempt that then stopped)."""
    pts: list[tuple[int, float]] = []
    for f in [*earlier_logs(stage), stage / "csv" / "metrics.csv"]:
        new = _read(f) if f.is_file() else []
        if new:
            first = min(s for s, _ in new)
            pts = [p for p in pts if p[0] < first] + new
    return pts


def training_curves(runs: list[dict], keys: list[str]) -> list[dict]:
    """Every logged val/acc point of every classifier stage under the report's runs, with the
    run's group (the report's swept keys): one run per seed and group, as the report's tables
    take it (arms.one_per_seed)."""
    from xfergan.evaluation.arms import one_per_seed, report_groups

    pts = []
    for gkey, rs in report_groups(runs, keys).items():
        for r in one_per_seed(rs)[0]:
            for arm, stage in _stages(r):
                for step, v in _points(stage):
                    row = dict(zip(keys, gkey))
                    row.update({"seed": r.get("seed"), "arm": arm, "step": step, METRIC: v})
                    pts.append(row)
    return pts


def write_curves(root: Path, runs: list[dict], keys: list[str]) -> Path | None:
    """report_curves.csv and plot_val_curves.png (a panel per group of the report, a line per
    arm: the mean over its seeds at each step) when any stage logged val/acc (logger=csv)."""
    pts = training_curves(runs, keys)
    if not pts:
        return None
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(pts[0]))
    w.writeheader()
    w.writerows(pts)
    atomic_write_text(root / "report_curves.csv", buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xfergan.evaluation.arms import num_key
    from xfergan.evaluation.plots import _save

    panels = sorted({tuple(p[k] for k in keys) for p in pts}, key=lambda g: [num_key(v) for v in g])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, g in zip(axes[0], panels):
        by = defaultdict(lambda: defaultdict(list))
        seeds = defaultdict(set)
        for p in pts:
            if tuple(p[k] for k in keys) == g:
                by[p["arm"]][p["step"]].append(p[METRIC])
                seeds[p["arm"]].add(p["seed"])
        for arm, steps in sorted(by.items()):
            xs = sorted(steps)
            ys = [sum(steps[x]) / len(steps[x]) for x in xs]
            ax.plot(xs, ys, marker=".", label=f"{arm} ({len(seeds[arm])} seeds)")
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(keys, g)) or "all runs", fontsize=9)
        ax.set_xlabel("classifier optimizer steps")
        ax.set_ylabel(f"{METRIC} (seed mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, root / "plot_val_curves.png")
