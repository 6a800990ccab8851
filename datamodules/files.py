"""The one reader for images in files. A layout (a subclass) lists the images as `ImageRow`s --
path, class, official split, group (study / patient) -- and this module does the rest, the same
for every layout: decode once into a cache (aspect kept, centred on a square, at the configured
size; keyed by the rows, the files' sizes/mtimes and the preprocessing; built under a lock so
parallel sweep jobs wait and reuse it), the bad-file policy (skip and list, or stop; too many bad
files stop), a group-disjoint train/val (and test) split, few-shot sampling, sample ids, group
(study) metrics and per-part metrics.

Layouts: MURA-v1.1 (datamodules/mura.py: its CSVs mapped to rows) and your own folders or CSV
(datamodules/folder.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from datamodules.base import ImageDataModule, Split, Splits, uids_of
from datamodules.sampling import rest_of, stratified_sample
from xfergan.errors import UserError
from xfergan.io import atomic_torch_save, atomic_write_json
from xfergan.schema import FilesConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 2
COLORS = ("gray", "rgb")
LOGGED_PROBLEMS = 5  # skipped images named in the log; skipped_images.csv lists every one
_D = FilesConfig()


@dataclass
class ImageRow:
    path: str  # relative to the layout's root (also the image's id)
    label: int
    split: str  # train | val | test | "" (not given: split by val_fraction / test_fraction)
    group: str = ""  # study (group-level metrics); "" = the image itself
    split_group: str = ""  # what never straddles two splits (MURA: the patient); "" = group
    part: str = ""  # MURA body part (per-part metrics); "" otherwise


def decode_image(path: str, size: int, color: str = "gray") -> tuple[np.ndarray | None, str | None]:
    """Any image PIL reads -> 8-bit gray [size, size] or RGB [size, size, 3], longest side =
    size (aspect kept), centred on black; 16-bit and float images are rescaled, alpha is
    composited on black. Returns (array, None) or (None, reason)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float32)
                lo, hi = float(a.min()), float(a.max())
                a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
                im = Image.fromarray(a.astype(np.uint8), "L")
            elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            mode = "L" if color == "gray" else "RGB"
            if im.mode != mode:
                im = im.convert(mode)
            w, h = im.size
            if w < 2 or h < 2:
                return None, f"image too small ({w}x{h})"
            s = size / max(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
            shape = (size, size) if mode == "L" else (size, size, 3)
            out = np.zeros(shape, dtype=np.uint8)
            y0, x0 = (size - nh) // 2, (size - nw) // 2
            out[y0 : y0 + nh, x0 : x0 + nw] = np.asarray(im, dtype=np.uint8)
            return out, None
    except FileNotFoundError:
        return None, "listed but missing"
    except UnidentifiedImageError:
        return None, "not an image (cannot identify)"
    except (Image.DecompressionBombError, MemoryError):
        return None, "image too large to decode (Pillow's decompression-bomb limit)"
    except (OSError, ValueError, SyntaxError) as e:
        return None, f"corrupt or truncated ({str(e)[:80]})"


def _decode_job(args):
    return decode_image(*args)


def _listing(h, root: Path, rows: list[ImageRow], fields=("path", "label")) -> None:
    """Feed each row's fields and its file's size and mtime to the hash `h`."""
    for r in rows:
        try:
            st = os.stat(root / r.path)
            sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        h.update((",".join(str(getattr(r, f)) for f in fields) + f",{sig}\n").encode())


def cache_key(root: Path, rows: list[ImageRow], size: int, color: str) -> str:
    # the root too: another copy with the same names, sizes and times (cp -a, an unpacked
    # archive of other images) must not be served this one's pixels
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{color}|pad-center|{root.resolve()}".encode())
    _listing(h, root, rows)
    return h.hexdigest()[:24]


def decode_all(
    root: Path, rows: list[ImageRow], size: int, color: str, workers: int, desc: str
) -> tuple[torch.Tensor, list[str | None]]:
    """Decode rows (a process pool, a progress bar): uint8 [N, C, size, size] and a failure
    reason per row (None when read)."""
    c = 1 if color == "gray" else 3
    x = torch.zeros(len(rows), c, size, size, dtype=torch.uint8)
    reasons: list[str | None] = [None] * len(rows)
    jobs = [(str(root / r.path), size, color) for r in rows]
    n_workers = workers if workers > 0 else (os.cpu_count() or 1)
    chunks = max(1, min(64, len(jobs) // (n_workers * 8) or 1))
    pool = None
    if n_workers > 1 and len(jobs) >= 64:
        pool = ProcessPoolExecutor(n_workers)
        it = pool.map(_decode_job, jobs, chunksize=chunks)
    else:
        it = map(_decode_job, jobs)
    try:
        for i, (img, why) in enumerate(
            tqdm(it, total=len(jobs), desc=f"decoding {desc}", unit="img", mininterval=2.0)
        ):
            if img is None:
                reasons[i] = why
            else:
                t = torch.from_numpy(img)
                x[i] = t[None] if c == 1 else t.permute(2, 0, 1)
    finally:
        if pool is not None:
            pool.shutdown()
    return x, reasons


def load_or_build_cache(
    root: Path,
    rows: list[ImageRow],
    size: int,
    cache_dir: Path,
    workers: int,
    desc: str,
    color: str = "gray",
    prefix: str = "images",
) -> tuple[torch.Tensor, list[str | None]]:
    """Decoded images for `rows` and a failure reason per row. Built once (under a file lock,
    so parallel sweep jobs wait and reuse), checked on every read."""
    from filelock import FileLock

    key = cache_key(root, rows, size, color)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = cache_dir / f"{prefix}-{key}.pt", cache_dir / f"{prefix}-{key}.json"
    c = 1 if color == "gray" else 3
    with FileLock(str(cache_dir / f"{prefix}-{key}.lock")):
        cached = _read_cache(data_path, meta_path, len(rows), c, size)
        if cached is not None:
            log.info("%s: %d images from cache %s", desc, len(rows), data_path.name)
            return cached
        x, reasons = decode_all(root, rows, size, color, workers, desc)
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


def _read_cache(data_path: Path, meta_path: Path, n: int, c: int, size: int):
    if not (data_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") != data_path.stat().st_size or meta.get("n") != n:
            raise ValueError("size mismatch")
        blob = torch.load(data_path, map_location="cpu", weights_only=True)
        x, reasons = blob["x"], blob["reasons"]
        if tuple(x.shape) != (n, c, size, size) or len(reasons) != n:
            raise ValueError("shape mismatch")
        return x, reasons
    except Exception as e:  # noqa: BLE001 - any damage: rebuild, never half-use
        log.warning("cache %s is damaged (%s): rebuilding", data_path.name, e)
        data_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return None


def group_split(
    groups: list[str], fractions: tuple[float, ...], seed: int, salt: int = 7
) -> list[set[str]]:
    """Seeded split of the distinct groups into len(fractions) disjoint sets of groups."""
    ids = sorted(set(groups))
    g = torch.Generator().manual_seed(int(seed) + salt)
    perm = [ids[i] for i in torch.randperm(len(ids), generator=g).tolist()]
    out, start = [], 0
    for f in fractions:
        n = round(len(ids) * f)
        out.append(set(perm[start : start + n]))
        start += n
    return out


def read_csv_rows(path: Path, required: set[str], hint: str) -> list[dict[str, str]]:
    """A CSV's rows as {lower-case column: stripped value}; a header without the `required`
    columns stops with one line (`hint`: what the CSV should hold). Folder datasets and
    task=predict read their CSVs with it."""
    import csv

    try:  # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in reader.fieldnames or []]
            if not required <= set(cols):
                raise UserError(f"{path} needs a header with the columns {hint}; it has {cols}")
            return [
                {k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader
            ]
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (byte {e.start}); save it as CSV UTF-8"
        ) from None
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV ({e}); save it as CSV UTF-8") from None


def inside(root: Path, rel: str) -> bool:
    """A listed path that stays inside the root (no absolute paths, no ..-escapes), judged on
    the path's text: a symlinked folder inside the root (a dataset copy linked in) is the
    user's own and stays readable."""
    import posixpath
    from pathlib import PurePosixPath

    if PurePosixPath(rel).is_absolute() or Path(rel).is_absolute():
        return False
    norm = posixpath.normpath(rel.replace("\\", "/"))
    return norm not in (".", "..") and not norm.startswith("../")


class FileImageDataModule(ImageDataModule):
    """Images listed by `rows()`; see the module docstring."""

    cache_prefix = "images"

    def __init__(
        self,
        cache_dir: str,
        val_fraction: float = _D.val_fraction,
        test_fraction: float = _D.test_fraction,
        on_bad_image: str = _D.on_bad_image,
        max_bad_fraction: float = _D.max_bad_fraction,
        decode_workers: int = _D.decode_workers,
        color: str = _D.color,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if on_bad_image not in ("skip", "error"):
            raise UserError(f"dataset.on_bad_image={on_bad_image!r}: use skip or error")
        if color not in COLORS:
            raise UserError(f"dataset.color={color!r}: use gray or rgb")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
            raise UserError("dataset.val_fraction and dataset.test_fraction must be in [0, 1)")
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.on_bad_image = on_bad_image
        self.max_bad_fraction = float(max_bad_fraction)
        self.cache_dir = Path(cache_dir) / self.cache_prefix
        self.decode_workers = int(decode_workers)
        self.color = color
        self.group_parts: list[str] = []

    # ------------------------------------------------------------------ the layout
    def rows(self) -> tuple[Path, list[ImageRow], list[str], list[dict]]:
        """(root the paths are relative to, rows, class names, problems found while listing)."""
        raise NotImplementedError

    def identity(self) -> dict:
        return {**super().identity(), "val_fraction": self.val_fraction}

    def stored_side(self) -> int | None:
        return self.image_size  # decoded at the configured size

    def content_digest(self) -> str | None:
        """The listing's digest: class names, the rows not read, then every row's fields and its
        file's size and mtime (an image replaced, relabelled, moved or added changes it). None
        when the layout cannot be listed now (the stage then says why in one line)."""
        quiet = logging.getLogger("datamodules")  # the listing's counted skips: said by the stage
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            root, rows, names, problems = self.rows()
        except UserError:
            return None
        finally:
            quiet.setLevel(level)
        h = hashlib.sha256(json.dumps([names, problems], sort_keys=True, default=str).encode())
        _listing(h, root, rows, ("path", "label", "split", "group", "split_group", "part"))
        return h.hexdigest()

    # ------------------------------------------------------------------ the reader
    def load(self) -> Splits:
        root, rows, names, problems = self.rows()
        self.problems += problems
        by_split = self._assign_splits(rows)
        decoded: dict[str, tuple[list[ImageRow], torch.Tensor]] = {}
        total = len(rows) + len(problems)
        # images without labels (an unlabelled/ folder): read only for a semi-supervised run
        extra = ("unlabelled",) if self.use_unlabelled and by_split["unlabelled"] else ()
        if not self.use_unlabelled:
            total -= len(by_split["unlabelled"])
        for split in ("train", "val", "test", *extra):
            rs = by_split[split]
            if not rs:
                decoded[split] = (
                    [],
                    torch.zeros(
                        0,
                        1 if self.color == "gray" else 3,
                        self.image_size,
                        self.image_size,
                        dtype=torch.uint8,
                    ),
                )
                continue
            x, reasons = load_or_build_cache(
                root,
                rs,
                self.image_size,
                self.cache_dir,
                self.decode_workers,
                f"{self.name} {split}",
                self.color,
                self.cache_prefix,
            )
            bad = [
                {"split": split, "path": r.path, "reason": why}
                for r, why in zip(rs, reasons)
                if why is not None
            ]
            if bad and self.on_bad_image == "error":
                p = bad[0]
                raise UserError(
                    f"bad image {p['path']}: {p['reason']} ({len(bad)} bad in {split}); "
                    "fix the files or set dataset.on_bad_image=skip"
                )
            self.problems += bad
            keep = [i for i, why in enumerate(reasons) if why is None]
            decoded[split] = ([rs[i] for i in keep], x[keep])
        bad = len(self.problems)
        shown = self.problems[:LOGGED_PROBLEMS]  # a partial copy misses thousands
        for p in shown:
            log.warning("skipped %s: %s", p["path"], p["reason"])
        if bad:
            more = f"... and {bad - len(shown):,} more; " if bad > len(shown) else ""
            log.warning(
                "%s: skipped %d of %d listed images (%sskipped_images.csv lists every one)",
                self.name,
                bad,
                total,
                more,
            )
        if total and bad / total > self.max_bad_fraction:
            raise UserError(
                f"{bad} of {total} {self.name} images are unreadable ({bad / total:.1%} > "
                f"dataset.max_bad_fraction={self.max_bad_fraction}); check the dataset copy"
            )
        if not decoded["train"][0] or not decoded["test"][0]:
            raise UserError(
                f"{self.name}: no readable images in the train or test split (give test images: "
                "a test/ folder or split=test rows, or no split at all to split off "
                "dataset.test_fraction)"
            )

        # groups (studies) -> ids shared by all splits; group_parts[id] is its body part
        group_ids: dict[str, int] = {}
        for rs, _ in decoded.values():
            for r in rs:
                g = r.group or r.path
                if g not in group_ids:
                    group_ids[g] = len(group_ids)
                    self.group_parts.append(r.part)
        if not any(self.group_parts):
            self.group_parts = []
        has_groups = any(r.group for rs, _ in decoded.values() for r in rs)

        def as_split(rs: list[ImageRow], x: torch.Tensor) -> Split:
            y = torch.tensor([r.label for r in rs], dtype=torch.long)
            g = torch.tensor([group_ids[r.group or r.path] for r in rs], dtype=torch.long)
            return Split(x, y, g if has_groups else None, uids_of([r.path for r in rs]))

        pool = as_split(*decoded["train"])
        train, rest = pool, None
        if self.n_per_class is not None:
            idx = stratified_sample(pool.y, self.n_per_class, self.seed, len(names))
            train, rest = pool.subset(idx), pool.subset(rest_of(len(pool), idx))
        if "unlabelled" in decoded:  # the unlabelled/ folder joins the rest of train
            rs, x = decoded["unlabelled"]
            own = Split(x, torch.full((len(rs),), -1), uid=uids_of([r.path for r in rs]))
            rest = (
                own
                if rest is None
                else Split(
                    torch.cat([rest.x, own.x]),
                    torch.cat([rest.y, own.y]),
                    uid=torch.cat([rest.uid, own.uid]),
                )
            )
        self.summary = summarize(
            {s: decoded[s][0] for s in ("train", "val", "test")}, self.problems, names
        )
        return Splits(
            train,
            as_split(*decoded["val"]),
            as_split(*decoded["test"]),
            list(names),
            info={
                f"{s}_groups": sorted({r.split_group or r.group or r.path for r in decoded[s][0]})
                for s in ("train", "val", "test")
            },
            unlabelled=rest,
        )

    def _assign_splits(self, rows: list[ImageRow]) -> dict[str, list[ImageRow]]:
        """Rows with a split keep it. When no row has a split, the rows are split into
        train/val/test by group (val_fraction, test_fraction of the groups); when some have one,
        the rest are train (test_fraction applies only when no image has a split) and a row
        without a split joins its group's split. Train is split into train/val by group when no
        row says val; a group with images in the unlabelled pool stays on the training side. A
        group (patient, study) in two splits is refused: splits never cut one."""
        out = {s: [r for r in rows if r.split == s] for s in ("train", "val", "test", "unlabelled")}
        free = [r for r in rows if r.split not in ("train", "val", "test", "unlabelled")]
        # a group with images in the pool is on the training side: never drawn for val or test
        pooled = {r.split_group or r.group for r in out["unlabelled"]} - {""}
        if free and any(out[s] for s in ("train", "val", "test")):  # the pool splits nothing
            split_of = {
                r.split_group or r.group: s for s in out for r in out[s] if r.split_group or r.group
            }
            moved = [r for r in free if (r.split_group or r.group) not in split_of]
            for r in free:
                out[split_of.get(r.split_group or r.group, "train")].append(r)
            log.info(
                "%d images without a split: %d joined their group's split, the rest train "
                "(dataset.test_fraction applies only when no image has a split)",
                len(free),
                len(free) - len(moved),
            )
            free = []
        if free:
            key = [r.split_group or r.group or r.path for r in free]
            val, test = group_split(
                [k for k in key if k not in pooled],
                (self.val_fraction, self.test_fraction),
                self.seed,
            )
            for r, k in zip(free, key):
                out["val" if k in val else "test" if k in test else "train"].append(r)
        elif not out["val"] and self.val_fraction > 0:
            key = [r.split_group or r.group or r.path for r in out["train"]]
            (val,) = group_split(
                [k for k in key if k not in pooled], (self.val_fraction,), self.seed
            )
            out["val"] = [r for r, k in zip(out["train"], key) if k in val]
            out["train"] = [r for r, k in zip(out["train"], key) if k not in val]
        _one_split_per_group(out)
        return out


def _one_split_per_group(out: dict[str, list[ImageRow]]) -> None:
    """A group (patient, study) whose images are on two sides (training: train and the
    unlabelled pool; val; test) would put one patient's images in training and in test: one
    line naming it."""
    side = {"unlabelled": "train"}
    seen: dict[str, str] = {}
    for split, rs in out.items():
        for r in rs:
            g = r.split_group or r.group
            if g and seen.setdefault(g, side.get(split, split)) != side.get(split, split):
                raise UserError(
                    f"group {g!r} has images in {seen[g]} and in {split} ({r.path}): a group "
                    "(patient, study) must stay in one split; fix the split column"
                )


def summarize(splits: dict[str, list[ImageRow]], problems: list[dict], names: list[str]) -> dict:
    """Per split (and body part when there are parts): images, groups (studies), split groups
    (patients), images and groups per class."""
    out: dict = {}
    for split, rows in splits.items():
        by_part: dict[str, list[ImageRow]] = defaultdict(list)
        for r in rows:
            if r.part:
                by_part[r.part].append(r)
        out[split] = {}
        for part, rs in sorted(by_part.items()) + [("all", rows)]:
            groups = {r.group or r.path: r.label for r in rs}
            entry = {
                "images": len(rs),
                "studies": len(groups),
                "patients": len({r.split_group or r.group or r.path for r in rs}),
            }
            for k, name in enumerate(names):
                entry[f"images_{name}"] = sum(r.label == k for r in rs)
                entry[f"studies_{name}"] = sum(v == k for v in groups.values())
            if names == ["normal", "abnormal"]:  # MURA's words
                entry["abnormal_images"] = entry["images_abnormal"]
                entry["abnormal_studies"] = entry["studies_abnormal"]
            out[split][part] = entry
    out["skipped"] = {"count": len(problems), "files": problems}
    return out
