"""task=pseudolabel: a teacher classifier (or an ensemble: the mean of their probabilities) labels
extra training images with its soft predictions -- knowledge from outside the few real labels
(ImageNet pre-training, other architectures) turned into training targets.

    distill.source=synthetic  a GAN's set (dataset.synthetic_path): keeps the images the teacher
                              puts in the GAN's conditioning class with p >= distill.min_confidence
    distill.source=real       augmented copies of the run's real training images: the control
                              that needs no GAN

Writes synthetic.pt (images, labels, soft labels, the real images' ids) + manifest.json like
task=synthesize; task=classify uses it with dataset.source=mixed. metrics.json holds the kept
fraction per class."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from datamodules.base import uids_digest
from datamodules.provenance import foreign_reasons, union
from datamodules.synthetic import check_provenance, load_synthetic, write_synthetic
from lightning_modules.classifier import ClassifierModule
from lightning_modules.teachers import load_teachers, teacher_seen
from xfergan import transforms as T
from xfergan.devices import job_device
from xfergan.errors import UserError
from xfergan.io import sha256_file
from xfergan.runtime import output_dir
from xfergan.training import batch_limit, build_datamodule, load_data

log = logging.getLogger(__name__)


@torch.no_grad()
def teacher_probs(
    teachers: list[ClassifierModule],
    x: torch.Tensor,
    batch_size: int,
    temperature: float,
    dev: torch.device | None = None,
) -> torch.Tensor:
    """Mean tempered softmax of the teachers over uint8 images, each teacher with the input
    preprocessing it was trained with (size, channels, normalization)."""
    dev = dev or torch.device("cpu")
    total = torch.zeros(len(x), teachers[0].hparams.num_classes)
    for t in teachers:
        t = t.to(dev).eval()
        for i in tqdm(range(0, len(x), batch_size), desc="teacher", unit="batch", leave=False):
            xb = T.for_model(x[i : i + batch_size].to(dev), t.hparams.input_spec)
            total[i : i + batch_size] += (t(xb).float() / temperature).softmax(1).cpu()
    return total / len(teachers)


def augmented_copies(dm, n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n_per_class augmented copies per class of the real training images (cycling through each
    class's images), with the dataset's augmentation settings, as uint8."""
    real = dm.real_train
    a = dict(dm.augment)
    g = torch.Generator().manual_seed(seed + 4242)
    xs, ys = [], []
    for c in range(dm.num_classes):
        idx = torch.nonzero(real.y.cpu() == c).flatten()
        if not len(idx):
            continue
        pick = idx[torch.randperm(len(idx), generator=g).repeat(n_per_class // len(idx) + 1)]
        xs.append(real.x.cpu()[pick[:n_per_class]])
        ys.append(torch.full((n_per_class,), c, dtype=torch.long))
    x, y = torch.cat(xs), torch.cat(ys)
    torch.manual_seed(seed + 4243)
    out = []
    for i in range(0, len(x), 1000):
        xf = T.augment(T.to_float(x[i : i + 1000]), a)
        out.append((xf.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(out), y


def run(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    d = cfg.distill
    if d.source not in ("synthetic", "real"):
        raise UserError(f"distill.source={d.source!r}: use synthetic or real")
    if not 0.0 < float(d.min_confidence) <= 1.0:
        raise UserError(f"distill.min_confidence={d.min_confidence} must be in (0, 1]")
    if float(d.temperature) <= 0:
        raise UserError(f"distill.temperature={d.temperature} must be positive")
    dm = build_datamodule(cfg, source="real")
    load_data(dm, out)
    k = dm.num_classes
    teachers = load_teachers(d.teacher, k)
    metrics: dict = {}
    seen = [dm.real_train.uid, *teacher_seen(cfg, dm, teachers, metrics)]
    if d.source == "synthetic":
        if not cfg.dataset.synthetic_path:
            raise UserError(
                "distill.source=synthetic needs dataset.synthetic_path=<synthesize dir>"
            )
        s = load_synthetic(cfg.dataset.synthetic_path, k)
        metrics.update(check_provenance(s, dm, dm.splits))  # the GAN's: this run's subset only
        x, y = s.split.x, s.split.y
        seen.append(s.real_uids)
        origin = {"synthetic_path": str(s.path), "synthetic_sha256": s.manifest.get("sha256")}
    else:
        n = int(d.n_per_class or cfg.synthesize.n_per_class)
        x, y = augmented_copies(dm, n, int(cfg.seed))
        origin = {"augmented_real": n}
    # the set's provenance: every real image its teachers and its GAN saw (unknown if any
    # part is unknown), so a run training on it checks them all
    real_uids = None if any(u is None for u in seen) else union(*seen)
    prov = {
        **dm.provenance(),
        "train_ids_sha256": uids_digest(real_uids) if real_uids is not None else None,
        "n_images": len(real_uids) if real_uids is not None else None,
    }
    if foreign := foreign_reasons(metrics):  # a foreign teacher or GAN: the set is foreign
        prov["foreign"] = foreign
    models = [t for t, _ in teachers]
    if d.evaluate_teacher:  # reported next to the arms; nothing is chosen with it
        for split in ("val", "test"):
            s_ = getattr(dm.splits, split)
            limit = batch_limit(cfg, split)
            n = len(s_)
            if limit:  # as the trainer would (debug=smoke)
                n = min(n, limit * dm.eval_batch_size)
            if n:
                p = teacher_probs(models, s_.x[:n], int(d.batch_size), 1.0, job_device(cfg))
                metrics[f"teacher/{split}_acc"] = (
                    (p.argmax(1) == s_.y[:n].cpu()).float().mean().item()
                )
    probs = teacher_probs(models, x, int(d.batch_size), float(d.temperature), job_device(cfg))
    conf, pred = probs.max(1)
    if d.source == "synthetic":
        keep = (pred == y) & (probs.gather(1, y[:, None])[:, 0] >= float(d.min_confidence))
    else:
        keep = torch.ones(len(y), dtype=torch.bool)
    metrics.update(
        {
            "distill/source": d.source,
            "distill/n_candidates": len(y),
            "distill/n_kept": int(keep.sum()),
            "distill/teacher_agreement": (pred == y).float().mean().item(),
            "distill/n_teachers": len(models),
        }
    )
    fractions = []
    for c, name in enumerate(dm.class_names):
        m = y == c
        f = keep[m].float().mean().item() if m.any() else 0.0
        metrics[f"distill/kept_fraction_class_{name}"] = f
        fractions.append(f)
    metrics["distill/kept_fraction_min"] = min(fractions)
    metrics["distill/kept_fraction_mean"] = sum(fractions) / len(fractions)
    if not keep.any():  # the arm then trains on the real images alone: reported, not hidden
        log.warning(
            "the teacher kept no image at distill.min_confidence=%s: the extra set is empty",
            d.min_confidence,
        )
    for name, f in zip(dm.class_names, fractions):
        if f == 0:
            log.warning("class %s: the teacher kept none of its images", name)
    meta = {
        **origin,
        "seed": int(cfg.seed),
        "num_classes": k,
        "class_names": dm.class_names,
        "teachers": [{"checkpoint": str(p), "sha256": sha256_file(p)} for _, p in teachers],
        "min_confidence": float(d.min_confidence),
        "temperature": float(d.temperature),
        "source": d.source,
        "kept_fraction_per_class": fractions,
        "real_data": prov,
    }
    path = write_synthetic(
        out,
        x[keep],
        y[keep],
        meta,
        real_uids=real_uids,
        soft=probs[keep],
        pre_augmented=d.source == "real",  # the teacher labelled these augmented views
    )
    log.info("wrote %s: %d of %d images kept", path, int(keep.sum()), len(y))
    metrics["synthetic_path"] = str(path)
    return metrics
