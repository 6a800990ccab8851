"""Synthetic datasets written by task=synthesize (or task=pseudolabel): `synthetic.pt` (uint8
images, labels, optional teacher soft labels, and the ids of the real images the GAN saw) next to
`manifest.json` (source checkpoint + sha256, seed, counts per class, image size, file sha256,
`real_data`: the identity of the GAN's real training images). A file whose manifest does not
match is refused; a set made from other real images than the run's own is refused too (see
`check_provenance`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from datamodules.provenance import check_seen, describe
from datamodules.split import Split
from xfergan.errors import UserError
from xfergan.io import atomic_torch_save, atomic_write_json, read_json, sha256_file
from xfergan.transforms import resize

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATA_FILE = "synthetic.pt"


@dataclass
class SyntheticSet:
    split: Split
    manifest: dict[str, Any]
    path: Path
    real_uids: torch.Tensor | None  # ids of the real images its GAN (or teacher set) came from


def resolve_synthetic(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / DATA_FILE
    return p


def write_synthetic(
    out_dir: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    meta: dict,
    real_uids: torch.Tensor | None = None,
    soft: torch.Tensor | None = None,
    pre_augmented: bool = False,
) -> Path:
    """Write synthetic.pt, then manifest.json (both atomically). The manifest is written last, so a
    reader never sees a manifest without its finished data file."""
    if images.dtype != torch.uint8:
        raise ValueError("synthetic images must be uint8")
    data_path = out_dir / DATA_FILE
    blob = {"images": images.cpu().contiguous(), "labels": labels.cpu().long()}
    if real_uids is not None:
        blob["real_train_uids"] = real_uids.cpu().long()
    if soft is not None:
        blob["soft"] = soft.cpu().float()
    atomic_torch_save(blob, data_path)
    counts = torch.bincount(labels.cpu(), minlength=meta.get("num_classes", 0)).tolist()
    manifest = {
        **meta,
        "file": DATA_FILE,
        "sha256": sha256_file(data_path),
        "n_images": int(len(labels)),
        "counts_per_class": counts,
        "image_size": int(images.shape[-1]),
        "channels": int(images.shape[1]),
        "soft_labels": soft is not None,
        "pre_augmented": pre_augmented,  # made augmented: training does not augment them again
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    return data_path


def load_synthetic(
    path: str | Path, num_classes: int, like: torch.Tensor | None = None
) -> SyntheticSet:
    """Load and check a synthetic set; resize it to the real images' size/channels (`like`)."""
    data_path = resolve_synthetic(path)
    manifest_path = data_path.parent / MANIFEST
    if not data_path.is_file():
        raise UserError(f"synthetic dataset {data_path} does not exist; run task=synthesize first")
    if not manifest_path.is_file():
        raise UserError(
            f"synthetic dataset {data_path} has no {MANIFEST} beside it; re-run task=synthesize"
        )
    m = read_json(manifest_path)
    digest = sha256_file(data_path)
    if m.get("sha256") != digest:
        raise UserError(
            f"synthetic dataset {data_path} does not match its manifest (sha256 {digest[:12]} != "
            f"{str(m.get('sha256'))[:12]}); the file was changed or half-written: re-run task=synthesize"
        )
    blob = torch.load(data_path, map_location="cpu", weights_only=True)
    x, y = blob["images"], blob["labels"].long()
    counts = torch.bincount(y, minlength=num_classes).tolist()
    if len(counts) != num_classes or m.get("num_classes", num_classes) != num_classes:
        raise UserError(
            f"synthetic dataset {data_path} has {m.get('num_classes', len(counts))} classes but the "
            f"real dataset has {num_classes}; synthesize from a GAN trained on this dataset"
        )
    if counts != m.get("counts_per_class"):
        raise UserError(
            f"synthetic dataset {data_path}: counts per class {counts} != manifest "
            f"{m.get('counts_per_class')}; re-run task=synthesize"
        )
    if like is not None:
        c, h = like.shape[1], like.shape[-1]
        if x.shape[1] != c or x.shape[-1] != h:
            xf = resize(x.float() / 255.0, h)
            if xf.shape[1] != c:
                xf = xf.mean(1, keepdim=True) if c == 1 else xf.expand(-1, c, -1, -1)
            x = (xf.clamp(0, 1) * 255).round().to(torch.uint8)
    soft = blob.get("soft")
    fixed = torch.ones(len(y), dtype=torch.bool) if m.get("pre_augmented") else None
    return SyntheticSet(
        Split(x.contiguous(), y, soft=soft.float() if soft is not None else None, fixed=fixed),
        m,
        data_path,
        blob.get("real_train_uids"),
    )


def check_provenance(s: SyntheticSet, dm, splits) -> dict[str, Any]:
    """The synthetic images must come from a GAN (or teacher) trained on exactly this run's real
    training images, and on none of its val or test images (datamodules.provenance.check_seen).
    A set whose models saw test images is always refused; anything else can be overridden with
    dataset.synthetic_provenance=ignore, and is then flagged in metrics.json
    (`synthetic_foreign: true`)."""
    theirs = s.manifest.get("real_data")
    res = check_seen(
        s.real_uids if theirs is not None else None,
        theirs,
        dm,
        splits,
        f"synthetic set {s.path} (the models that made it)",
        dm.synthetic_provenance,
        "dataset.synthetic_provenance",
    )
    info: dict[str, Any] = {
        "synthetic_provenance": dm.synthetic_provenance,
        "synthetic_real_data": describe(theirs) if theirs else None,
        "synthetic_foreign": res["foreign"],
        "synthetic_leak_val": res["leak_val"],
    }
    if res["foreign"]:
        info["synthetic_foreign_reason"] = res["reason"]
    return info
