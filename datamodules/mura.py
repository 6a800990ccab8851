"""Stanford MURA-v1.1 as a layout of the shared file reader (datamodules/files.py): its CSVs are
mapped to rows (path, label, split, group = study, split group = patient, part), and the reader
does the rest (cache, bad files, patient-disjoint train/val split, study metrics).

    ${paths.data_dir}/mura/MURA-v1.1/{train,valid}_image_paths.csv        (one column, no header)
    ${paths.data_dir}/mura/MURA-v1.1/{train,valid}_labeled_studies.csv    (study/, label; 1 = abnormal)

The official valid split is the test set (MURA's test set is hidden); train is split into
train/val by patient, whatever the body part.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from datamodules.files import FileImageDataModule, ImageRow, inside
from xfergan.errors import UserError
from xfergan.schema import BODY_PARTS, MuraConfig

PARTS = BODY_PARTS  # the schema's BodyPart enum, the one list
CLASS_NAMES = ["normal", "abnormal"]
_D = MuraConfig()


def _read_rows(csv_path: Path) -> list[list[str]]:
    if not csv_path.is_file():
        raise UserError(
            f"MURA file {csv_path} is missing; dataset.root must hold MURA-v1.1/ with "
            "{train,valid}_image_paths.csv and *_labeled_studies.csv (set DATA_DIR or dataset.root)"
        )
    with open(csv_path, newline="") as f:
        return [r for r in csv.reader(f) if r and r[0].strip()]


def parse_csvs(root: Path, split: str) -> tuple[list[ImageRow], list[dict]]:
    """Rows of one official split (train | valid); rows that cannot be used are returned as
    problems, not lost."""
    base = root / "MURA-v1.1"
    images = _read_rows(base / f"{split}_image_paths.csv")
    labels: dict[str, int | str] = {}  # a study's label: 0 / 1, or the text that is neither
    for r in _read_rows(base / f"{split}_labeled_studies.csv"):
        study = r[0].strip()
        study = study if study.endswith("/") else study + "/"
        try:
            labels[study] = int(r[1])
        except (IndexError, ValueError):
            continue
        if labels[study] not in (0, 1):  # 2 would be a third class, -1 the unlabelled marker
            labels[study] = r[1].strip()
    rows, problems = [], []
    ours = "train" if split == "train" else "test"
    for r in images:
        p = r[0].strip()
        parts = PurePosixPath(p).parts
        if not inside(root, p):
            problems.append({"split": split, "path": p, "reason": "path outside the dataset root"})
            continue
        if len(parts) < 6 or not parts[2].upper().startswith("XR_"):
            problems.append({"split": split, "path": p, "reason": "not a MURA image path"})
            continue
        study = "/".join(parts[:5]) + "/"
        label = labels.get(study)
        if label is None:
            problems.append(
                {"split": split, "path": p, "reason": "study not in labeled_studies.csv"}
            )
            continue
        if isinstance(label, str):
            problems.append(
                {"split": split, "path": p, "reason": f"study label {label!r} is not 0 or 1"}
            )
            continue
        rows.append(ImageRow(p, label, ours, study, parts[3], parts[2][3:].lower()))
    return rows, problems


class MURADataModule(FileImageDataModule):
    cache_prefix = "mura"

    def __init__(self, body_part: str = _D.body_part.name, **kwargs):
        super().__init__(**kwargs)
        body_part = getattr(body_part, "name", body_part)
        if body_part not in PARTS + ("all",):
            raise UserError(f"body_part={body_part!r}: use one of {', '.join(PARTS)} or all")
        self.body_part = body_part

    def identity(self) -> dict:
        return {**super().identity(), "body_part": self.body_part}

    def rows(self):
        root = Path(self.root)
        if not (root / "MURA-v1.1").is_dir():
            raise UserError(
                f"no MURA-v1.1/ folder in {root.resolve()}; set DATA_DIR to the folder holding "
                "mura/MURA-v1.1 (or dataset.root=...)"
            )
        rows, problems = [], []
        for split in ("train", "valid"):
            rs, ps = parse_csvs(root, split)
            if self.body_part != "all":
                rs = [r for r in rs if r.part == self.body_part]
                ps = [p for p in ps if f"XR_{self.body_part.upper()}/" in p["path"]]
            rows += rs
            problems += ps
        return root, rows, list(CLASS_NAMES), problems
