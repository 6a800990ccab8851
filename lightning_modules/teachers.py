"""Frozen classifiers that feed another model (distillation teachers, the GAN's guide): loaded
from a finished classify run, and checked to have seen exactly this run's real images
(datamodules.provenance.check_seen) like any model that feeds another."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from datamodules.provenance import check_seen
from lightning_modules.classifier import ClassifierModule
from xfergan.errors import UserError
from xfergan.runtime import find_checkpoint


def teacher_checkpoint(spec: str, key: str = "distill.teacher") -> Path:
    """A finished task=classify run dir (a pipeline stage dir too: its tested checkpoint) or a
    checkpoint file."""
    p = Path(spec)
    if p.is_dir():
        return find_checkpoint(p, "tested")[0]
    if not p.is_file():
        raise UserError(f"{key}={spec} does not exist (a classify run dir or a .ckpt)")
    return p


def load_teachers(
    spec, num_classes: int, key: str = "distill.teacher"
) -> list[tuple[ClassifierModule, Path]]:
    """The classifiers `spec` names (a run dir or checkpoint, or a list of them), frozen."""
    if not spec:
        raise UserError(f"{key} needs a classify run dir or .ckpt")
    specs = [spec] if isinstance(spec, str) else list(spec)
    out = []
    for s in specs:
        path = teacher_checkpoint(str(s), key)
        model = ClassifierModule.load_safely(str(path))
        if model.hparams.num_classes != num_classes:
            raise UserError(
                f"teacher {path} predicts {model.hparams.num_classes} classes but this dataset "
                f"has {num_classes}: use a teacher trained on this dataset"
            )
        out.append((model, path))
    return out


def teacher_seen(
    cfg: DictConfig, dm, teachers, metrics: dict, prefix: str = "teacher", label: str = "teacher"
) -> list:
    """Every teacher (ensemble member) must have seen exactly this run's real training images
    (datamodules.provenance.check_seen; dataset.model_provenance=ignore overrides, recorded as
    teacher_foreign in metrics.json). Returns each teacher's seen ids (None: unknown)."""
    reasons, out = [], []
    for model, path in teachers:
        rec = model.provenance or {}
        res = check_seen(
            rec.get("seen_uids"),
            rec or None,
            dm,
            dm.splits,
            f"{label} {path}",
            str(cfg.dataset.model_provenance),
            "dataset.model_provenance",
        )
        if res["foreign"]:
            reasons.append(f"{path}: {res['reason']}")
        out.append(rec.get("seen_uids"))
    metrics[f"{prefix}_foreign"] = bool(reasons)
    if reasons:
        metrics[f"{prefix}_foreign_reason"] = "; ".join(reasons)
    return out
