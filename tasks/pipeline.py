"""task=pipeline (paper Table 3): [feature net ->] gan -> synthesize -> classify on real few-shot,
synthetic only, and real+synthetic; writes table3.md, table3.json and a bar chart. Every stage
runs in its own sub-dir with its own metrics.json, and W&B run (same group, job_type = stage)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tasks.common import output_dir
from tasks.plots import bar_chart_png
from xfergan.errors import UserError
from xfergan.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

PAPER = {"real": 0.8094, "synthetic": 0.9188, "full": 0.9563}
ARMS = ("real", "synthetic", "mixed", "finetune")  # finetune: pre-train on synthetic, then real
LABELS = {
    "real": "real",
    "synthetic": "synthetic only",
    "mixed": "real + synthetic",
    "finetune": "synthetic, then fine-tuned on real",
}


def stage_cfg(cfg: DictConfig, out: Path, task: str, overrides: dict[str, Any]) -> DictConfig:
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.task = task
        sub.paths.output_dir = str(out)
        for key, value in overrides.items():
            OmegaConf.update(sub, key, value, merge=False)
    return sub


def _run(sub: DictConfig) -> dict:
    from tasks import run_task

    m = run_task(sub)
    if m.get("status") != "ok":
        raise UserError(f"pipeline stage {sub.task} failed: {m.get('error')}")
    return m


def run(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    pc = cfg.pipeline
    bad = [a for a in pc.arms if a not in ARMS]
    if bad:
        raise UserError(f"pipeline.arms: unknown {bad}; use {', '.join(ARMS)}")
    if "finetune" in pc.arms and "synthetic" not in pc.arms[: list(pc.arms).index("finetune")]:
        raise UserError(
            "pipeline.arms: finetune starts from the synthetic arm's model; list "
            "synthetic before it"
        )
    results: dict[str, Any] = {}
    gan_over: dict[str, Any] = {}
    if pc.feature_net and not cfg.gan.feature_ckpt:
        fo = {
            "dataset.n_per_class": None,
            "dataset.source": "real",
            "checkpoint.test": "last",
            **dict(pc.feature_net_overrides),
        }
        m = _run(stage_cfg(cfg, out / "feature_net", "classify", fo))
        results["feature_net/test/acc"] = m["test/acc"]
        gan_over["gan.feature_ckpt"] = m["last_checkpoint"]
    gm = _run(stage_cfg(cfg, out / "gan", "gan", gan_over))
    results.update({k: v for k, v in gm.items() if k.startswith("gan/")})
    sm = _run(
        stage_cfg(
            cfg, out / "synthesize", "synthesize", {"synthesize.checkpoint": gm["gan/checkpoint"]}
        )
    )
    table, last_ckpt = {}, {}
    for arm in pc.arms:
        over: dict[str, Any] = {"dataset.source": arm}
        if arm in ("synthetic", "mixed"):
            over["dataset.synthetic_path"] = sm["synthetic_path"]
        if arm == "finetune":  # the synthetic-only classifier, fine-tuned on the real images
            over = {"dataset.source": "real", "model.init": last_ckpt["synthetic"]}
        over.update(dict((pc.arm_overrides or {}).get(arm, {}) or {}))
        m = _run(stage_cfg(cfg, out / f"classify_{arm}", "classify", over))
        last_ckpt[arm] = m["last_checkpoint"]
        table[arm] = {
            "test/acc": m["test/acc"],
            "n_train_real": m["n_train_real"],
            # finetune saw the synthetic set too (in pre-training)
            "n_train_synthetic": table["synthetic"]["n_train_synthetic"]
            if arm == "finetune"
            else m["n_train_synthetic"],
            "wall_s": m.get("wall_s"),
        }
        results[f"test/acc_{arm}"] = m["test/acc"]
    write_table3(out, cfg, table, results)
    return results


def write_table3(out: Path, cfg: DictConfig, table: dict, results: dict) -> None:
    paper_ref = PAPER if cfg.dataset.name == "mnist" else {}  # the paper's numbers are MNIST's
    atomic_write_json(
        out / "table3.json",
        {"arms": table, "gan": results, "paper": paper_ref, "seed": int(cfg.seed)},
    )
    lines = [
        f"# Table 3 — {cfg.dataset.name}, {cfg.dataset.n_per_class or 'all'} real images per class, "
        f"seed {cfg.seed}",
        "",
        "| training data | real images | synthetic images | test acc (real test set) | paper |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, row in table.items():
        paper = paper_ref.get(arm)
        lines.append(
            f"| {LABELS[arm]} | {row['n_train_real']} | {row['n_train_synthetic']} | "
            f"{row['test/acc']:.4f} | {paper if paper is not None else '—'} |"
        )
    gan_keys = [
        k
        for k in (
            "gan/fid",
            "gan/kid",
            "gan/precision",
            "gan/recall",
            "gan/memorization_ratio",
            "gan/steps",
        )
        if k in results
    ]
    if gan_keys:
        lines += ["", "GAN: " + ", ".join(f"{k.split('/')[1]} {results[k]:.4g}" for k in gan_keys)]
    atomic_write_text(out / "table3.md", "\n".join(lines) + "\n")
    bar_chart_png(
        {a: r["test/acc"] for a, r in table.items()},
        out / "table3.png",
        title="Table 3: classifier test accuracy by training data",
        refs={"paper real (320)": PAPER["real"], "paper synthetic": PAPER["synthetic"]}
        if paper_ref
        else None,
    )
