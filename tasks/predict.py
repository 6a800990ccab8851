"""task=predict run=<finished task=classify run dir> input=<folder | CSV | image>: the run's
tested checkpoint applied to unlabelled images, with the run's own preprocessing (its decode
size and colour, its model's input size, channels and normalization).

  input=<folder>  every file below it (recursively; hidden files aside)
  input=<csv>     a `path` column (relative to the CSV's folder; paths that leave it are
                  refused) and an optional `group` column (patient / study: group-level rows,
                  the mean probability of the group's images, as the study metrics)
  input=<image>   one file

Writes predictions.csv atomically: level (image | group), path, group, predicted class and one
probability column per class. Unreadable files are listed in skipped_images.csv (not fatal)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from datamodules.files import ImageRow, decode_all, inside, read_csv_rows
from lightning_modules.classifier import ClassifierModule
from xfergan import transforms as T
from xfergan.devices import job_device
from xfergan.errors import UserError
from xfergan.io import atomic_write_text
from xfergan.runtime import find_checkpoint, output_dir, write_problems
from xfergan.schema import DatasetConfig

log = logging.getLogger(__name__)


def list_inputs(spec: str) -> tuple[Path, list[ImageRow], list[dict]]:
    """(root, rows, problems) for a folder, a CSV or one image."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise UserError(f"input={p}: the folder holds no files")
        return p, [ImageRow(f.relative_to(p).as_posix(), -1, "") for f in files], []
    if p.is_file() and p.suffix.lower() == ".csv":
        raw = read_csv_rows(p, {"path"}, "path[,group] (input= lists images to predict)")
        rows, problems = [], []
        for r in raw:
            if not inside(p.parent, r["path"]):
                problems.append(
                    {"split": "input", "path": r["path"], "reason": "path outside the CSV's folder"}
                )
                continue
            rows.append(ImageRow(r["path"], -1, "", r.get("group", "")))
        return p.parent, rows, problems
    if p.is_file():
        return p.parent, [ImageRow(p.name, -1, "")], []
    raise UserError(f"input={p} does not exist (a folder, a .csv or an image file)")


def run(cfg: DictConfig) -> dict:
    if not cfg.run or not cfg.get("input"):
        raise UserError(
            "task=predict needs run=<a finished task=classify run dir> input=<folder|CSV|image>"
        )
    run_dir = Path(cfg.run)
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{run_dir} has no .hydra/config.yaml: pass a run dir written by run.py")
    train_cfg = OmegaConf.load(saved)
    ckpt, kind = find_checkpoint(run_dir, str(cfg.evaluate.checkpoint))
    model = ClassifierModule.load_safely(str(ckpt))
    spec = model.hparams.input_spec or {}
    names = list(model.hparams.class_names or [])
    ds = train_cfg.dataset
    color = str(ds.get("color", "gray"))
    size = int(ds.get("image_size", spec.get("image_size", 32)))
    out = output_dir(cfg)

    root, rows, problems = list_inputs(str(cfg.input))
    x, reasons = decode_all(root, rows, size, color, 0, "input")
    problems += [
        {"split": "input", "path": r.path, "reason": why}
        for r, why in zip(rows, reasons)
        if why is not None
    ]
    keep = [i for i, why in enumerate(reasons) if why is None]
    rows, x = [rows[i] for i in keep], x[keep]

    write_problems(out, problems)
    for p in problems:
        log.warning("skipped %s: %s", p["path"], p["reason"])
    if not rows:
        raise UserError(f"input={cfg.input}: no readable image ({len(problems)} skipped)")

    dev = job_device(cfg)
    model = model.to(dev).eval()
    bs = int(ds.get("eval_batch_size") or DatasetConfig.eval_batch_size)
    probs = []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), bs), desc=f"predicting {len(x)} images", unit="batch"):
            xb = T.for_model(x[i : i + bs].to(dev), {"image_size": size, **spec})
            probs.append(model(xb).float().softmax(1).cpu())
    from xfergan.evaluation.metrics import decided

    threshold = (getattr(model, "decision", None) or {}).get("threshold")
    p = torch.cat(probs)
    names = names or [str(i) for i in range(p.shape[1])]

    def predicted(pr: torch.Tensor) -> str:  # the rule the run was tested with
        return names[int(decided(pr[None], threshold).argmax(1))]

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["level", "path", "group", "predicted"] + [f"prob_{n}" for n in names])
    for r, pr in zip(rows, p):
        w.writerow(["image", r.path, r.group, predicted(pr)] + [f"{v:.6f}" for v in pr.tolist()])
    groups = sorted({r.group for r in rows if r.group})
    for g in groups:
        idx = [i for i, r in enumerate(rows) if r.group == g]
        pr = p[idx].mean(0)
        w.writerow(["group", "", g, predicted(pr)] + [f"{v:.6f}" for v in pr.tolist()])
    atomic_write_text(out / "predictions.csv", buf.getvalue())
    log.info(
        "wrote %s (%d images, %d groups, %d skipped)",
        out / "predictions.csv",
        len(rows),
        len(groups),
        len(problems),
    )
    return {
        "predicted_run": str(run_dir),
        "predicted_checkpoint": str(ckpt),
        "predicted_checkpoint_kind": kind,
        "n_predicted": len(rows),
        "n_groups": len(groups),
        "n_skipped": len(problems),
        "class_names": names,
        "decision_threshold": threshold,
    }
