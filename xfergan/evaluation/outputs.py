"""Evaluation after trainer.test: majority baselines (classifiers fitted on the training labels),
study-level (grouped) metrics, per-part metrics, confusion matrix and ROC PNGs. Uses the module's
collected test probabilities."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from xfergan.evaluation import plots
from xfergan.evaluation.metrics import (
    at_threshold,
    binary_metrics,
    decided,
    majority_baseline,
    max_class_share,
)
from xfergan.ranks import is_global_zero
from xfergan.tracking.wandb_backend import log_image

log = logging.getLogger(__name__)


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


def group_labels(labels: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, id) of every group: a study's label is its images' label."""
    ids, inv = torch.unique(groups, return_inverse=True)
    y = torch.zeros(len(ids), dtype=torch.long).scatter_(0, inv, labels)
    return y, ids


def _baseline(out: dict, key: str, train_y, test_y, k: int, names: list[str]) -> None:
    """`<key>majority_acc`: test accuracy of always answering the training majority class;
    `<key>max_class_share`: the test split's own largest class share (not a baseline)."""
    if len(train_y):
        acc, c = majority_baseline(train_y, test_y, k)
        out[f"{key}majority_acc"] = acc
        out[f"{key}majority_class"] = names[c]
    out[f"{key}max_class_share"] = max_class_share(test_y, k)


def grouped_metrics(
    p1,
    labels,
    groups,
    group_parts: list[str] | None,
    train_y: torch.Tensor,
    train_groups: torch.Tensor | None,
    names: list[str],
    prefix: str = "test/",
    threshold: float | None = None,
):
    """Study-level metrics (mean probability of a study's images, decided at the run's threshold:
    0.5, or the val-chosen one), the study-level
    majority baseline (fitted on the training studies), and per body part the same at image and
    study level (baselines fitted on that part's training images / studies)."""
    sp, sy, ids = group_mean(p1, labels, groups)

    def at(q):  # decided at the run's threshold (AUROC does not change)
        return q if threshold is None else at_threshold(q, threshold)

    out = binary_metrics(at(sp), sy, f"{prefix}study_")
    out[f"{prefix}n_studies"] = len(ids)
    ty, tids = (
        group_labels(train_y, train_groups)
        if train_groups is not None and len(train_groups)
        else (torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    )
    _baseline(out, f"{prefix}study_", ty, sy, 2, names)
    if group_parts:
        parts = [group_parts[int(i)] for i in ids]
        img_parts = [group_parts[int(g)] for g in groups]
        train_img_parts = (
            [group_parts[int(g)] for g in train_groups] if train_groups is not None else []
        )
        train_study_parts = [group_parts[int(i)] for i in tids]
        for part in sorted(set(parts)):
            sm = torch.tensor([q == part for q in parts])
            im = torch.tensor([q == part for q in img_parts])
            tim = torch.tensor([q == part for q in train_img_parts], dtype=torch.bool)
            tsm = torch.tensor([q == part for q in train_study_parts], dtype=torch.bool)
            pp = f"{prefix}{part}/"
            out.update(binary_metrics(at(p1[im]), labels[im], pp))
            _baseline(out, pp, train_y[tim] if len(tim) else train_y[:0], labels[im], 2, names)
            out.update(binary_metrics(at(sp[sm]), sy[sm], f"{pp}study_"))
            _baseline(out, f"{pp}study_", ty[tsm] if len(tsm) else ty[:0], sy[sm], 2, names)
    return out, (sp, sy)


def evaluate_test_outputs(
    model, dm, out: Path, loggers: list, threshold: float | None = None
) -> dict[str, float]:
    """Baselines, study-level and per-part metrics, confusion matrix and ROC, all decided by the
    run's rule (`threshold`: a val-chosen P(class 1) threshold, or None for argmax)."""
    o = model.collected_outputs("test")
    if "probs" not in o:
        return {}
    raw, labels = o["probs"], o["labels"]
    probs = decided(raw, threshold)
    names = dm.class_names
    train = dm.real_train  # the baselines are fitted on the run's real training images
    metrics: dict = {}
    _baseline(metrics, "test/", train.y, labels, len(names), names)
    plot = is_global_zero()
    if plot:
        cm = plots.confusion_matrix_png(
            probs,
            labels,
            names,
            out / "confusion_matrix.png",
            title=f"{dm.name} test ({len(labels)} images)",
        )
        log_image(loggers, "test/confusion_matrix", cm)
    if len(names) == 2:
        curves = {"image": (raw[:, 1], labels)}
        groups = o.get("groups")
        if groups is not None and (groups >= 0).all():
            gm, (sp, sy) = grouped_metrics(
                raw[:, 1],
                labels,
                groups,
                getattr(dm, "group_parts", None),
                train.y.cpu(),
                train.group.cpu() if train.group is not None else None,
                names,
                threshold=threshold,
            )
            metrics.update(gm)
            curves["study"] = (sp, sy)
        if plot:
            roc = plots.roc_png(curves, out / "roc.png", title=f"{dm.name} ROC (test)")
            log_image(loggers, "test/roc", roc)
    return metrics


def decided_test_metrics(model, threshold: float | None) -> dict:
    """At a val-chosen threshold: test/acc, balanced_acc, kappa, ... decided at it (the argmax
    values kept as *_argmax) and decision_threshold; nothing for argmax. task=classify and
    task=evaluate both report through here, so they agree exactly."""
    if threshold is None:
        return {}
    test = model.collected_outputs("test")
    out = {"decision_threshold": threshold}
    at_t = binary_metrics(at_threshold(test["probs"][:, 1], threshold), test["labels"], "test/")
    argmax = binary_metrics(test["probs"][:, 1], test["labels"], "test/")
    for k, v in at_t.items():
        if k != "test/auroc":
            out[f"{k}_argmax"] = argmax[k]
            out[k] = v
    return out


def tested_sizes(model, n_split: int) -> dict:
    """How many test images were actually tested. A debug cap (trainer.limit_test_batches, as
    under debug=smoke) tests only the first batches: n_test says so, and test_partial marks the
    numbers as not the test split's."""
    o = model.collected_outputs("test")
    n = int(len(o["labels"])) if "labels" in o else int(n_split)
    out = {"n_test": n, "n_test_split": int(n_split), "test_partial": n < int(n_split)}
    if n < int(n_split):
        log.warning(
            "tested on %d of the %d test images (trainer.limit_test_batches): not a full test",
            n,
            n_split,
        )
    return out
