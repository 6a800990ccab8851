"""The paper's Table 3 for one pipeline run: plain data (the arms' numbers) in, files out."""

from __future__ import annotations

from pathlib import Path

from xfergan.evaluation.arms import GAN_KEYS
from xfergan.evaluation.plots import bar_chart_png
from xfergan.io import atomic_write_json, atomic_write_text

# Kong, Xu, Yu (ICCSE 2019), MNIST: 320 real images, synthetic only, full training set
PAPER = {"real": 0.8094, "synthetic": 0.9188, "full": 0.9563}


def _number(v) -> str:
    """None: not known (e.g. the fit time of steps resumed from an old checkpoint)."""
    return f"{v:.4g}" if isinstance(v, (int, float)) else "unknown"


def _steps(row: dict) -> str:
    """An arm's optimizer steps (finetune: its pre-training's + its own)."""
    steps = row.get("steps")
    if not isinstance(steps, int):
        return "unknown"
    pre = row.get("steps_pre")
    return f"{pre:,} + {steps:,}" if isinstance(pre, int) else f"{steps:,}"


def write_table3(
    out: Path, dataset: str, n_per_class: int | None, seed: int, table: dict, results: dict
) -> None:
    """One pipeline run's table (table3.json / .md / .png): every arm's test accuracy against
    real's, the paper's MNIST numbers beside it, each arm's optimizer steps and wall time, the
    GAN's quality, its sample grid, the teacher filter and every stage's wall time."""
    paper_ref = PAPER if dataset == "mnist" else {}  # the paper's numbers are MNIST's
    atomic_write_json(
        out / "table3.json",
        {"arms": table, "gan": results, "paper": paper_ref, "seed": int(seed)},
    )
    base = table.get("real", {}).get("test/acc")
    lines = [
        f"# Table 3 — {dataset}, {n_per_class or 'all'} real images per class, seed {seed}",
        "",
        "| arm | training data | real images | synthetic / extra images | steps | wall s | "
        "test acc (real test set) | vs real | paper |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, row in table.items():
        paper = paper_ref.get(arm)
        diff = f"{row['test/acc'] - base:+.4f}" if base is not None and arm != "real" else "—"
        lines.append(
            f"| {arm} | {row['label']} | {row['n_train_real']} | {row['n_train_synthetic']} | "
            f"{_steps(row)} | {_number(row.get('wall_s'))} | "
            f"{row['test/acc']:.4f} | {diff} | {paper if paper is not None else '—'} |"
        )
    if paper_ref:
        lines += [
            "",
            f"Paper, every training image (its Table 1): {paper_ref['full']} (ours: "
            "experiment=paper_table1_full).",
        ]
    gan_keys = [k for k in GAN_KEYS if k in results]
    if gan_keys:
        lines += ["", "GAN: " + ", ".join(f"{k} {_number(results[k])}" for k in gan_keys)]
    kept = [k for k in results if k.startswith("distill/kept_fraction_min")]
    for k in kept:
        lines.append(
            f"Teacher filter ({k.rsplit('_', 1)[-1]}): min kept fraction per class {results[k]:.3f}"
        )
    grids = [f"{s}/samples_final.png" for s in sorted(results.get("gans") or {})]
    grids = [g for g in grids if (out / g).is_file()]
    if results.get("gan/samples") and Path(results["gan/samples"]).is_file():
        grids.insert(0, results["gan/samples"])  # the GAN came from another run (gan_from)
    if grids:
        lines.append("GAN samples: " + ", ".join(grids))
    walls = results.get("stage_wall_s") or {}
    if walls:
        lines += [
            "",
            "Wall time per stage (s): " + ", ".join(f"{k} {_number(v)}" for k, v in walls.items()),
        ]
    lines += ["", "One seed: paired differences over seeds are in task=report's report.md."]
    atomic_write_text(out / "table3.md", "\n".join(lines) + "\n")
    bar_chart_png(
        {a: r["test/acc"] for a, r in table.items()},
        out / "table3.png",
        title="Table 3: classifier test accuracy by training data",
        refs={"paper real (320)": PAPER["real"], "paper synthetic": PAPER["synthetic"]}
        if paper_ref
        else None,
    )
