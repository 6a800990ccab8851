"""Classification metrics, all torchmetrics: loss, accuracy, balanced accuracy and per-class
accuracy for any class count; for two classes also AUROC, Cohen's kappa, F1, sensitivity and
specificity (positive = class 1). Under DDP torchmetrics syncs the states (sums and
concatenations), so every value equals the single-process one. Majority-class baselines are
classifiers fitted on the training labels."""

from __future__ import annotations

import torch
import torchmetrics
from torchmetrics import classification as C


class WeightedMean(torchmetrics.Metric):
    """The batch-size-weighted mean loss. torchmetrics.MeanMetric checks every value for NaN,
    which reads it back (a device sync every training step), and its nan_strategy="disable"
    drops the weights (torchmetrics 1.9). A NaN loss shows here as a NaN mean."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: float) -> None:
        self.total += value.detach().float() * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


class ConfusionCounts(torchmetrics.Metric):
    """Counts of (label, argmax prediction), summed across DDP ranks; accuracy, balanced accuracy
    and per-class accuracy derive from it exactly as torchmetrics' MulticlassAccuracy does
    (micro / macro over classes seen in labels or predictions / None). torchmetrics counts with
    torch.bincount, which on a GPU reads the input's maximum back to the host: a device sync in
    every training step. scatter_add_ needs none."""

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes * num_classes), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        cell = target.long() * self.num_classes + probs.argmax(dim=1)
        self.counts.scatter_add_(0, cell, torch.ones_like(cell, dtype=self.counts.dtype))

    def compute(self) -> dict[str, torch.Tensor]:
        cm = self.counts.view(self.num_classes, self.num_classes)  # rows: labels
        tp, support, predicted = cm.diagonal(), cm.sum(dim=1), cm.sum(dim=0)
        per_class = tp / support.clamp(min=1)  # 0 for a class without labels (tp = 0)
        seen = (support + predicted) > 0  # tp + fp + fn > 0
        return {
            "acc": tp.sum() / cm.sum().clamp(min=1),
            "balanced_acc": (per_class * seen).sum() / seen.sum().clamp(min=1),
            "per_class": per_class,
        }


class ClassificationMetrics(torch.nn.Module):
    """`scores=False` (the training stage): no AUROC and binary metrics, which need every score
    kept and validate their inputs on the host; the rest never waits for the device."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, scores=True):
        super().__init__()
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.loss = WeightedMean()
        self.counts = ConfusionCounts(num_classes)
        self.binary = (
            torchmetrics.MetricCollection(
                {
                    "auroc": C.BinaryAUROC(),
                    "kappa": C.BinaryCohenKappa(),
                    "f1": C.BinaryF1Score(),
                    "sensitivity": C.BinaryRecall(),
                    "specificity": C.BinarySpecificity(),
                }
            )
            if num_classes == 2 and scores
            else None
        )

    def update(
        self,
        probs: torch.Tensor,
        target: torch.Tensor,
        loss: torch.Tensor | None = None,
        n: int | None = None,
    ) -> None:
        if loss is not None:
            self.loss.update(loss, weight=n or len(target))
        self.counts.update(probs, target)
        if self.binary is not None:
            self.binary.update(probs[:, 1], target)

    def compute(self, prefix: str) -> dict[str, float]:
        c = self.counts.compute()
        out = {f"{prefix}/acc": c["acc"].item(), f"{prefix}/balanced_acc": c["balanced_acc"].item()}
        if self.loss.update_count:
            out[f"{prefix}/loss"] = self.loss.compute().item()
        for name, v in zip(self.class_names, c["per_class"].tolist()):
            out[f"{prefix}/acc_class_{name}"] = v
        if self.binary is not None:
            out.update({f"{prefix}/{k}": v.item() for k, v in self.binary.compute().items()})
        return out

    def reset(self) -> None:
        self.loss.reset()
        self.counts.reset()
        if self.binary is not None:
            self.binary.reset()


def binary_metrics(probs1: torch.Tensor, target: torch.Tensor, prefix: str) -> dict[str, float]:
    """Binary metrics of positive-class probabilities (e.g. per study), threshold 0.5; keys are
    `prefix + name`, e.g. prefix "test/study_" gives "test/study_acc"."""
    m = ClassificationMetrics(2)
    p = torch.stack([1 - probs1, probs1], dim=1)
    m.update(p, target)
    out = m.compute("x")
    return {f"{prefix}{k[2:]}": v for k, v in out.items() if not k.startswith("x/acc_class_")}


def majority_class(train_target: torch.Tensor, num_classes: int) -> int:
    """The training split's most frequent class (ties: the lowest class index, as scikit-learn's
    DummyClassifier) -- the majority baseline's one answer."""
    counts = torch.bincount(train_target.cpu(), minlength=num_classes)
    return int(torch.argmax(counts))  # argmax returns the first maximal index


def majority_baseline(
    train_target: torch.Tensor, test_target: torch.Tensor, num_classes: int
) -> tuple[float, int]:
    """(accuracy on test, class) of the classifier that always answers the training majority."""
    c = majority_class(train_target, num_classes)
    return (test_target.cpu() == c).float().mean().item() if len(test_target) else 0.0, c


def max_class_share(target: torch.Tensor, num_classes: int) -> float:
    """Share of a split's own most frequent class (a property of that split, not a baseline)."""
    counts = torch.bincount(target.cpu(), minlength=num_classes)
    return (counts.max().float() / counts.sum().clamp(min=1)).item()


def balanced_acc_threshold(p1: torch.Tensor, target: torch.Tensor) -> float:
    """The threshold on P(class 1) that maximizes balanced accuracy on these (validation)
    predictions; ties go to the one nearest 0.5."""
    p1, target = p1.double().cpu(), target.cpu()
    cands = torch.unique(torch.cat([p1, torch.tensor([0.5], dtype=torch.float64)]))
    pos, neg = (target == 1), (target == 0)
    if not pos.any() or not neg.any():
        return 0.5
    best, best_t = -1.0, 0.5
    for t in cands.tolist():
        pred = p1 >= t
        bal = 0.5 * ((pred & pos).sum() / pos.sum() + (~pred & neg).sum() / neg.sum()).item()
        if bal > best + 1e-12 or (abs(bal - best) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best, best_t = bal, t
    return float(best_t)


def at_threshold(p1: torch.Tensor, t: float) -> torch.Tensor:
    """A monotone map of P(class 1) that puts threshold t at 0.5: argmax-based metrics then
    decide at t, and rank-based ones (AUROC) do not change."""
    p1 = p1.double()
    t = min(max(t, 1e-9), 1 - 1e-9)
    eps = 1e-6  # p == t is called positive (p >= t), as when the threshold was chosen
    upper = 0.5 + eps + (p1 - t) / (2 * (1 - t)) * (1 - 2 * eps)
    return torch.where(p1 < t, p1 / (2 * t) * (1 - 2 * eps), upper).float()


def decided(probs: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Class probabilities whose argmax is the run's decision: unchanged for argmax; for two
    classes and a val-chosen threshold t, P(class 1) mapped by at_threshold (t -> 0.5; AUROC
    and every ranking unchanged). What tests, evaluate, predict and study metrics all use."""
    if threshold is None:
        return probs
    q = at_threshold(probs[:, 1], float(threshold))
    return torch.stack([1 - q, q], dim=1)
