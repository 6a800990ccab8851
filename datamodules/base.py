"""The datamodule every dataset shares: in-memory uint8 tensors per split, few-shot subset,
real/synthetic/mixed training sources, the step-budget plan, batched on-device preprocessing
and augmentation (batching itself: datamodules/loaders.py).

A subclass implements `load()` and returns `Splits`; everything else is here.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.loaders import DeviceBatches, EpochSampler, IndexedTensors, ShardSampler, _identity
from datamodules.provenance import uids_digest, uids_of, union  # noqa: F401 (re-exported)
from datamodules.split import Batch, Split, Splits, concat  # noqa: F401 (re-exported)
from xfergan import transforms as T
from xfergan.errors import UserError
from xfergan.io import sha256_file_once
from xfergan.schema import DatasetConfig

log = logging.getLogger(__name__)

SOURCES = ("real", "synthetic", "mixed")
_D = DatasetConfig()  # the schema is the one source of defaults


def _pixels(x: torch.Tensor) -> list[bytes]:
    """Each image's identity by content (its uint8 pixels), to find copies under other names."""
    return [hashlib.blake2b(a.tobytes(), digest_size=16).digest() for a in x.cpu().numpy()]


class ImageDataModule(pl.LightningDataModule):
    def __init__(
        self,
        name: str,
        root: str,
        n_per_class: int | None = _D.n_per_class,
        image_size: int = _D.image_size,
        channels: int | None = _D.channels,
        normalize: str = _D.normalize,
        augment: dict | None = None,
        batch_size: int = _D.batch_size,
        eval_batch_size: int = _D.eval_batch_size,
        num_workers: int = _D.num_workers,
        balanced_sampler: bool = _D.balanced_sampler,
        source: str = _D.source,
        synthetic_path: str | None = _D.synthetic_path,
        synthetic_ratio: float = _D.synthetic_ratio,
        synthetic_provenance: str = _D.synthetic_provenance,
        model_provenance: str = _D.model_provenance,
        mix_balance: float | None = _D.mix_balance,
        unlabelled_cap: int | None = _D.unlabelled_cap,
        use_unlabelled: bool = False,
        seed: int = 0,
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
        if mix_balance is not None and not 0.0 < mix_balance < 1.0:
            raise UserError(f"dataset.mix_balance={mix_balance} must be in (0, 1) or null")
        for key, value in (
            ("synthetic_provenance", synthetic_provenance),
            ("model_provenance", model_provenance),
        ):
            if value not in ("check", "ignore"):
                raise UserError(f"dataset.{key}={value!r}: use check or ignore")
        if unlabelled_cap is not None and int(unlabelled_cap) <= 0:
            raise UserError(
                f"dataset.unlabelled_cap={unlabelled_cap}: a positive number of images, or null "
                "for the whole pool"
            )
        if normalize not in ("imagenet", "half", "none"):
            raise UserError(f"dataset.normalize={normalize!r}: use imagenet, half or none")
        self.name = name
        self.root = root
        self.n_per_class = n_per_class
        self.image_size = int(image_size)
        self._channels = int(channels) if channels else None  # None: the data's own channels
        self.normalize = normalize
        self.augment = dict(augment or {})
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.balanced_sampler = balanced_sampler
        self.source = source
        self.synthetic_path = synthetic_path
        self.synthetic_ratio = float(synthetic_ratio)
        self.synthetic_provenance = synthetic_provenance
        self.model_provenance = model_provenance  # teachers and init checkpoints (the tasks')
        self.mix_balance = mix_balance
        self.unlabelled_cap = None if unlabelled_cap is None else int(unlabelled_cap)
        # a semi-supervised run: its unlabelled pool is loaded, recorded and counted as seen
        self.use_unlabelled = bool(use_unlabelled)
        self.unlabelled: Split | None = None
        self.pool_copies = 0  # pool images left out as copies of labelled/val/test images
        self.seed = int(seed)
        self.splits: Splits | None = None
        self.problems: list[dict] = []  # skipped inputs: {"split", "path", "reason"}
        self.summary: dict = {}  # what task=inspect prints (per split: counts)
        self.real_train: Split | None = None
        self.synthetic_train: Split | None = None
        self.synthetic_info: dict[str, Any] = {}  # provenance check results (metrics.json)
        self.synthetic_real_uids: torch.Tensor | None = None  # the real ids behind that set
        self.epoch_batches: int | None = None  # batches per epoch on each rank (plan_epochs)

    # ------------------------------------------------------------------ to implement
    def load(self) -> Splits:
        """Return all splits as uint8 tensors; `train` already restricted to the few-shot subset.
        Each split carries `uid` (see uids_of) for the images it was read from."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What selects this run's real images, besides the seed (subclasses add their keys)."""
        return {"dataset": self.name, "n_per_class": self.n_per_class}

    def stored_side(self) -> int | None:
        """The side of the images as loaded (before the model's resize), when known without
        loading them (image files decode at dataset.image_size); None otherwise."""
        return None

    def content_files(self) -> list:
        """The files this dataset's images and labels are read from (subclasses that read a few
        files name them): what content_digest hashes."""
        return []

    def content_digest(self) -> str | None:
        """sha256 of what this dataset reads, without decoding it: the bytes of its
        content_files(), or (image folders, datamodules/files.py) the listing of its images'
        paths, labels, sizes and mtimes. What resume compares besides the settings, so a model
        trained before the data changed is never reused or continued. None: not known (a
        dataset that names no files)."""
        files = [Path(f) for f in self.content_files()]
        if not files:
            return None
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}:{sha256_file_once(f) if f.is_file() else 'missing'}\n".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ shared
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        self._ensure_loaded()
        return self.splits.class_names

    @property
    def channels(self) -> int:
        """Channels the model sees: dataset.channels, or the data's own when that is null."""
        if self._channels:
            return self._channels
        self._ensure_loaded()
        return int(self.real_train.x.shape[1])

    def _ensure_loaded(self) -> None:
        if self.splits is None:
            self.setup()

    def setup(self, stage: str | None = None) -> None:
        """Loads once; every call made with a Trainer attached (whichever order the task touched
        the datamodule in) moves small sets to the Trainer's device."""
        if self.splits is None:
            self._load_all()
        self._maybe_move_to_device()

    def _load_all(self) -> None:
        splits = self.load()
        self.real_train = splits.train
        if self.source != "real":
            from datamodules.synthetic import check_provenance, load_synthetic

            loaded = load_synthetic(
                self.synthetic_path, num_classes=len(splits.class_names), like=splits.train.x
            )
            self.synthetic_info = check_provenance(loaded, self, splits)
            self.synthetic_real_uids = loaded.real_uids
            for k, v in (loaded.manifest.get("gan_quality") or {}).items():
                self.synthetic_info["synthetic_" + k.replace("/", "_")] = v  # synthetic_gan_fid
            syn = loaded.split
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
                splits.train = concat(splits.train, syn, len(splits.class_names))
        pool, splits.unlabelled = splits.unlabelled, None  # kept on the datamodule only
        if self.use_unlabelled:
            self.unlabelled = self._unlabelled_pool(pool, splits)
        self.splits = splits
        if len(splits.train) == 0:
            raise UserError(f"{self.name}: the training set is empty; check n_per_class / source")
        log.info("dataset %s: %s", self.name, self.sizes())

    def _unlabelled_pool(self, pool: Split | None, splits: Splits) -> Split:
        """The pool capped at unlabelled_cap (a seeded draw), after checking that it holds no
        labelled, val or test image."""
        if pool is None or len(pool) == 0:
            raise UserError(
                f"{self.name}: no unlabelled images (a semi-supervised arm needs a few-shot run, "
                "dataset.n_per_class, whose training split has images outside the labelled subset)"
            )
        if pool.uid is not None:
            for name in ("train", "val", "test"):
                uid = getattr(splits, name).uid
                if uid is not None and bool(torch.isin(pool.uid, uid).any()):
                    raise UserError(f"{self.name}: the unlabelled pool holds {name} images")
        # ids are paths or indices: a copy of an evaluated or labelled image under another name
        # (a folder of "all my images" as unlabelled/) is found by its pixels, and left out
        known = {k for part in (self.real_train, splits.val, splits.test) for k in _pixels(part.x)}
        keep = torch.tensor([k not in known for k in _pixels(pool.x)], dtype=torch.bool)
        self.pool_copies = int((~keep).sum())
        if self.pool_copies:
            log.warning(
                "%s: left %d images out of the unlabelled pool: each is pixel for pixel a "
                "labelled training, val or test image (a copy under another name)",
                self.name,
                self.pool_copies,
            )
            pool = pool.subset(torch.nonzero(keep).flatten())
            if len(pool) == 0:
                raise UserError(
                    f"{self.name}: every one of the {self.pool_copies} unlabelled images is a "
                    "copy of a labelled, val or test image: add images that are in no split"
                )
        if self.unlabelled_cap is not None and self.unlabelled_cap < len(pool):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 20_000)
            idx = torch.randperm(len(pool), generator=g)[: self.unlabelled_cap]
            pool = pool.subset(torch.sort(idx).values)
        return pool

    def unlabelled_images(self) -> torch.Tensor:
        """The unlabelled pool's images (uint8 [N, C, H, W]): what a semi-supervised module gets;
        their labels never leave the datamodule."""
        self._ensure_loaded()
        if self.unlabelled is None:
            raise UserError("this run has no unlabelled pool (dataset use_unlabelled is off)")
        return self.unlabelled.x

    def provenance(self) -> dict[str, Any]:
        """The identity of this run's real training images: what a GAN trained on them records
        and what a run that uses the GAN's images must match."""
        if self.real_train is None:
            self._ensure_loaded()
        uid = self.real_train.uid
        rec = {
            **self.identity(),
            "seed": self.seed,
            "n_images": len(self.real_train),
            "train_ids_sha256": uids_digest(uid) if uid is not None else None,
        }
        if self.unlabelled is not None:
            u = self.unlabelled.uid
            rec["n_unlabelled"] = len(self.unlabelled)
            rec["unlabelled_ids_sha256"] = uids_digest(u) if u is not None else None
        return rec

    def seen_uids(self) -> torch.Tensor | None:
        """Ids of every real image a model trained here sees: the real training images and
        those behind the synthetic set (its GAN's or teacher's)."""
        self._ensure_loaded()
        parts = []
        if self.source != "synthetic":
            parts.append(self.real_train.uid)
        if self.source != "real":
            parts.append(self.synthetic_real_uids)
        if self.unlabelled is not None:  # seen without their labels, but seen
            parts.append(self.unlabelled.uid)
        if any(p is None for p in parts):
            return None
        return union(*parts)

    def _maybe_move_to_device(self, max_bytes: int = 2 << 30) -> None:
        """Tiny sets live on the accelerator: batches are sliced there, no host->device copies."""
        trainer = self.trainer
        if trainer is None:
            return
        dev = trainer.strategy.root_device
        s = self.splits
        if dev.type == "cpu" or s.train.x.device == dev:
            return
        total = sum(p.x.numel() for p in (s.train, s.val, s.test))
        if total > max_bytes:
            log.info("dataset %s: %d MB stays in host memory", self.name, total >> 20)
            return
        for name in ("train", "val", "test"):
            setattr(s, name, getattr(s, name).to(dev))
        log.info("dataset %s: on %s (%d MB)", self.name, dev, total >> 20)

    def batches_per_epoch(self, world: int = 1) -> int:
        """Training batches per epoch on each rank: exactly what EpochSampler yields."""
        if self.epoch_batches:
            return self.epoch_batches
        return max(1, math.ceil(math.ceil(len(self.splits.train) / world) / self.batch_size))

    def epoch_samples(self, world: int) -> int | None:
        """Indices an epoch yields on all `world` ranks together (None: one pass). Taken from
        the Trainer's real world size when the loader is built, so a budget stays exact
        whatever launched the ranks."""
        return self.epoch_batches * self.batch_size * world if self.epoch_batches else None

    def plan_epochs(
        self, steps: int, world: int = 1, limit_batches: int | None = None, target: int = 50
    ) -> int:
        """A budget of exactly `steps` optimizer steps, whatever the training set's size: every
        epoch is the same number of full batches, a divisor of `steps` as near `target` as there
        is (600 -> 12 epochs of 50; a prime budget is one epoch), so the run ends on an epoch end
        at exactly `steps`, checkpoints fall on epoch ends and a resumed run continues exactly.
        An epoch's batches come from an endless stream of passes over the images (EpochSampler):
        a tiny set is seen several times an epoch, a large one over several epochs."""
        self._ensure_loaded()
        steps = int(steps)
        if steps <= 0:
            raise UserError(f"a step budget must be a positive number of steps, not {steps}")
        self.epoch_batches = None
        if limit_batches:  # debug caps (trainer.limit_train_batches): not an exact budget
            return math.ceil(steps / min(self.batches_per_epoch(world), int(limit_batches)))
        divisors = [d for d in range(1, steps + 1) if steps % d == 0]
        self.epoch_batches = min(divisors, key=lambda d: (abs(math.log(d / target)), -d))
        if self.epoch_batches > 4 * target and steps > 4 * target:  # 601: one epoch of 601
            log.warning(
                "a budget of %d steps has no divisor near %d: it runs as %d epoch(s) of %d "
                "steps, so val, checkpoints, resume points and epoch-based schedules "
                "(warmup_epochs) come that rarely; a budget like %d divides evenly",
                steps,
                target,
                steps // self.epoch_batches,
                self.epoch_batches,
                round(steps / target) * target,
            )
        return steps // self.epoch_batches

    def sizes(self) -> dict[str, Any]:
        self._ensure_loaded()
        s = self.splits
        out: dict[str, Any] = {
            "n_train": len(s.train),
            "n_val": len(s.val),
            "n_test": len(s.test),
            "n_train_real": len(self.real_train) if self.source != "synthetic" else 0,
            "n_train_synthetic": len(self.synthetic_train) if self.source != "real" else 0,
        }
        if self.unlabelled is not None:
            out["n_unlabelled"] = len(self.unlabelled)
            out["n_unlabelled_copies_left_out"] = self.pool_copies
        out.update(self.synthetic_info)
        return out

    def class_counts(self, split: str = "train") -> list[int]:
        self._ensure_loaded()
        y = getattr(self.splits, split).y.cpu().tolist()
        c = Counter(y)
        return [c.get(i, 0) for i in range(self.num_classes)]

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        if t is None:
            return 0, 1
        return int(t.global_rank), int(t.world_size)

    def _train_weights(self, split: Split) -> torch.Tensor | None:
        """Sampling weights: class-balanced (balanced_sampler) and/or a fixed share of every
        batch from the synthetic part (mix_balance); class balance applies within each part."""
        mixing = self.mix_balance is not None and self.source == "mixed"
        if not self.balanced_sampler and not mixing:
            return None
        n_real = len(self.real_train) if mixing else len(split)
        parts = [(0, n_real, 1.0 - self.mix_balance if mixing else 1.0)]
        if mixing:
            parts.append((n_real, len(split), self.mix_balance))
        y = split.y.cpu() if self.balanced_sampler else None
        w = torch.zeros(len(split), dtype=torch.float64)
        for a, b, share in parts:
            if b <= a:
                continue
            if y is not None:
                counts = torch.bincount(y[a:b], minlength=self.num_classes).clamp(min=1)
                part = (1.0 / counts.double())[y[a:b]]
            else:
                part = torch.ones(b - a, dtype=torch.float64)
            w[a:b] = share * part / part.sum()
        return w

    def _loader(self, split: Split, train: bool) -> DataLoader:
        rank, world = self._rank_world()
        if train:
            sampler = EpochSampler(
                len(split),
                self.seed,
                self._train_weights(split),
                rank,
                world,
                self.epoch_samples(world),
            )
        else:
            sampler = ShardSampler(len(split), rank, world)
        on_cpu = split.x.device.type == "cpu"
        bs = self.batch_size if train else self.eval_batch_size
        # a set left in host memory (_maybe_move_to_device) reaches a CUDA device batch by batch:
        # from pinned memory, so Lightning's non_blocking copy is a real asynchronous one
        t = self.trainer
        pin = on_cpu and t is not None and t.strategy.root_device.type == "cuda"
        if not on_cpu or self.num_workers == 0:  # batches sliced in this process, on the device
            return DataLoader(
                IndexedTensors(split),
                batch_size=None,
                sampler=DeviceBatches(sampler, bs, split.y.device),
                num_workers=0,
                pin_memory=pin,
            )
        return DataLoader(  # CPU decode workers: they take lists of indices
            IndexedTensors(split),
            batch_size=bs,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            collate_fn=_identity,
            pin_memory=pin,
            persistent_workers=True,
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

    # ------------------------------------------------------------------ preprocessing
    def preprocess(
        self, x: torch.Tensor, train: bool = False, fixed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float, resized, augmented (train; not the `fixed` rows),
        channels, normalized."""
        x = T.resize(T.to_float(x), self.image_size)
        if train and self.augment.get("enabled"):
            aug = T.augment(x, self.augment)
            x = aug if fixed is None else torch.where(fixed[:, None, None, None], x, aug)
        if self._channels:
            x = T.set_channels(x, self._channels)
        return T.normalize(x, self.normalize).contiguous()

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        trainer = self.trainer
        train = bool(trainer is not None and trainer.training)
        return batch._replace(x=self.preprocess(batch.x, train=train, fixed=batch.fixed))
