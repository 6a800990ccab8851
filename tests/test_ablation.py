"""The one-command ablation (experiment=synthetic_ablation) under debug=smoke, and what its runs
carry: the report with CIs and paired differences, the W&B logging contract read back from the
offline .wandb files, and the dashboard spec built from those runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tasks import run_task
from tests.conftest import FAST, compose, run_py
from xfergan.tracking.wandb_files import read_offline_run

ARMS = ["real", "synthetic", "mixed", "finetune", "teacher", "distill_real", "distill_gan"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    sweep = tmp / "sweep"
    t0 = time.time()
    r = run_py(
        [
            "experiment=synthetic_ablation",
            "debug=smoke",
            "seed=0,1",  # the smoke grid: 2 seeds (the fewest a paired interval needs) at one n
            "dataset.n_per_class=8",  # (groups by n: tests/test_report.py, on written runs)
            "trainer.enable_progress_bar=false",
            f"paths.cache_dir={tmp / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=600,
    )
    took = time.time() - t0
    assert r.returncode == 0, r.stderr[-4000:]
    return {"sweep": sweep, "took": took, "stdout": r.stdout}


def test_one_command_runs_the_grid_and_ends_with_the_report(ablation):
    sweep = ablation["sweep"]
    assert ablation["took"] < 180, f"smoke ablation took {ablation['took']:.0f} s (budget 180)"
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2  # n_per_class 8 x seeds {0, 1}
    for j in jobs:
        m = json.loads((j / "metrics.json").read_text())
        assert m["status"] == "ok" and m["arms"] == ARMS
        for arm in ARMS:
            assert json.loads((j / f"classify_{arm}" / "metrics.json").read_text())["arm"] == arm
        kept = json.loads((j / "pseudolabel_synthetic" / "metrics.json").read_text())
        assert 0 <= kept["distill/kept_fraction_min"] <= 1
        assert "distill/kept_fraction_class_0" in kept
        # provenance: each seed's GAN was trained on that seed's own subset
        man = json.loads((j / "synthesize" / "manifest.json").read_text())
        assert man["real_data"]["seed"] == m["seed"]
        assert man["real_data"]["n_per_class"] == int(m["n_per_class"])
    md = (sweep / "report.md").read_text()
    assert "0 failed, 0 missing" in md or "(2 ok, 0 failed), 0 missing" in md
    for arm in ARMS[1:]:
        assert f"{arm} − real" in md
    assert "distill_gan − distill_real" in md and "distill_gan − teacher" in md
    # the labelled budget is train + val per class; the steps of every arm; primary comparisons
    assert "8 train + 8 val per class (160 labelled images)" in md
    assert "## Steps run per arm" in md and "## Primary comparisons (test/acc; Holm" in md
    for pair in (
        "distill_gan − real",
        "synthetic − real",
        "mixed − real",
        "distill_gan − distill_real",
    ):
        assert f"| {pair} |" in md  # rows of the primary table
    assert "## GAN quality" in md and "gan_memorization_ratio" in md
    assert (sweep / "plot_arms.png").stat().st_size > 5000
    rep = json.loads((sweep / "report.json").read_text())
    g = rep["arms"]["groups"][0]
    assert sorted(g["seeds"]) == [0, 1] and len(g["paired"]) >= 8


def test_runs_follow_the_wandb_logging_contract(ablation):
    job = ablation["sweep"] / "0"  # n_per_class=8, seed=0
    seen = {}
    for arm in ("real", "synthetic"):
        d = job / f"classify_{arm}"
        run = read_offline_run(next(d.glob("wandb/offline-run-*/run-*.wandb")))
        m = json.loads((d / "metrics.json").read_text())
        source = "real" if arm == "real" else "synthetic"
        assert run["name"] == f"classify-{arm}-mnist-{source}-n8v8-s0-j0"  # 8 train + 8 val
        assert run["group"] == "synthetic_ablation" and run["job_type"] == "classify"
        c = run["config"]
        assert c["source"] == source and c["arm"] == arm and c["n_per_class"] == 8
        assert c["n_train_synthetic"] == m["n_train_synthetic"] and c["seed"] == 0
        assert c["dataset"]["n_per_class"] == 8  # the nested resolved config is there too
        s = run["summary"]
        assert s["test/acc"] == pytest.approx(m["test/acc"]) and s["status"] == "ok"
        assert s["val/acc"]["max"] >= s["val/acc"]["tested"] == pytest.approx(m["val/acc"])
        assert s["wall_s"] == m["wall_s"] and s["test/majority_acc"] == m["test/majority_acc"]
        seen[arm] = run
    assert seen["synthetic"]["config"]["n_train_synthetic"] > 0
    gan = read_offline_run(next((job / "gan").glob("wandb/offline-run-*/run-*.wandb")))
    assert gan["job_type"] == "gan" and "val/gan_fid" in gan["summary"]
    assert "gan/samples" in gan["history_keys"]


def test_a_failed_job_is_failed_in_wandb(out):
    with pytest.raises(Exception, match="n_per_class=9000"):
        run_task(compose(FAST + ["debug=smoke", "dataset.n_per_class=9000"], out))
    run = read_offline_run(next(out.glob("wandb/offline-run-*/run-*.wandb")))
    assert run["summary"]["status"] == "failed" and "9000" in run["summary"]["error"]
    assert run["exit_code"] == 1


def test_dashboard_spec_references_only_keys_the_runs_have(ablation, tmp_path):
    out = tmp_path / "dash"
    res = run_task(
        compose(
            [
                "task=dashboard",
                "group=synthetic_ablation",
                f"dir={ablation['sweep']}",
                "logger=none",
            ],
            out,
        )
    )
    spec = json.loads(Path(res["dashboard/spec"]).read_text())
    runs = [read_offline_run(f) for f in ablation["sweep"].rglob("offline-run-*/run-*.wandb")]
    assert len(spec["panels"]) >= 6 and spec["group"] == "synthetic_ablation"
    assert "study-level kappa per body part" in spec["dropped_panels"]  # MNIST: no study kappa
    for p in spec["panels"]:
        for k in [p.get("groupby"), p.get("x")]:
            if k and not k.startswith("config."):
                assert any(k in r["summary"] for r in runs), (p["title"], k)
        for k in [p.get("groupby"), p.get("x")] + p.get("metrics", []) + [p.get("y")]:
            if not k:
                continue
            if k.startswith("config."):
                assert any(k[7:] in r["config"] for r in runs), (p["title"], k)
            else:
                assert any(k in r["summary"] or k in r["history_keys"] for r in runs), k
    groupbys = {p["groupby"] for p in spec["panels"] if p.get("groupby")}
    assert "config.arm" in groupbys and "config.source" not in groupbys  # arms, not sources


def test_a_teacher_that_does_not_fit_is_one_line(ablation, tmp_path):
    """A 10-class MNIST teacher for a 2-class dataset: refused before anything is labelled."""
    from xfergan.errors import UserError

    teacher = ablation["sweep"] / "0" / "classify_teacher"
    with pytest.raises(UserError, match="predicts 10 classes but this dataset has 2") as e:
        run_task(
            compose(
                FAST
                + [
                    "task=pseudolabel",
                    "dataset=pneumoniamnist",
                    "dataset.image_size=28",
                    "distill.source=real",
                    f"distill.teacher={teacher}",
                    "logger=none",
                ],
                tmp_path,
            )
        )
    assert "\n" not in str(e.value)
