"""Evaluation after trainer.test: majority baseline, study-level (grouped) metrics, per-part
metrics, confusion matrix and ROC PNGs. Uses the module's collected test probabilities."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_modules.metrics import binary_metrics, majority_acc
from tasks import plots
from tasks.wandb_utils import log_image


def group_mean(p1: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor):
    """Mean positive probability per group (study), the group's label, and its id."""
    ids, inv = torch.unique(groups, return_inverse=True)
    n = len(ids)
    s = torch.zeros(n, dtype=torch.float64).index_add_(0, inv, p1.double())
    c = torch.zeros(n, dtype=torch.float64).index_add_(
        0, inv, torch.ones_like(p1, dtype=torch.float64)
    )
    y = torch.zeros(n, dtype=torch.long).scatter_(0, inv, labels)
    return (s / c).float(), y, ids


def grouped_metrics(p1, labels, groups, group_parts: list[str] | None, prefix: str = "test/"):
    sp, sy, ids = group_mean(p1, labels, groups)
    out = binary_metrics(sp, sy, f"{prefix}study_")
    out[f"{prefix}study_majority_acc"] = majority_acc(sy, 2)
    out[f"{prefix}n_studies"] = len(ids)
    if group_parts:
        parts = [group_parts[int(i)] for i in ids]
        img_parts = [group_parts[int(g)] for g in groups]
        for part in sorted(set(parts)):
            sm = torch.tensor([q == part for q in parts])
            im = torch.tensor([q == part for q in img_parts])
            pp = f"{prefix}{part}/"
            out.update(binary_metrics(p1[im], labels[im], pp))
            out[f"{pp}majority_acc"] = majority_acc(labels[im], 2)
            out.update(binary_metrics(sp[sm], sy[sm], f"{pp}study_"))
            out[f"{pp}study_majority_acc"] = majority_acc(sy[sm], 2)
    return out, (sp, sy)


def evaluate_test_outputs(model, dm, out: Path, loggers: list) -> dict[str, float]:
    o = model.collected_test_outputs()
    if "probs" not in o:
        return {}
    probs, labels = o["probs"], o["labels"]
    names = dm.class_names
    metrics: dict[str, float] = {"test/majority_acc": majority_acc(labels, len(names))}
    cm = plots.confusion_matrix_png(
        probs,
        labels,
        names,
        out / "confusion_matrix.png",
        title=f"{dm.name} test ({len(labels)} images)",
    )
    log_image(loggers, "test/confusion_matrix", cm)
    if len(names) == 2:
        curves = {"image": (probs[:, 1], labels)}
        groups = o.get("groups")
        if groups is not None and (groups >= 0).all():
            gm, (sp, sy) = grouped_metrics(
                probs[:, 1], labels, groups, getattr(dm, "group_parts", None)
            )
            metrics.update(gm)
            curves["study"] = (sp, sy)
        roc = plots.roc_png(curves, out / "roc.png", title=f"{dm.name} ROC (test)")
        log_image(loggers, "test/roc", roc)
    return metrics
