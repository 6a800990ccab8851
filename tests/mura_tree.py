"""Build a MURA-v1.1-layout tree in a temp dir from rows of the REAL CSVs in ../shared: generated
PNGs of real sizes (grayscale and RGB), plus the real radiographs that ../shared holds."""

from __future__ import annotations

import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import DATA_DIR

REAL = DATA_DIR / "mura" / "MURA-v1.1"


def _rows(name: str) -> list[list[str]]:
    with open(REAL / name, newline="") as f:
        return [r for r in csv.reader(f) if r]


def _image(rng: random.Random, label: int, rgb: bool) -> Image.Image:
    w, h = rng.choice([(512, 421), (380, 512), (512, 512), (270, 512), (512, 300)])
    yy, xx = np.mgrid[0:h, 0:w]
    bone = np.exp(-(((xx - w / 2) / (w / 6)) ** 2)) * 180 + 20
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 8, (h, w))
    a = bone + noise
    if label == 1:  # an "abnormality": a bright blob
        cx, cy = rng.randrange(w // 4, 3 * w // 4), rng.randrange(h // 4, 3 * h // 4)
        a += 60 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (w / 12) ** 2)))
    a = np.clip(a, 0, 255).astype(np.uint8)
    img = Image.fromarray(a, "L")
    return img.convert("RGB") if rgb else img


def build_tree(root: Path, parts=("elbow", "wrist"), patients_per_part=(6, 3), seed=0) -> dict:
    """Returns {"root", "counts": {(split, part): n_images}, "rows": {split: [paths]}}.
    `patients_per_part` = (train patients, valid patients) taken from the real CSVs."""
    rng = random.Random(seed)
    base = root / "MURA-v1.1"
    base.mkdir(parents=True)
    counts: dict = defaultdict(int)
    listed: dict = {}
    for split, n_pat in (("train", patients_per_part[0]), ("valid", patients_per_part[1])):
        images, studies = _rows(f"{split}_image_paths.csv"), _rows(f"{split}_labeled_studies.csv")
        labels = {s[0]: int(s[1]) for s in studies}
        keep_rows = []
        for part in parts:
            tag = f"XR_{part.upper()}/"
            pats = sorted({r[0].split("/")[3] for r in images if tag in r[0]})
            chosen = set(pats[:n_pat])
            if split == "valid" and part == "wrist":  # the real radiographs in ../shared
                chosen |= {"patient11185", "patient11186"}
            keep_rows += [r for r in images if tag in r[0] and r[0].split("/")[3] in chosen]
        keep_studies = sorted({r[0].rsplit("/", 1)[0] + "/" for r in keep_rows})
        with open(base / f"{split}_image_paths.csv", "w", newline="") as f:
            csv.writer(f).writerows(keep_rows)
        with open(base / f"{split}_labeled_studies.csv", "w", newline="") as f:
            csv.writer(f).writerows([[s, labels[s]] for s in keep_studies])
        for (p,) in keep_rows:
            dst = root / p
            dst.parent.mkdir(parents=True, exist_ok=True)
            real = DATA_DIR / "mura" / p
            if real.is_file():
                shutil.copy(real, dst)
            else:
                label = labels[p.rsplit("/", 1)[0] + "/"]
                _image(rng, label, rgb=rng.random() < 0.3).save(dst)
            counts[(split, p.split("/")[2][3:].lower())] += 1
        listed[split] = [r[0] for r in keep_rows]
    return {"root": root, "counts": dict(counts), "rows": listed}


def damage(tree: dict, seed: int = 1) -> dict[str, list[str]]:
    """Every kind of damage real datasets have. Returns {kind: [paths]}; only the first three
    kinds must be skipped, the odd modes must be read, stray files must be ignored."""
    rng = random.Random(seed)
    root = tree["root"]
    train = [p for p in tree["rows"]["train"] if "patient111" not in p]
    picks = rng.sample(train, 9)
    out: dict[str, list[str]] = defaultdict(list)
    # truncated PNG
    for p in picks[0:2]:
        data = (root / p).read_bytes()
        (root / p).write_bytes(data[: len(data) // 3])
        out["truncated"].append(p)
    # listed but missing
    for p in picks[2:4]:
        (root / p).unlink()
        out["missing"].append(p)
    # not an image at all
    (root / picks[4]).write_bytes(b"this is not a png\n" * 10)
    out["garbage"].append(picks[4])
    # unexpected but readable modes: 16-bit, RGBA, palette, LA
    a = np.asarray(Image.open(root / picks[5]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(a.astype(np.uint16)).save(root / picks[5])  # 16-bit grayscale PNG
    Image.open(root / picks[6]).convert("RGBA").save(root / picks[6])
    Image.open(root / picks[7]).convert("P").save(root / picks[7])
    Image.open(root / picks[8]).convert("LA").save(root / picks[8])
    out["odd_mode"] += picks[5:9]
    # stray files in the folders (not in the CSVs)
    folder = (root / picks[0]).parent
    (folder / ".DS_Store").write_bytes(b"\0\1junk")
    (folder / "Thumbs.db").write_bytes(b"junk")
    (folder / "image99.png").write_bytes(b"stray")
    out["stray"] += [str(folder / ".DS_Store")]
    return dict(out)
