"""The datamodule every dataset shares: in-memory uint8 tensors per split, few-shot subset,
real/synthetic/mixed training sources, batched on-device preprocessing and augmentation.

A subclass implements `load()` and returns `Splits`; everything else is here.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from xfergan import transforms as T
from xfergan.errors import UserError

log = logging.getLogger(__name__)

SOURCES = ("real", "synthetic", "mixed")


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    group: torch.Tensor | None = None  # int64 [N], e.g. the study of each MURA image

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> Split:
        g = self.group[idx] if self.group is not None else None
        return Split(self.x[idx], self.y[idx], g)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # extra metadata (e.g. study -> body part)


class IndexedTensors(torch.utils.data.Dataset):
    """Batches are sliced from tensors with one indexing op (`__getitems__`), no per-image
    Python work and no collation; works with any sampler, DistributedSampler included."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        idx_t = torch.as_tensor(idx, device=self.split.y.device)
        s = self.split
        if s.group is None:
            return s.x[idx_t], s.y[idx_t]
        return s.x[idx_t], s.y[idx_t], s.group[idx_t]


def _identity(batch):
    return batch


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (or class-balanced, with replacement) order that depends only on (seed, epoch).
    Lightning calls set_epoch before every epoch, resumed runs included. Starting an epoch also
    reseeds every RNG from (seed, epoch), before the first batch is augmented: augmentation,
    dropout and GAN noise are a function of the epoch too, so a run resumed from a checkpoint
    continues exactly as the uninterrupted run would have."""

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None):
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        s = self.seed * 1_000_003 + self.epoch
        pl.seed_everything(s % (2**32), workers=True, verbose=False)
        g = torch.Generator().manual_seed(s)
        if self.weights is None:
            return iter(torch.randperm(self.n, generator=g).tolist())
        return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist())


class ImageDataModule(pl.LightningDataModule):
    def __init__(
        self,
        name: str,
        root: str,
        n_per_class: int | None = None,
        image_size: int = 32,
        channels: int = 3,
        normalize: str = "imagenet",
        augment: dict | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        balanced_sampler: bool = False,
        source: str = "real",
        synthetic_path: str | None = None,
        synthetic_ratio: float = 1.0,
        seed: int = 0,
        **_ignored: Any,
    ):
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"dataset.source={source!r}: use one of {', '.join(SOURCES)}")
        if source != "real" and not synthetic_path:
            raise UserError(
                f"dataset.source={source} needs dataset.synthetic_path=<synthetic.pt written by "
                "task=synthesize>"
            )
        if not 0.0 <= synthetic_ratio <= 1.0:
            raise UserError(f"dataset.synthetic_ratio={synthetic_ratio} must be in [0, 1]")
        if normalize not in ("imagenet", "half", "none"):
            raise UserError(f"dataset.normalize={normalize!r}: use imagenet, half or none")
        self.name = name
        self.root = root
        self.n_per_class = n_per_class
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.normalize = normalize
        self.augment = dict(augment or {})
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.balanced_sampler = balanced_sampler
        self.source = source
        self.synthetic_path = synthetic_path
        self.synthetic_ratio = float(synthetic_ratio)
        self.seed = int(seed)
        self.splits: Splits | None = None
        self.problems: list[dict] = []  # skipped inputs: {"split", "path", "reason"}
        self.summary: dict = {}  # what task=inspect prints (per split: counts)
        self.real_train: Split | None = None
        self.synthetic_train: Split | None = None

    # ------------------------------------------------------------------ to implement
    def load(self) -> Splits:
        """Return all splits as uint8 tensors; `train` already restricted to the few-shot subset."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        self._ensure_loaded()
        return self.splits.class_names

    def _ensure_loaded(self) -> None:
        if self.splits is None:
            self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        splits = self.load()
        self.real_train = splits.train
        if self.source != "real":
            from datamodules.synthetic import load_synthetic

            syn = load_synthetic(
                self.synthetic_path,
                num_classes=len(splits.class_names),
                like=splits.train.x,
            )
            if self.synthetic_ratio < 1.0:
                keep = []
                g = torch.Generator().manual_seed(self.seed)
                for c in range(len(splits.class_names)):
                    idx = torch.nonzero(syn.y == c).flatten()
                    n = round(len(idx) * self.synthetic_ratio)
                    keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
                syn = syn.subset(torch.sort(torch.cat(keep)).values)
            self.synthetic_train = syn
            if self.source == "synthetic":
                splits.train = syn
            else:
                r = splits.train
                group = None
                if r.group is not None:
                    group = torch.cat([r.group, torch.full_like(syn.y, -1)])
                splits.train = Split(torch.cat([r.x, syn.x]), torch.cat([r.y, syn.y]), group)
        self.splits = splits
        if len(splits.train) == 0:
            raise UserError(f"{self.name}: the training set is empty; check n_per_class / source")
        self._maybe_move_to_device()
        log.info("dataset %s: %s", self.name, self.sizes())

    def _maybe_move_to_device(self, max_bytes: int = 2 << 30) -> None:
        """Tiny sets live on the accelerator: batches are sliced there, no host->device copies."""
        trainer = self.trainer
        if trainer is None:
            return
        dev = trainer.strategy.root_device
        if dev.type == "cpu":
            return
        s = self.splits
        total = sum(p.x.numel() for p in (s.train, s.val, s.test))
        if total > max_bytes:
            return
        for name in ("train", "val", "test"):
            sp = getattr(s, name)
            g = sp.group.to(dev) if sp.group is not None else None
            setattr(s, name, Split(sp.x.to(dev), sp.y.to(dev), g))

    def sizes(self) -> dict[str, int]:
        self._ensure_loaded()
        s = self.splits
        out = {
            "n_train": len(s.train),
            "n_val": len(s.val),
            "n_test": len(s.test),
            "n_train_real": len(s.train) if self.source == "real" else 0,
            "n_train_synthetic": 0,
        }
        if self.source == "synthetic":
            out["n_train_synthetic"] = len(s.train)
        elif self.source == "mixed":
            out["n_train_synthetic"] = len(self.synthetic_train)
            out["n_train_real"] = len(self.real_train)
        return out

    def class_counts(self, split: str = "train") -> list[int]:
        self._ensure_loaded()
        y = getattr(self.splits, split).y.cpu().tolist()
        c = Counter(y)
        return [c.get(i, 0) for i in range(self.num_classes)]

    def _loader(self, split: Split, train: bool) -> DataLoader:
        sampler = None
        if train:
            weights = None
            if self.balanced_sampler:
                counts = torch.bincount(split.y.cpu(), minlength=self.num_classes).clamp(min=1)
                weights = (1.0 / counts.double())[split.y.cpu()]
            sampler = EpochSampler(len(split), self.seed, weights)
        on_cpu = split.x.device.type == "cpu"
        return DataLoader(
            IndexedTensors(split),
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers if on_cpu else 0,
            collate_fn=_identity,
            pin_memory=False,
            persistent_workers=self.num_workers > 0 and on_cpu,
        )

    def train_dataloader(self) -> DataLoader:
        self._ensure_loaded()
        return self._loader(self.splits.train, train=True)

    def val_dataloader(self) -> DataLoader:
        self._ensure_loaded()
        return self._loader(self.splits.val, train=False)

    def test_dataloader(self) -> DataLoader:
        self._ensure_loaded()
        return self._loader(self.splits.test, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float, resized, augmented (train), channels, normalized."""
        x = T.resize(T.to_float(x), self.image_size)
        if train and self.augment.get("enabled"):
            a = self.augment
            x = T.random_affine(
                x,
                rotation=a.get("rotation", 0.0),
                translate=a.get("translate", 0.0),
                scale_min=a.get("scale_min", 1.0),
                scale_max=a.get("scale_max", 1.0),
                hflip=a.get("hflip", False),
                vflip=a.get("vflip", False),
            )
        x = T.set_channels(x, self.channels)
        return T.normalize(x, self.normalize).contiguous()

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        trainer = self.trainer
        train = bool(trainer is not None and trainer.training)
        x, *rest = batch
        return (self.preprocess(x, train=train), *rest)
