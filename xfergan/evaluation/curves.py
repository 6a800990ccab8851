"""Where each method is heading: the val accuracy logged during training (each stage's CSV log,
csv/metrics.csv) against the classifier's optimizer steps, per arm and n_per_class over seeds:
report_curves.csv (every point) and plot_val_curves.png (the seed mean per arm). Val only: the
test split is evaluated once, at the end."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

from xfergan.io import atomic_write_text

METRIC = "val/acc"


def _stages(run: dict) -> list[tuple[str, Path]]:
    """(arm, stage dir) of a pipeline's classify stages, or the run itself."""
    d = Path(run["_dir"])
    if run.get("task") == "pipeline":
        return [(p.name.removeprefix("classify_"), p) for p in sorted(d.glob("classify_*"))]
    return [(str(run.get("arm") or run.get("source") or "run"), d)]


def _points(stage: Path) -> list[tuple[int, float]]:
    f = stage / "csv" / "metrics.csv"
    if not f.is_file():
        return []
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


def training_curves(runs: list[dict]) -> list[dict]:
    """Every logged val/acc point of every classifier stage under the report's runs."""
    pts = []
    for r in runs:
        if r.get("status") != "ok":
            continue
        for arm, stage in _stages(r):
            for step, v in _points(stage):
                pts.append(
                    {
                        "n_per_class": r.get("n_per_class"),
                        "seed": r.get("seed"),
                        "arm": arm,
                        "step": step,
                        METRIC: v,
                    }
                )
    return pts


def write_curves(root: Path, runs: list[dict]) -> Path | None:
    """report_curves.csv and plot_val_curves.png when any stage logged val/acc (logger=csv)."""
    pts = training_curves(runs)
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

    from xfergan.evaluation.plots import _save

    ns = sorted({p["n_per_class"] for p in pts}, key=str)
    fig, axes = plt.subplots(1, len(ns), figsize=(5.2 * len(ns), 3.8), squeeze=False)
    for ax, n in zip(axes[0], ns):
        by = defaultdict(lambda: defaultdict(list))
        for p in pts:
            if p["n_per_class"] == n:
                by[p["arm"]][p["step"]].append(p[METRIC])
        for arm, steps in sorted(by.items()):
            xs = sorted(steps)
            ys = [sum(steps[x]) / len(steps[x]) for x in xs]
            seeds = max(len(v) for v in steps.values())
            ax.plot(xs, ys, marker=".", label=f"{arm} ({seeds} seeds)")
        ax.set_title(f"n_per_class={n}")
        ax.set_xlabel("classifier optimizer steps")
        ax.set_ylabel(f"{METRIC} (seed mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, root / "plot_val_curves.png")
