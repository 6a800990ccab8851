"""PNG plots a person reads instead of numbers: confusion matrix, ROC curve, bar charts."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics.classification import BinaryROC, MulticlassConfusionMatrix  # noqa: E402

from xfergan.io import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def confusion_matrix_png(
    probs: torch.Tensor, labels: torch.Tensor, class_names: list[str], path: Path, title: str = ""
) -> Path:
    n = len(class_names)
    cm = MulticlassConfusionMatrix(n)(probs, labels).numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_xticks(range(n), class_names, rotation=45 if n > 4 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (test)")
    return _save(fig, path)


def roc_png(
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, title: str = "ROC (test)"
) -> Path:
    """curves: label -> (positive-class probabilities, targets)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, (p, y) in curves.items():
        fpr, tpr, _ = BinaryROC()(p, y)
        ax.plot(fpr.numpy(), tpr.numpy(), label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def bar_chart_png(
    values: dict[str, float],
    path: Path,
    title: str,
    ylabel: str = "test accuracy",
    errors: dict[str, float] | None = None,
    refs: dict[str, float] | None = None,
) -> Path:
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(values), 3.6))
    names = list(values)
    err = [errors.get(k, 0.0) for k in names] if errors else None
    bars = ax.bar(names, [values[k] for k in names], yerr=err, capsize=4, color="#4c72b0")
    for b, k in zip(bars, names):
        ax.text(
            b.get_x() + b.get_width() / 2,
            b.get_height(),
            f"{values[k]:.3f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    for i, (label, v) in enumerate((refs or {}).items()):
        ax.axhline(v, ls="--", lw=0.9, color=f"C{i + 1}", label=label)
    if refs:
        ax.legend(fontsize=7, loc="lower right")
    if all(0 <= v <= 1 for v in values.values()):  # a rate: on its whole scale
        ax.set_ylim(0, 1.05)
    else:  # FID, a negative kappa: the values' own scale, labels inside
        ax.margins(y=0.15)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)
