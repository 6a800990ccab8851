"""Any 2D MedMNIST `.npz` (train_images, train_labels, val_*, test_*), e.g. PneumoniaMNIST.
Official val and test splits; few-shot sampling of the train split through the shared sampler.
Single-label files only: a multi-label file (ChestMNIST) is refused, not reduced to one label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodules.base import ImageDataModule, Split, Splits, uids_of
from datamodules.sampling import rest_of, stratified_sample
from xfergan.errors import UserError

KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(
            f"MedMNIST file {path} not found; set DATA_DIR (e.g. DATA_DIR=../shared/data) "
            "or dataset.npz_path=..."
        )
    try:
        with np.load(path) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise UserError(f"{path} lacks {missing}: not a MedMNIST .npz")
            return {k: z[k] for k in KEYS}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}); re-download the MedMNIST file") from None


def _split(images: np.ndarray, labels: np.ndarray, path: Path, name: str) -> Split:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8:
        raise UserError(f"MedMNIST images must be uint8, got {x.dtype}")
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()  # [N, C, H, W]
    lab = labels.reshape(len(labels), -1)
    if lab.shape[1] != 1:
        raise UserError(
            f"{path} is multi-label ({lab.shape[1]} labels per image, e.g. ChestMNIST); xfergan "
            "trains single-label classifiers: use a single-label MedMNIST file"
        )
    y = torch.from_numpy(lab[:, 0].astype(np.int64))
    uid = uids_of([f"{path.stem}/{name}/{i}" for i in range(len(y))])
    return Split(x, y, uid=uid)


class MedMNISTDataModule(ImageDataModule):
    def __init__(self, npz_path: str, class_names: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.npz_path = Path(npz_path)
        self._names = list(class_names or [])

    def identity(self) -> dict:
        return {**super().identity(), "file": self.npz_path.name}

    def content_files(self) -> list:
        return [self.npz_path]

    def load(self) -> Splits:
        z = load_npz(self.npz_path)
        train = _split(z["train_images"], z["train_labels"], self.npz_path, "train")
        val = _split(z["val_images"], z["val_labels"], self.npz_path, "val")
        test = _split(z["test_images"], z["test_labels"], self.npz_path, "test")
        k = int(max(train.y.max(), test.y.max())) + 1
        names = self._names or [str(i) for i in range(k)]
        if len(names) != k:
            raise UserError(
                f"dataset.class_names has {len(names)} names but the data has {k} classes"
            )
        idx = stratified_sample(train.y, self.n_per_class, self.seed, k)
        rest = rest_of(len(train), idx)  # val is its own official split
        return Splits(
            train.subset(idx), val, test, names, {"train_indices": idx}, train.subset(rest)
        )
