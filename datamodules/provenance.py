"""Provenance of every model that feeds another: which real images it saw, and the check a run
makes before it uses one (a GAN's set, a pseudolabel teacher, an ensemble member, a model.init
checkpoint). A record is a plain dict: the identity keys of the datamodule that made it, the
sha256 of its train / val / test image ids, and `seen_uids`, the ids of every real image that
went into the model, its inputs' models included (a GAN's images count as the GAN's real ones)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch

from xfergan.errors import UserError

log = logging.getLogger(__name__)

POLICIES = ("check", "ignore")


def uids_of(names: list[str]) -> torch.Tensor:
    """A stable 64-bit id per sample name (e.g. "mnist/train/123", a MURA path): what provenance
    records and compares, whatever size or preprocessing the images are read at."""
    return torch.tensor(
        [
            int.from_bytes(
                hashlib.blake2b(n.encode(), digest_size=8).digest(), "little", signed=True
            )
            for n in names
        ],
        dtype=torch.long,
    )


def uids_digest(uids: torch.Tensor) -> str:
    """sha256 of the sorted ids: the identity of a set of images."""
    return hashlib.sha256(torch.sort(uids.cpu()).values.numpy().tobytes()).hexdigest()


def union(*uids: torch.Tensor | None) -> torch.Tensor | None:
    """The sorted distinct ids of several id tensors (None when none is known)."""
    known = [u.cpu().long() for u in uids if u is not None]
    if not known:
        return None
    return torch.unique(torch.cat(known))


def describe(p: dict | None) -> str:
    """One line naming a set of real images: 'mnist n_per_class=32 seed=0 (320 images, ids 1a2b3c4d)'."""
    if not p:
        return "unknown real images"
    keys = [
        k
        for k in ("dataset", "body_part", "n_per_class", "val_per_class", "val_fraction", "seed")
        if k in p
    ]
    head = p.get("dataset", "?")
    parts = [f"{k}={p[k]}" for k in keys if k != "dataset"]
    ids = str(p.get("train_ids_sha256") or "none")[:8]
    pool = f" + {p['n_unlabelled']} unlabelled" if p.get("n_unlabelled") else ""
    return f"{head} {' '.join(parts)} ({p.get('n_images', '?')} images{pool}, ids {ids})"


def check_seen(
    seen: torch.Tensor | None,
    theirs: dict | None,
    dm,
    splits,
    what: str,
    policy: str,
    override: str,
) -> dict[str, Any]:
    """A model (or set) that feeds this run must have seen exactly this run's real training
    images and none of its val or test images. Seeing test images is refused whatever `policy`
    says; anything else stops with one line unless policy=ignore, and is then returned as a
    problem for metrics.json. Returns {"foreign": bool, "reason": str | None, "leak_val": int}."""
    if policy not in POLICIES:
        raise UserError(f"{override}={policy!r}: use check or ignore")
    own = dm.provenance()
    leak = {}
    if seen is not None:
        for name in ("val", "test"):
            uid = getattr(splits, name).uid
            leak[name] = int(torch.isin(seen, uid.cpu()).sum()) if uid is not None else 0
    if leak.get("test"):
        raise UserError(
            f"{what} saw {leak['test']} images of this run's test split ({describe(theirs)}): "
            f"refused whatever {override} says; train it on training images only"
        )
    problems = []
    if theirs and theirs.get("foreign"):  # taken with an override somewhere upstream
        problems.append("it was made from a foreign input (" + "; ".join(theirs["foreign"]) + ")")
    if seen is None:
        problems.append("it records no image ids (re-run the stage that made it)")
    elif own.get("train_ids_sha256") is None:
        problems.append(f"this dataset ({dm.name}) records no sample ids to compare")
    elif uids_digest(seen) != own["train_ids_sha256"]:
        problems.append(
            f"it was trained on {describe(theirs)} ({len(seen)} real images), this run on "
            f"{describe(own)}"
        )
    if leak.get("val"):
        problems.append(f"it saw {leak['val']} images of this run's val split")
    reason = "; ".join(problems) or None
    if reason and policy != "ignore":
        raise UserError(
            f"{what}: {reason}. Use one trained on this run's own subset (same dataset, "
            f"n_per_class and seed), or set {override}=ignore to use it anyway (flagged in "
            "metrics.json)"
        )
    if reason:
        log.warning("using a foreign %s (%s=ignore): %s", what, override, reason)
    return {"foreign": bool(reason), "reason": reason, "leak_val": leak.get("val", 0)}


def check_instrument(
    seen: torch.Tensor | None, dm, split: str, what: str, policy: str, override: str
) -> dict[str, Any]:
    """A model that measures this run's models on its `split` images (the GAN's feature net)
    shapes no model, so it may have seen any training images, but never this run's test images
    (refused whatever `policy` says) nor the images it measures on (one line unless
    policy=ignore, then returned as a problem for metrics.json). Returns {"foreign", "reason"}."""
    if policy not in POLICIES:
        raise UserError(f"{override}={policy!r}: use check or ignore")
    leak = {}
    if seen is not None:
        for name in {"test", split}:
            uid = getattr(dm.splits, name).uid
            leak[name] = int(torch.isin(seen.cpu(), uid.cpu()).sum()) if uid is not None else 0
    if leak.get("test"):
        raise UserError(
            f"{what} saw {leak['test']} images of this run's test split: refused whatever "
            f"{override} says; train it on training images only"
        )
    reason = None
    if seen is None:
        reason = "it records no image ids (re-run the stage that made it)"
    elif leak.get(split):
        reason = (
            f"it saw {leak[split]} of the {split} images it measures on (train it with this "
            f"run's seed and {split} settings: its {split} split is then this run's)"
        )
    if reason and policy != "ignore":
        raise UserError(f"{what}: {reason}, or set {override}=ignore to use it anyway")
    if reason:
        log.warning("using a foreign %s (%s=ignore): %s", what, override, reason)
    return {"foreign": bool(reason), "reason": reason}


FOREIGN_KEYS = ("synthetic", "teacher", "init", "guidance/teacher")  # inputs that shape a model


def foreign_reasons(info: dict[str, Any]) -> list[str]:
    """The reasons a stage's metrics give for the foreign inputs that shaped its model or set
    (`<what>_foreign_reason`, set when a provenance override let them in): what its record
    carries on (`foreign`), so every model or set made from it is foreign too, however its own
    image ids compare (a GAN of a nested smaller subset adds no new id)."""
    return [
        f"{what}: {info[f'{what}_foreign_reason']}"
        for what in FOREIGN_KEYS
        if info.get(f"{what}_foreign") and info.get(f"{what}_foreign_reason")
    ]


def model_record(dm, seen: torch.Tensor | None) -> dict[str, Any]:
    """What a classifier checkpoint records: this run's identity and split digests, and the ids
    of every real image the model saw."""
    rec: dict[str, Any] = dict(dm.provenance())
    for name in ("val", "test"):
        uid = getattr(dm.splits, name).uid
        rec[f"{name}_ids_sha256"] = uids_digest(uid) if uid is not None else None
    rec["seen_ids_sha256"] = uids_digest(seen) if seen is not None else None
    rec["seen_uids"] = seen
    return rec


def flat(rec: dict[str, Any]) -> dict[str, Any]:
    """The record's digests as flat metrics.json keys (data/train_ids_sha256, ...)."""
    keys = ("train_ids_sha256", "val_ids_sha256", "test_ids_sha256", "seen_ids_sha256")
    if "unlabelled_ids_sha256" in rec:  # a semi-supervised model's pool
        keys += ("unlabelled_ids_sha256",)
    return {f"data/{k}": rec.get(k) for k in keys}
