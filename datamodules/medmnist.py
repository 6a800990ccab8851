"""Any 2D MedMNIST `.npz` (train_images, train_labels, val_*, test_*), e.g. PneumoniaMNIST.
Official val and test splits; few-shot sampling of the train split through the shared sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodules.base import ImageDataModule, Split, Splits
from datamodules.sampling import stratified_sample
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


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8:
        raise UserError(f"MedMNIST images must be uint8, got {x.dtype}")
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()  # [N, C, H, W]
    y = torch.from_numpy(labels.reshape(len(labels), -1)[:, 0].astype(np.int64))
    return Split(x, y)


class MedMNISTDataModule(ImageDataModule):
    def __init__(self, npz_path: str, class_names: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.npz_path = Path(npz_path)
        self._names = list(class_names or [])

    def load(self) -> Splits:
        z = load_npz(self.npz_path)
        train = _split(z["train_images"], z["train_labels"])
        k = int(max(train.y.max(), torch.from_numpy(z["test_labels"]).max())) + 1
        names = self._names or [str(i) for i in range(k)]
        if len(names) != k:
            raise UserError(
                f"dataset.class_names has {len(names)} names but the data has {k} classes"
            )
        idx = stratified_sample(train.y, self.n_per_class, self.seed, k)
        return Splits(
            train.subset(idx),
            _split(z["val_images"], z["val_labels"]),
            _split(z["test_images"], z["test_labels"]),
            names,
            info={"train_indices": idx},
        )
