"""Few-shot sampling shared by every stage: the classifier and the GAN call the same function with
the same seed, so they see exactly the same real images."""

from __future__ import annotations

import torch

from xfergan.errors import UserError


def _perm(n: int, seed: int, salt: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + salt)
    return torch.randperm(n, generator=g)


def per_class_indices(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(labels == c, as_tuple=False).flatten() for c in range(num_classes)]


def stratified_sample(
    labels: torch.Tensor,
    n_per_class: int | None,
    seed: int,
    num_classes: int,
    exclude: torch.Tensor | None = None,
    salt: int = 0,
    what: str = "dataset.n_per_class",
) -> torch.Tensor:
    """Indices of `n_per_class` images of every class (all of them when None), seeded, sorted."""
    if n_per_class is not None and n_per_class <= 0:
        raise UserError(f"{what}={n_per_class} must be a positive number of images per class")
    mask = torch.ones(len(labels), dtype=torch.bool)
    if exclude is not None and len(exclude):
        mask[exclude] = False
    chosen = []
    for c, idx in enumerate(per_class_indices(labels, num_classes)):
        idx = idx[mask[idx]]
        if n_per_class is None:
            chosen.append(idx)
            continue
        if not len(idx):
            raise UserError(f"{what}={n_per_class} but class {c} has no images left to draw from")
        if n_per_class > len(idx):
            raise UserError(
                f"{what}={n_per_class} but class {c} has only {len(idx)} images available; "
                f"use at most {len(idx)}"
            )
        chosen.append(idx[_perm(len(idx), seed, salt + c)[:n_per_class]])
    return torch.sort(torch.cat(chosen)).values


def rest_of(n: int, *taken: torch.Tensor) -> torch.Tensor:
    """Indices 0..n-1 outside every `taken` index set (the unlabelled pool of a training split:
    neither the labelled subset nor val), sorted."""
    keep = torch.ones(n, dtype=torch.bool)
    for t in taken:
        keep[t] = False
    return torch.nonzero(keep).flatten()


def few_shot_split(
    labels: torch.Tensor, n_per_class: int | None, val_per_class: int, seed: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a training pool into (train, val) indices: val first (seeded), few-shot train from the
    rest. The official test set is never touched."""
    val = (
        stratified_sample(
            labels, val_per_class, seed, num_classes, salt=10_000, what="dataset.val_per_class"
        )
        if val_per_class
        else torch.empty(0, dtype=torch.long)
    )
    train = stratified_sample(labels, n_per_class, seed, num_classes, exclude=val)
    return train, val
