"""Stanford MURA-v1.1, one body part (or all), read from the official layout:

    ${paths.data_dir}/mura/MURA-v1.1/{train,valid}_image_paths.csv        (one column, no header)
    ${paths.data_dir}/mura/MURA-v1.1/{train,valid}_labeled_studies.csv    (study/, label; 1 = abnormal)

The official valid split is the test set (MURA's test set is hidden); train is split into
train/val by patient. Every image is decoded once into a cache at the configured size (aspect
kept, zero-padded), keyed by the CSV rows, the files' sizes/mtimes and the preprocessing, and
shared by every run and sweep job. Damaged files are skipped (counted, listed) or raise, by policy.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm.auto import tqdm

from datamodules.base import ImageDataModule, Split, Splits, uids_of
from datamodules.sampling import stratified_sample
from xfergan.errors import UserError
from xfergan.io import atomic_torch_save, atomic_write_json
from xfergan.schema import MuraConfig

_D = MuraConfig()

log = logging.getLogger(__name__)

PARTS = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")
CACHE_VERSION = 1
CLASS_NAMES = ["normal", "abnormal"]


@dataclass
class Row:
    path: str  # as listed in the CSV, relative to the dataset root
    split: str  # train | valid
    part: str
    patient: str
    study: str  # study dir as listed in labeled_studies.csv (ends with '/')
    label: int | None


def _read_rows(csv_path: Path) -> list[list[str]]:
    if not csv_path.is_file():
        raise UserError(
            f"MURA file {csv_path} is missing; dataset.root must hold MURA-v1.1/ with "
            "{train,valid}_image_paths.csv and *_labeled_studies.csv (set DATA_DIR or dataset.root)"
        )
    with open(csv_path, newline="") as f:
        return [r for r in csv.reader(f) if r and r[0].strip()]


def parse_csvs(root: Path, split: str) -> tuple[list[Row], list[dict]]:
    """Rows of one official split; rows that cannot be used are returned as problems, not lost."""
    base = root / "MURA-v1.1"
    images = _read_rows(base / f"{split}_image_paths.csv")
    labels: dict[str, int] = {}
    for r in _read_rows(base / f"{split}_labeled_studies.csv"):
        study = r[0].strip()
        study = study if study.endswith("/") else study + "/"
        try:
            labels[study] = int(r[1])
        except (IndexError, ValueError):
            continue
    rows, problems = [], []
    root_res = root.resolve()
    for r in images:
        p = r[0].strip()
        parts = PurePosixPath(p).parts
        try:
            resolved = (root / p).resolve()
            resolved.relative_to(root_res)
            inside = not PurePosixPath(p).is_absolute()
        except ValueError:
            inside = False
        if not inside:
            problems.append({"split": split, "path": p, "reason": "path outside the dataset root"})
            continue
        if len(parts) < 6 or not parts[2].upper().startswith("XR_"):
            problems.append({"split": split, "path": p, "reason": "not a MURA image path"})
            continue
        part = parts[2][3:].lower()
        study = "/".join(parts[:5]) + "/"
        label = labels.get(study)
        if label is None:
            problems.append(
                {"split": split, "path": p, "reason": "study not in labeled_studies.csv"}
            )
            continue
        rows.append(Row(p, split, part, parts[3], study, label))
    return rows, problems


def decode_image(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    """PNG -> 8-bit grayscale, longest side = size (aspect kept), centred on a black square."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float32)
                lo, hi = float(a.min()), float(a.max())
                a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
                im = Image.fromarray(a.astype(np.uint8), "L")
            elif im.mode in ("RGBA", "LA", "PA"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im).convert("L")
            elif im.mode != "L":
                im = im.convert("L")
            w, h = im.size
            if w < 2 or h < 2:
                return None, f"image too small ({w}x{h})"
            s = size / max(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
            out = np.zeros((size, size), dtype=np.uint8)
            y0, x0 = (size - nh) // 2, (size - nw) // 2
            out[y0 : y0 + nh, x0 : x0 + nw] = np.asarray(im, dtype=np.uint8)
            return out, None
    except FileNotFoundError:
        return None, "listed in the CSV but missing"
    except UnidentifiedImageError:
        return None, "not an image (cannot identify)"
    except (OSError, ValueError, SyntaxError) as e:
        return None, f"corrupt or truncated ({str(e)[:80]})"


def _decode_job(args):
    return decode_image(*args)


def cache_key(root: Path, rows: list[Row], size: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|gray|pad-center".encode())
    for r in rows:
        try:
            st = os.stat(root / r.path)
            sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        h.update(f"{r.path},{r.label},{sig}\n".encode())
    return h.hexdigest()[:24]


def load_or_build_cache(
    root: Path, rows: list[Row], size: int, cache_dir: Path, workers: int, desc: str
) -> tuple[torch.Tensor, list[str | None]]:
    """Decoded images for `rows` (uint8 [N, 1, size, size]) and a failure reason per row. Built
    once (under a file lock, so parallel sweep jobs wait and reuse), checked on every read."""
    from filelock import FileLock

    key = cache_key(root, rows, size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = cache_dir / f"mura-{key}.pt", cache_dir / f"mura-{key}.json"
    with FileLock(str(cache_dir / f"mura-{key}.lock")):
        cached = _read_cache(data_path, meta_path, len(rows), size)
        if cached is not None:
            log.info("%s: %d images from cache %s", desc, len(rows), data_path.name)
            return cached
        x = torch.zeros(len(rows), 1, size, size, dtype=torch.uint8)
        reasons: list[str | None] = [None] * len(rows)
        jobs = [(str(root / r.path), size) for r in rows]
        n_workers = workers if workers > 0 else (os.cpu_count() or 1)
        chunks = max(1, min(64, len(jobs) // (n_workers * 8) or 1))
        it = (
            map(_decode_job, jobs)
            if n_workers == 1 or len(jobs) < 64
            else ProcessPoolExecutor(n_workers).map(_decode_job, jobs, chunksize=chunks)
        )
        for i, (img, why) in enumerate(
            tqdm(it, total=len(jobs), desc=f"decoding {desc}", unit="img", mininterval=2.0)
        ):
            if img is None:
                reasons[i] = why
            else:
                x[i, 0] = torch.from_numpy(img)
        atomic_torch_save({"x": x, "reasons": reasons}, data_path)
        atomic_write_json(
            meta_path,
            {
                "n": len(rows),
                "size": size,
                "bytes": data_path.stat().st_size,
                "version": CACHE_VERSION,
            },
        )
        return x, reasons


def _read_cache(data_path: Path, meta_path: Path, n: int, size: int):
    if not (data_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") != data_path.stat().st_size or meta.get("n") != n:
            raise ValueError("size mismatch")
        blob = torch.load(data_path, map_location="cpu", weights_only=True)
        x, reasons = blob["x"], blob["reasons"]
        if tuple(x.shape) != (n, 1, size, size) or len(reasons) != n:
            raise ValueError("shape mismatch")
        return x, reasons
    except Exception as e:  # noqa: BLE001 - any damage: rebuild, never half-use
        log.warning("cache %s is damaged (%s): rebuilding", data_path.name, e)
        data_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return None


def patient_split(rows: list[Row], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    patients = sorted({(r.part, r.patient) for r in rows})
    # split by patient id alone: a patient never lands in two splits, whatever the part
    ids = sorted({p for _, p in patients})
    g = torch.Generator().manual_seed(int(seed) + 7)
    perm = torch.randperm(len(ids), generator=g).tolist()
    n_val = round(len(ids) * val_fraction)
    val_ids = {ids[i] for i in perm[:n_val]}
    tr = [i for i, r in enumerate(rows) if r.patient not in val_ids]
    va = [i for i, r in enumerate(rows) if r.patient in val_ids]
    return tr, va


class MURADataModule(ImageDataModule):
    def __init__(
        self,
        cache_dir: str,
        body_part: str = _D.body_part.name,
        val_fraction: float = _D.val_fraction,
        on_bad_image: str = _D.on_bad_image,
        max_bad_fraction: float = _D.max_bad_fraction,
        decode_workers: int = _D.decode_workers,
        **kwargs,
    ):
        super().__init__(**kwargs)
        body_part = getattr(body_part, "name", body_part)
        if body_part not in PARTS + ("all",):
            raise UserError(f"body_part={body_part!r}: use one of {', '.join(PARTS)} or all")
        if on_bad_image not in ("skip", "error"):
            raise UserError(f"dataset.on_bad_image={on_bad_image!r}: use skip or error")
        self.body_part = body_part
        self.val_fraction = float(val_fraction)
        self.on_bad_image = on_bad_image
        self.max_bad_fraction = float(max_bad_fraction)
        self.cache_dir = Path(cache_dir) / "mura"
        self.decode_workers = int(decode_workers)
        self.group_parts: list[str] = []

    def identity(self) -> dict:
        return {
            **super().identity(),
            "body_part": self.body_part,
            "val_fraction": self.val_fraction,
        }

    def _select(self, rows: list[Row]) -> list[Row]:
        if self.body_part == "all":
            return rows
        return [r for r in rows if r.part == self.body_part]

    def load(self) -> Splits:
        root = Path(self.root)
        if not (root / "MURA-v1.1").is_dir():
            raise UserError(
                f"no MURA-v1.1/ folder in {root.resolve()}; set DATA_DIR to the folder holding "
                "mura/MURA-v1.1 (or dataset.root=...)"
            )
        decoded: dict[str, tuple[list[Row], torch.Tensor]] = {}
        total = bad = 0
        for split in ("train", "valid"):
            rows, problems = parse_csvs(root, split)
            problems = [
                p
                for p in problems
                if self.body_part == "all" or f"XR_{self.body_part.upper()}/" in p["path"]
            ]
            rows = self._select(rows)
            x, reasons = load_or_build_cache(
                root,
                rows,
                self.image_size,
                self.cache_dir,
                self.decode_workers,
                f"MURA {split} {self.body_part}",
            )
            total += len(rows) + len(problems)  # every CSV row of this part is accounted for
            problems += [
                {"split": split, "path": r.path, "reason": why}
                for r, why in zip(rows, reasons)
                if why is not None
            ]
            keep = [i for i, why in enumerate(reasons) if why is None]
            bad += len(problems)
            self.problems += problems
            if problems and self.on_bad_image == "error":
                p = problems[0]
                raise UserError(
                    f"bad MURA image {p['path']}: {p['reason']} ({len(problems)} bad in {split}); "
                    "fix the files or set dataset.on_bad_image=skip"
                )
            decoded[split] = ([rows[i] for i in keep], x[keep])
        for p in self.problems:
            log.warning("skipped %s: %s", p["path"], p["reason"])
        if bad:
            log.warning(
                "MURA: skipped %d of %d listed images (listed in skipped_images.csv)", bad, total
            )
        if total and bad / total > self.max_bad_fraction:
            raise UserError(
                f"{bad} of {total} MURA images are unreadable ({bad / total:.1%} > "
                f"dataset.max_bad_fraction={self.max_bad_fraction}); check the dataset copy"
            )
        if not decoded["train"][0] or not decoded["valid"][0]:
            raise UserError(f"MURA {self.body_part}: no readable images in train or valid")

        # studies -> group ids shared by all splits; group_parts[id] is the study's body part
        study_ids: dict[str, int] = {}
        for rows, _ in decoded.values():
            for r in rows:
                if r.study not in study_ids:
                    study_ids[r.study] = len(study_ids)
                    self.group_parts.append(r.part)

        def as_split(rows: list[Row], x: torch.Tensor) -> Split:
            y = torch.tensor([r.label for r in rows], dtype=torch.long)
            g = torch.tensor([study_ids[r.study] for r in rows], dtype=torch.long)
            return Split(x, y, g, uids_of([r.path for r in rows]))

        train_rows, train_x = decoded["train"]
        tr, va = patient_split(train_rows, self.val_fraction, self.seed)
        full_train = as_split(train_rows, train_x)
        train, val = (
            full_train.subset(torch.tensor(tr, dtype=torch.long)),
            full_train.subset(torch.tensor(va, dtype=torch.long)),
        )
        if self.n_per_class is not None:
            idx = stratified_sample(train.y, self.n_per_class, self.seed, 2)
            train = train.subset(idx)
        test = as_split(*decoded["valid"])
        self.summary = summarize(
            {
                "train": [train_rows[i] for i in tr],
                "val": [train_rows[i] for i in va],
                "test": decoded["valid"][0],
            },
            self.problems,
        )
        return Splits(
            train,
            val,
            test,
            list(CLASS_NAMES),
            info={
                "train_patients": sorted({train_rows[i].patient for i in tr}),
                "val_patients": sorted({train_rows[i].patient for i in va}),
                "test_patients": sorted({r.patient for r in decoded["valid"][0]}),
            },
        )


def summarize(splits: dict[str, list[Row]], problems: list[dict]) -> dict:
    """Per split and body part: images, studies, patients, abnormal images and studies."""
    out: dict = {}
    for split, rows in splits.items():
        by_part: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            by_part[r.part].append(r)
        out[split] = {}
        for part, rs in sorted(by_part.items()) + [("all", rows)]:
            studies = {r.study: r.label for r in rs}
            out[split][part] = {
                "images": len(rs),
                "studies": len(studies),
                "patients": len({r.patient for r in rs}),
                "abnormal_images": sum(r.label == 1 for r in rs),
                "abnormal_studies": sum(v == 1 for v in studies.values()),
            }
    out["skipped"] = {"count": len(problems), "files": problems}
    return out
