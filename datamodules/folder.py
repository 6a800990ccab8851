"""Your own images, as a layout of the shared file reader (datamodules/files.py):

  dataset.root=<dir> holding one folder per class (root/<class>/**/<image>), split into
      train/val/test by dataset.val_fraction / test_fraction;
  or root/train/<class>/..., root/test/<class>/... [root/val/<class>/...]: the given splits;
  or dataset.csv=<file.csv> with columns path,label[,group][,split]: paths relative to the CSV's
      folder (a path that leaves it is refused), group = patient or study (splits never cut a
      group; group-level metrics), split = train | val | test | unlabelled (no label needed).
  Images without a label for the semi-supervised arms: root/unlabelled/**/<image> (or
  unlabeled/; or CSV rows with split=unlabelled) join the unlabelled pool; they are read only
  when an arm uses the pool. A folder that would not be read (valid/, class folders beside
  train/) is refused in one line; images outside class folders are a counted, logged skip.

Any format PIL reads (png, jpg, jpeg, bmp, tif, tiff, gif, webp, ppm, pgm). Class names come from
the folders or the labels (sorted; dataset.class_names fixes the order) and are recorded in
metrics.json and in checkpoints."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path

from datamodules.files import FileImageDataModule, ImageRow, inside, read_csv_rows
from xfergan.errors import UserError

log = logging.getLogger(__name__)

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")
UNLABELLED = "unlabelled"  # a folder (or a CSV split) of images without labels: the pool
POOL_NAMES = (UNLABELLED, "unlabeled")  # either spelling is the pool, never a class
# split folders under other names: refused (they would be read as classes, or not at all)
OTHER_SPLIT_NAMES = {"valid": "val", "validation": "val", "training": "train", "testing": "test"}


def _class_dirs(base: Path, split: str) -> list[str]:
    """The class folders under a split folder (or the root): not hidden, not the pool."""
    return sorted(
        d.name
        for d in base.iterdir()
        if d.is_dir() and d.name[0] != "." and not (split == "" and d.name in POOL_NAMES)
    )


def _loose_images(base: Path) -> int:
    """Images directly in a folder that holds class folders (they have no class)."""
    return sum(
        1
        for f in base.iterdir()
        if f.is_file() and f.suffix.lower() in EXTENSIONS and not f.name.startswith(".")
    )


class FolderDataModule(FileImageDataModule):
    cache_prefix = "folder"

    def __init__(self, csv: str | None = None, class_names: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.csv = csv
        self._names = list(class_names) if class_names else None

    def identity(self) -> dict:
        return {**super().identity(), "source_dir": str(Path(self.csv or self.root).name)}

    def _class_index(self, found: list[str]) -> dict[str, int]:
        names = self._names or sorted(set(found))
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise UserError(
                f"labels {unknown[:5]} are not in dataset.class_names={names}; add them or fix "
                "the labels"
            )
        self._names = names
        return {n: i for i, n in enumerate(names)}

    def rows(self):
        if self.csv:
            return self._csv_rows(Path(self.csv))
        root = Path(self.root)
        if not root.is_dir():
            raise UserError(
                f"dataset.root={root} is not a folder; point it at a folder of class folders "
                "(or pass dataset.csv=<file>)"
            )
        split_dirs = [s for s in SPLITS if (root / s).is_dir()]
        odd = sorted(  # Train/, TEST/: split folders in another case would be read as classes
            d.name
            for d in root.iterdir()
            if d.is_dir() and d.name.lower() in SPLITS and d.name not in SPLITS
        )
        if odd:
            raise UserError(
                f"{root}: split folder(s) {odd}: name them in lower case (train, val, test)"
            )
        renamed = sorted(
            d.name for d in root.iterdir() if d.is_dir() and d.name.lower() in OTHER_SPLIT_NAMES
        )
        if renamed:  # valid/ beside train/ was silently not read; beside classes, a class
            raise UserError(
                f"{root}: folder(s) {renamed}: split folders are named train, val and test "
                f"(rename {renamed[0]}/ to {OTHER_SPLIT_NAMES[renamed[0].lower()]}/)"
            )
        if split_dirs:  # class folders beside train/ were silently not read
            beside = sorted(
                d.name
                for d in root.iterdir()
                if d.is_dir() and d.name[0] != "." and d.name not in (*SPLITS, *POOL_NAMES)
            )
            if beside:
                raise UserError(
                    f"{root}: folder(s) {beside} beside {'/, '.join(split_dirs)}/ would not be "
                    "read; move them into train/ (or val/, test/), or into unlabelled/"
                )
        misplaced = [f"{s}/{n}" for s in split_dirs for n in POOL_NAMES if (root / s / n).is_dir()]
        if misplaced:  # it would be read as a class of that split
            raise UserError(
                f"{root}/{misplaced[0]}/: the unlabelled pool is a folder beside the split "
                f"folders, not inside one; move it to {root}/{misplaced[0].split('/')[1]}/"
            )
        if split_dirs and "train" not in split_dirs:
            raise UserError(
                f"{root} has {'/, '.join(split_dirs)}/ but no train/: add train/<class>/<image> "
                f"(or put the class folders directly in {root})"
            )
        plan = [(s, root / s) for s in split_dirs] if "train" in split_dirs else [("", root)]
        found: list[tuple[str, str, str]] = []  # (split, class, relative path)
        listed: set[str] = set()  # every class folder, with images or not
        ignored = loose = 0
        for split, base in plan:
            loose += _loose_images(base)
            for c in _class_dirs(base, split):
                listed.add(c)
                for f in sorted((base / c).rglob("*")):
                    if not f.is_file() or f.name.startswith("."):
                        continue
                    if f.suffix.lower() not in EXTENSIONS:
                        ignored += 1
                        continue
                    found.append((split, c, f.relative_to(root).as_posix()))
        if ignored:
            log.info("%s: ignored %d files that are not images (by extension)", root, ignored)
        if loose:  # a counted skip: they have no class folder
            log.warning(
                "%s: skipped %d images that are not in a class folder (root/<class>/<image>, "
                "or train/<class>/<image>); put them in one, or in unlabelled/",
                root,
                loose,
            )
        if not found:
            raise UserError(
                f"no images in {root}: expected {root}/<class>/<image> (or train/<class>/...)"
            )
        trained = {c for sp, c, _ in found if sp in ("", "train")}
        empty = sorted(listed - trained)
        if empty:  # it would vanish from the classes, or be a class with no training image
            where = "train/" if split_dirs else ""
            raise UserError(
                f"{root}: class folder(s) {empty} have no training images in {where}<class>/ "
                f"(image extensions: {' '.join(sorted(EXTENSIONS))}); add images or remove the "
                "folder"
            )
        index = self._class_index([c for _, c, _ in found])
        rows = [ImageRow(p, index[c], s) for s, c, p in found]
        for pool in (root / name for name in POOL_NAMES):
            if pool.is_dir():
                rows += [
                    ImageRow(f.relative_to(root).as_posix(), -1, UNLABELLED)
                    for f in sorted(pool.rglob("*"))
                    if f.is_file() and f.suffix.lower() in EXTENSIONS and not f.name.startswith(".")
                ]
        return root, rows, list(self._names), []

    def _csv_rows(self, path: Path):
        if not path.is_file():
            raise UserError(f"dataset.csv={path} does not exist")
        root = path.parent
        raw = read_csv_rows(path, {"path", "label"}, "path,label[,group][,split]")
        problems, kept, line_of = [], [], {}
        for i, r in enumerate(raw):
            # one spelling per file: ./a/0.png and a//0.png are a/0.png (the duplicate check
            # and the image ids compare paths)
            r = {**r, "path": posixpath.normpath(r["path"]) if r["path"] else ""}
            if r["path"] in line_of:  # one image listed twice (e.g. in train and in test)
                raise UserError(
                    f"{path}: {r['path']} is listed on lines {line_of[r['path']]} and {i + 2}; "
                    "list each image once"
                )
            if r["path"]:
                line_of[r["path"]] = i + 2
            split = r.get("split", "").lower()
            if split and split not in (*SPLITS, UNLABELLED):
                raise UserError(
                    f"{path} line {i + 2}: split={split!r}; use train, val, test or unlabelled "
                    "(or leave it empty)"
                )
            if split == UNLABELLED and r["path"] and inside(root, r["path"]):
                kept.append({**r, "label": ""})
                continue
            if not r["path"] or not r["label"]:
                problems.append(
                    {"split": split, "path": r["path"], "reason": "empty path or label"}
                )
                continue
            if not inside(root, r["path"]):
                problems.append(
                    {"split": split, "path": r["path"], "reason": "path outside the dataset root"}
                )
                continue
            kept.append(r)
        index = self._class_index([r["label"] for r in kept if r["label"]])
        rows = [
            ImageRow(
                r["path"],
                index[r["label"]] if r["label"] else -1,
                r.get("split", "").lower(),
                r.get("group", ""),
            )
            for r in kept
        ]
        return root, rows, list(self._names), problems
