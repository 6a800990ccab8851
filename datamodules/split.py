"""The containers every datamodule fills: a split's uint8 images with labels, groups, ids, soft
labels and "made augmented" flags (`Split`), all splits of a dataset (`Splits`), one training
batch (`Batch`), and real + extra images joined (`concat`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    group: torch.Tensor | None = None  # int64 [N], e.g. the study of each MURA image
    uid: torch.Tensor | None = None  # int64 [N], see uids_of (None for generated images)
    soft: torch.Tensor | None = None  # float [N, K] target distributions (teacher soft labels)
    # bool [N]: images that were augmented when they were made (their label is for that view):
    # training does not augment them again
    fixed: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> Split:
        def pick(t):
            return t[idx] if t is not None else None

        return Split(
            self.x[idx],
            self.y[idx],
            pick(self.group),
            pick(self.uid),
            pick(self.soft),
            pick(self.fixed),
        )

    def to(self, device) -> Split:
        def mv(t):
            return t.to(device) if t is not None else None

        return Split(
            mv(self.x), mv(self.y), mv(self.group), self.uid, mv(self.soft), mv(self.fixed)
        )


def concat(a: Split, b: Split, num_classes: int) -> Split:
    """Real + extra images; group -1 and no uid for the extra ones; soft targets one-hot for the
    part that has none."""

    def soft(s: Split):
        return (
            s.soft if s.soft is not None else torch.nn.functional.one_hot(s.y, num_classes).float()
        )

    group = None
    if a.group is not None:
        group = torch.cat([a.group, torch.full_like(b.y, -1)])

    def fixed(s: Split):
        return s.fixed if s.fixed is not None else torch.zeros(len(s), dtype=torch.bool)

    both_soft = a.soft is not None or b.soft is not None
    any_fixed = a.fixed is not None or b.fixed is not None
    return Split(
        torch.cat([a.x, b.x]),
        torch.cat([a.y, b.y]),
        group,
        None,
        torch.cat([soft(a), soft(b)]) if both_soft else None,
        torch.cat([fixed(a), fixed(b)]) if any_fixed else None,
    )


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # extra metadata (e.g. study -> body part)
    # the training split's images outside the labelled subset and val (semi-supervised arms):
    # their labels stay here, never in a batch (ImageDataModule.unlabelled_images)
    unlabelled: Split | None = None


class Batch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor | None = None
    soft: torch.Tensor | None = None
    fixed: torch.Tensor | None = None  # bool: do not augment these (made augmented)
