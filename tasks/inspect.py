"""task=inspect: what is in the data. Prints and writes data_summary.json: per split (and body
part for MURA) images, studies, patients, abnormal images and studies; skipped files with reasons."""

from __future__ import annotations

import json
import logging
from collections import Counter

from omegaconf import DictConfig

from xfergan.io import atomic_write_json
from xfergan.runtime import output_dir
from xfergan.training import build_datamodule, load_data

log = logging.getLogger(__name__)


def generic_summary(dm) -> dict:
    out = {}
    for split in ("train", "val", "test"):
        y = getattr(dm.splits, split).y.cpu().tolist()
        c = Counter(y)
        out[split] = {
            "all": {
                "images": len(y),
                **{f"class_{dm.class_names[k]}": c.get(k, 0) for k in range(dm.num_classes)},
            }
        }
    out["skipped"] = {"count": len(dm.problems), "files": dm.problems}
    return out


def run(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    dm = build_datamodule(cfg)
    load_data(dm, out)
    summary = dm.summary or generic_summary(dm)
    summary["dataset"] = dm.name
    summary["class_names"] = dm.class_names
    atomic_write_json(out / "data_summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, indent=2))
    reasons = Counter(p["reason"] for p in summary["skipped"]["files"])
    print(
        f"skipped files: {summary['skipped']['count']}"
        + "".join(f"\n  {n} x {r}" for r, n in reasons.most_common())
    )
    return {"skipped": summary["skipped"]["count"], **dm.sizes()}
