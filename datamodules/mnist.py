"""Real MNIST through torchvision, few-shot subset, validation held out of the training pool."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from datamodules.base import ImageDataModule, Split, Splits, uids_of
from datamodules.sampling import few_shot_split, rest_of
from xfergan.errors import UserError
from xfergan.io import file_key
from xfergan.schema import MnistConfig

_D = MnistConfig()
# what torchvision's MNIST reads from <root>/MNIST/raw
MNIST_FILES = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")


_ARRAYS: dict = {}  # the last files read: their file_keys -> arrays


def load_mnist_arrays(
    root: str, download: bool = False
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """MNIST's train and test images [N, 1, 28, 28] uint8 and labels. Read once per process for
    the same files (every stage of a pipeline loads it): the tensors are shared, never modify
    them in place (index them, which copies)."""
    key = tuple(_key(Path(root) / "MNIST" / "raw" / f"{p}-ubyte") for p in MNIST_FILES)
    if key in _ARRAYS:
        return _ARRAYS[key]
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = MNIST(root=root, train=train, download=download)
        except RuntimeError as e:
            raise UserError(
                f"MNIST not found in {Path(root).resolve()}/MNIST/raw ({e}); set DATA_DIR to the "
                "folder holding mnist/MNIST/raw (e.g. DATA_DIR=../shared/data) or pass "
                "paths.data_dir=..."
            ) from None
        out[split] = (ds.data.unsqueeze(1).contiguous(), ds.targets.long())
    if None not in key:  # (a download makes the files: their stats are known next time)
        _ARRAYS.clear()
        _ARRAYS[key] = out
    return out


def _key(p: Path) -> tuple | None:
    try:
        return file_key(p)
    except OSError:
        return None


@functools.lru_cache(maxsize=2)
def _uids(split: str, n: int) -> torch.Tensor:
    """The ids of all n images of a split (the same as uids_of of their names, made once)."""
    return uids_of([f"mnist/{split}/{i}" for i in range(n)])


class MNISTDataModule(ImageDataModule):
    def __init__(
        self, val_per_class: int = _D.val_per_class, download: bool = _D.download, **kwargs
    ):
        super().__init__(**kwargs)
        self.val_per_class = int(val_per_class or 0)
        self.download = download

    def identity(self) -> dict:
        return {**super().identity(), "val_per_class": self.val_per_class}

    def content_files(self) -> list:
        raw = Path(self.root) / "MNIST" / "raw"
        return [raw / f"{p}-ubyte" for p in MNIST_FILES]

    def load(self) -> Splits:
        arrays = load_mnist_arrays(self.root, self.download)
        x, y = arrays["train"]
        train_idx, val_idx = few_shot_split(y, self.n_per_class, self.val_per_class, self.seed, 10)
        xt, yt = arrays["test"]
        rest = rest_of(len(y), train_idx, val_idx)

        train_uid, test_uid = _uids("train", len(y)), _uids("test", len(yt))
        return Splits(
            train=Split(x[train_idx], y[train_idx], uid=train_uid[train_idx]),
            val=Split(x[val_idx], y[val_idx], uid=train_uid[val_idx]),
            test=Split(xt.clone(), yt.clone(), uid=test_uid.clone()),
            class_names=[str(i) for i in range(10)],
            info={"train_indices": train_idx},
            unlabelled=Split(x[rest], y[rest], uid=train_uid[rest]),
        )
