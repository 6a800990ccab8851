"""Evidence a reviewer would accept (issue 18): every choice reads val or train only, budgets are
exact, every model that feeds another is checked against the run's own images, statistics say
"undefined" when they cannot know, a resumed pipeline reuses only matching stages, and one
decision rule holds from test to evaluate and predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tasks import choosable, run_task
from tests.conftest import FAST, compose, run_py
from xfergan import stats
from xfergan.errors import UserError

SMOKE = FAST + ["debug=smoke", "logger=none"]
SMALL = FAST + ["logger=none", "dataset.n_per_class=3", "dataset.val_per_class=2"]


# ----------------------------------------------------------------------------- 1. selection
@pytest.mark.parametrize(
    "key",
    [
        "test/acc",
        "teacher/test_acc",
        "feature_net/test/acc",
        "diff/test/acc_mixed-real",
        "val/test_acc",
        "test/gan_fid",
        "gan/fid",
        "acc",
    ],
)
def test_anything_but_a_val_or_train_number_is_refused_as_a_chooser(key, out):
    assert not choosable(key)
    with pytest.raises(UserError, match="never chosen on"):
        run_task(compose(SMOKE + ["dataset.n_per_class=2", f"sweep.objective={key}"], out))


@pytest.mark.parametrize("key", ["val/acc", "val/gan_fid", "train/loss", "val/auroc"])
def test_val_and_train_numbers_may_choose(key):
    assert choosable(key)


def test_a_sweep_with_a_test_objective_stops_at_once_with_one_line(tmp_path):
    r = run_py(
        ["-m"]
        + SMOKE
        + [
            "dataset.n_per_class=2",
            "sweep.objective=teacher/test_acc",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ]
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("xfergan: error: sweep.objective=")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "sweep" / "1" / "metrics.json").exists()  # job 1 never ran


def test_gan_quality_is_measured_on_val_and_named_so(tmp_path):
    """task=gan's FID/precision/recall compare against this run's val images (val/gan_*, a
    chooser may read them); gan.eval_split=test gives test/gan_* (reported, refused as chooser)."""
    feat = tmp_path / "feat"  # the GAN's val split is its val split (gan.feature_ckpt's check)
    f = run_task(compose(SMALL + ["trainer.max_epochs=1", "dataset.val_per_class=4"], feat))
    gan_args = SMOKE + [
        "task=gan",
        "dataset.n_per_class=3",
        "dataset.val_per_class=4",
        f"gan.feature_ckpt={f['last_checkpoint']}",
        "gan.eval_n_per_class=50",
        "gan.generator.width=8",
        "gan.discriminator.width=8",
        "gan.image_size=28",
    ]
    m = run_task(compose(gan_args, tmp_path / "gan"))
    assert m["val/gan_n_real"] == 40  # the 4 val images per class, not 50 test ones
    assert {"val/gan_fid", "val/gan_precision", "val/gan_recall"} <= set(m)
    assert not [k for k in m if k.startswith(("gan/fid", "test/"))]
    t = run_task(compose(gan_args + ["gan.eval_split=test"], tmp_path / "gan_test"))
    assert t["test/gan_n_real"] == 500 and "val/gan_fid" not in t
    assert not choosable("test/gan_fid") and choosable("val/gan_fid")


def test_a_feature_net_that_saw_the_images_it_measures_on_is_refused(tmp_path):
    """Issue 27.8: gan.feature_ckpt measures the GAN on val: one trained on every training
    image (this run's val images among them) is refused in one line before the GAN trains;
    allowed by dataset.model_provenance=ignore, it is flagged in metrics.json."""
    every = ["dataset.n_per_class=null", "dataset.val_per_class=0", "trainer.max_steps=1"]
    f = run_task(compose(SMALL + every, tmp_path / "feat"))
    gan = SMOKE + [
        "task=gan",
        "dataset.n_per_class=3",
        "dataset.val_per_class=4",
        f"gan.feature_ckpt={f['last_checkpoint']}",
        "gan.eval_n_per_class=4",
        "gan.generator.width=8",
        "gan.discriminator.width=8",
        "gan.image_size=28",
    ]
    with pytest.raises(UserError, match="gan.feature_ckpt .*saw 40 of the val images") as e:
        run_task(compose(gan, tmp_path / "gan"))
    assert "\n" not in str(e.value) and not (tmp_path / "gan" / "checkpoints").exists()
    m = run_task(compose(gan + ["dataset.model_provenance=ignore"], tmp_path / "gan"))
    assert m["feature_net_foreign"] is True and "val images" in m["feature_net_foreign_reason"]
    assert len(m["feature_net_sha256"]) == 64


def test_the_pipelines_feature_net_never_saw_the_seeds_val_images(tmp_path):
    """Issue 27.8: the pipeline's feature net trains outside this seed's val images (one per
    seed, cached), so its GAN's check passes at any seed."""
    args = SMOKE + ["task=pipeline", "pipeline.arms=[real,synthetic]", "pipeline.primary=[]"]
    args += ["dataset.n_per_class=3", "dataset.val_per_class=2", "gan.image_size=28"]
    args += ["gan.generator.width=8", "gan.discriminator.width=8", "gan.eval_n_per_class=2"]
    m = run_task(compose(args + ["seed=5"], tmp_path / "p"))
    fm = json.loads((Path(m["feature_net/dir"]) / "metrics.json").read_text())
    real = json.loads((tmp_path / "p" / "classify_real" / "metrics.json").read_text())
    assert fm["seed"] == 5 and fm["data/val_ids_sha256"] == real["data/val_ids_sha256"]
    g = json.loads((tmp_path / "p" / "gan" / "metrics.json").read_text())
    assert g["feature_net_foreign"] is False and "val/gan_fid" in g
    assert m["foreign"] == {}


# ----------------------------------------------------------------------------- 3. provenance
@pytest.fixture(scope="module")
def seed1_teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher1")
    run_task(compose(SMALL + ["trainer.max_epochs=1", "seed=1"], d))
    return d


def test_a_classifier_checkpoint_records_the_images_it_saw(seed1_teacher):
    m = json.loads((seed1_teacher / "metrics.json").read_text())
    blob = torch.load(m["tested_checkpoint"], weights_only=True)
    rec = blob["xfergan_provenance"]
    assert rec["seed"] == 1 and rec["n_images"] == 30
    assert len(rec["seen_uids"]) == 30
    for k in ("train", "val", "test", "seen"):
        assert (
            rec[f"{k}_ids_sha256"] == m[f"data/{k}_ids_sha256"]
            and len(m[f"data/{k}_ids_sha256"]) == 64
        )
    assert m["data/seen_ids_sha256"] == m["data/train_ids_sha256"]  # real images only


def test_a_teacher_trained_on_another_seeds_subset_is_refused(seed1_teacher, tmp_path):
    args = SMALL + ["task=pseudolabel", "distill.source=real", f"distill.teacher={seed1_teacher}"]
    with pytest.raises(UserError, match=r"teacher .*seed=1.*this run on .*seed=0"):
        run_task(compose(args + ["seed=0"], tmp_path / "refused"))
    m = run_task(compose(args + ["seed=0", "dataset.model_provenance=ignore"], tmp_path / "ok"))
    assert m["teacher_foreign"] is True and "seed=1" in m["teacher_foreign_reason"]
    own = run_task(compose(args + ["seed=1"], tmp_path / "own"))
    assert own["teacher_foreign"] is False
    # the set made with a foreign teacher carries that teacher's images: a seed-0 run refuses it
    with pytest.raises(UserError, match="synthetic set"):
        run_task(
            compose(
                SMALL
                + [
                    "trainer.max_epochs=1",
                    "dataset.source=mixed",
                    f"dataset.synthetic_path={tmp_path / 'ok'}",
                ],
                tmp_path / "student",
            )
        )


def test_an_init_checkpoint_from_another_subset_is_refused(seed1_teacher, tmp_path):
    ckpt = json.loads((seed1_teacher / "metrics.json").read_text())["tested_checkpoint"]
    args = SMALL + ["trainer.max_epochs=1", f"model.init={ckpt}"]
    with pytest.raises(UserError, match="model.init checkpoint"):
        run_task(compose(args + ["seed=0"], tmp_path / "refused"))
    m = run_task(compose(args + ["seed=1"], tmp_path / "own"))
    assert m["init_foreign"] is False


def test_an_init_without_ids_leaves_the_model_it_starts_unknown_not_clean(seed1_teacher, tmp_path):
    """An init checkpoint that records no image ids, taken with model_provenance=ignore (and
    flagged init_foreign), made a model whose own record said it saw exactly this run's
    images: a later check=policy run then took it as a clean teacher or init. What it saw is
    now unknown (no ids recorded), so a check refuses it."""
    from datamodules.provenance import check_seen
    from xfergan.training import build_datamodule

    blob = torch.load(
        json.loads((seed1_teacher / "metrics.json").read_text())["tested_checkpoint"],
        weights_only=False,
    )
    blob.pop("xfergan_provenance")
    torch.save(blob, tmp_path / "no_ids.ckpt")
    args = SMALL + ["trainer.max_epochs=1", f"model.init={tmp_path / 'no_ids.ckpt'}", "seed=0"]
    m = run_task(compose(args + ["dataset.model_provenance=ignore"], tmp_path / "b"))
    assert m["init_foreign"] is True
    rec = torch.load(m["last_checkpoint"], weights_only=False)["xfergan_provenance"]
    assert rec.get("seen_uids") is None, "the fine-tuned model claims known ids"
    dm = build_datamodule(compose(SMALL + ["seed=0"], tmp_path / "c"))
    dm.setup()
    with pytest.raises(UserError, match="records no image ids"):
        check_seen(rec.get("seen_uids"), rec, dm, dm.splits, "b", "check", "x")


def test_a_model_that_saw_test_images_is_always_refused(tmp_path):
    from datamodules.provenance import check_seen
    from xfergan.training import build_datamodule

    dm = build_datamodule(compose(SMALL, tmp_path))
    dm.setup()
    seen = torch.cat([dm.real_train.uid, dm.splits.test.uid[:2]])
    with pytest.raises(UserError, match="saw 2 images of this run's test split"):
        check_seen(seen, {}, dm, dm.splits, "teacher x", "ignore", "dataset.model_provenance")
    with pytest.raises(UserError, match="records no image ids"):
        check_seen(None, {}, dm, dm.splits, "teacher x", "check", "dataset.model_provenance")


# ----------------------------------------------------------------------------- 4. statistics
def test_zero_variance_is_undefined_never_p_zero():
    d = stats.paired({0: 0.91, 1: 0.81, 2: 0.86}, {0: 0.90, 1: 0.80, 2: 0.85})
    assert (
        math.isnan(d["p"])
        and math.isnan(d["low"])
        and stats.verdict(d["low"], d["high"]) == "undefined"
    )
    same = stats.Predictions(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    full, reps = stats.bootstrap_table(
        {"a": {0: same, 1: same}, "b": {0: same, 1: same}}, "test/acc", 200
    )
    r = stats.bootstrap_paired(full["a"], full["b"], reps["a"], reps["b"], [0, 1])
    assert r["mean"] == 0 and math.isnan(r["p"]) and math.isnan(r["low"])


def test_holm_against_hand_computed_values():
    # sorted .01 .02 .04 (.03 undefined-free): 3*.01=.03, max(.03, 2*.02=.04), max(.04, .04)
    assert stats.holm([0.04, 0.01, math.nan, 0.02]) == pytest.approx(
        [0.04, 0.03, math.nan, 0.04], nan_ok=True
    )
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]


def test_the_interval_includes_the_test_samples_variance():
    """Every seed's difference is exactly +1 pp on 600 test images (the t interval over seeds
    is undefined); the images the arms disagree on make the bootstrap interval ~±1 pp wide."""
    rng = np.random.default_rng(0)
    n = 600
    label = rng.integers(0, 2, n)
    arms = {"a": {}, "b": {}}
    for s in range(5):
        b = label.copy()
        flip = rng.choice(n, 60, replace=False)  # b wrong on 60 images
        b[flip] = 1 - b[flip]
        a = b.copy()
        fix = flip[:30]  # a right on 30 of them, wrong on 24 others: +6 images = +1 pp
        a[fix] = label[fix]
        other = rng.choice(np.setdiff1d(np.arange(n), flip), 24, replace=False)
        a[other] = 1 - a[other]
        arms["a"][s], arms["b"][s] = stats.Predictions(label, a), stats.Predictions(label, b)
    full, reps = stats.bootstrap_table(arms, "test/acc", 1000)
    assert all(full["a"][s] - full["b"][s] == pytest.approx(0.01) for s in range(5))
    assert math.isnan(stats.paired(full["a"], full["b"])["low"])
    r = stats.bootstrap_paired(full["a"], full["b"], reps["a"], reps["b"], range(5))
    assert r["mean"] == pytest.approx(0.01)
    assert r["low"] < 0.004 and r["high"] > 0.016  # binomial-scale width, not zero
    assert r["low"] < r["mean"] < r["high"]


def test_weighted_metrics_match_sklearn_style_hand_values():
    p = stats.Predictions(
        np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), np.array([0.1, 0.6, 0.7, 0.6])
    )
    assert p.metric("test/acc") == 0.75
    assert p.metric("test/balanced_acc") == pytest.approx(0.75)
    assert p.metric("test/auroc") == pytest.approx((1 + 1 + 1 + 0.5) / 4)  # one tie at .6
    assert p.metric("test/kappa") == pytest.approx(0.5)


def _pipe(d, seed, n, accs, steps=None, train=None, extra=None):
    d.mkdir(parents=True)
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"dataset.n_per_class={n}", f"seed={seed}"])
    )
    m = {"task": "pipeline", "status": "ok", "seed": seed, "arms": list(accs)}
    m["primary"] = [["mixed", "real"]]
    m["primary_metric"] = "test/acc"
    m["unequal_budgets"] = ["teacher"]
    for a, v in accs.items():
        m[f"test/acc_{a}"] = v
        m[f"steps_{a}"] = (steps or {}).get(a, 600)
        m[f"data/train_ids_sha256_{a}"] = (train or {}).get(a, f"subset-{seed}")
        m[f"data/test_ids_sha256_{a}"] = "test"
    m.update(extra or {})
    (d / "metrics.json").write_text(json.dumps(m))


def test_the_report_pairs_only_true_pairs_with_equal_budgets(tmp_path):
    sweep = tmp_path / "sweep"
    accs = [(0.90, 0.92, 0.95, 0.93), (0.80, 0.83, 0.84, 0.70), (0.85, 0.86, 0.90, 0.88)]
    for seed, (r, m, t, f) in enumerate(accs):
        _pipe(
            sweep / str(seed),
            seed,
            8,
            {"real": r, "mixed": m, "teacher": t, "finetune": f},
            steps={"teacher": 300, "finetune": 300},
            # seed 2's mixed arm trained on other real images: not a pair
            train={"mixed": "other"} if seed == 2 else None,
            extra={"test/kappa_real": None, "test/kappa_mixed": 0.5},
        )
    _pipe(sweep / "dup", 1, 8, {"real": 0.10, "mixed": 0.10, "teacher": 0.1, "finetune": 0.1})
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "rep"))
    md = (sweep / "report.md").read_text()
    rep = json.loads((sweep / "report.json").read_text())["arms"]
    g = rep["groups"][0]
    assert g["seeds"] == [0, 1, 2]  # the duplicate seed 1 is left out and said so
    assert any("seed 1 has 2 runs" in n for n in g["notes"]) and "seed 1 has 2 runs" in md
    assert g["arms"]["test/acc"]["real"]["by_seed"]["1"] == 0.80
    by = {(d["metric"], d["arm"], d["baseline"]): d for d in g["paired"]}
    mixed = by["test/acc", "mixed", "real"]
    assert mixed["kind"] == "primary" and mixed["seeds"] == [0, 1] and mixed["n"] == 2
    assert "different real images" in " ".join(mixed["notes"])
    assert mixed["p_holm"] == pytest.approx(mixed["p"])  # a family of one
    fin = by["test/acc", "finetune", "real"]
    assert fin["verdict"] == "not compared: unequal step budgets" and fin["budget"] == "300 vs 600"
    teach = by["test/acc", "teacher", "real"]  # declared in pipeline.unequal_budgets
    assert teach["kind"] == "exploratory" and math.isfinite(teach["mean"])
    assert "allowed by pipeline.unequal_budgets" in " ".join(teach["notes"])
    assert g["arms"]["test/kappa"]["real"]["missing_seeds"] == [0, 1, 2]  # null: missing, counted
    assert "## Primary comparisons" in md and "## Exploratory comparisons" in md
    assert "## Steps run per arm" in md and "| 600 | 600 | 300 | 300 |" in md


# ----------------------------------------------------------------------------- 5. resume
def test_a_stage_run_with_other_settings_is_not_reused(tmp_path):
    args = SMALL + [
        "task=pipeline",
        "pipeline.arms=[real]",
        "trainer.max_steps=4",
        "pipeline.feature_net=false",
    ]
    first = run_task(compose(args, tmp_path))
    stage = tmp_path / "classify_real" / "metrics.json"
    assert json.loads(stage.read_text())["global_step"] == 4
    again = run_task(compose(args + ["resume=true"], tmp_path))  # same settings: reused
    assert json.loads(stage.read_text())["wall_s"] == first["stage_wall_s"]["classify_real"]
    assert again["steps_real"] == 4
    changed = run_task(compose(args + ["resume=true", "trainer.max_steps=6"], tmp_path))
    assert changed["steps_real"] == 6 and json.loads(stage.read_text())["global_step"] == 6


# ----------------------------------------------------------------------------- 6. one decision rule
def test_evaluate_and_predict_use_the_threshold_the_run_was_tested_at(tmp_path):
    args = FAST + [
        "dataset=pneumoniamnist",
        "logger=none",
        "model.decision=val_balanced_acc",
        "trainer.max_steps=30",
        "checkpoint.monitor=val/auroc",
    ]
    run_dir = tmp_path / "run"
    m = run_task(compose(args, run_dir))
    t = m["decision_threshold"]
    assert t != 0.5 and m["test/balanced_acc"] != m["test/balanced_acc_argmax"]
    blob = torch.load(m["tested_checkpoint"], weights_only=True)
    assert blob["xfergan_decision"] == {"rule": "val_balanced_acc", "threshold": t}
    from omegaconf import OmegaConf

    (run_dir / ".hydra").mkdir()
    OmegaConf.save(compose(args), run_dir / ".hydra" / "config.yaml")
    e = run_task(
        compose(FAST + ["task=evaluate", f"run={run_dir}", "logger=none"], tmp_path / "ev")
    )
    for k in ("test/acc", "test/balanced_acc", "test/kappa", "test/auroc"):
        assert e[k] == pytest.approx(m[k], abs=1e-9), k
    z = np.load(run_dir / "test_predictions.npz")
    assert (z["pred"] == (z["score"] >= t)).all()
    assert (z["pred"] == z["label"]).mean() == pytest.approx(m["test/acc"], abs=1e-6)


# ----------------------------------------------------------------------------- 8. dashboard
def test_the_dashboards_headline_groups_by_arm():
    from xfergan.tracking.dashboard import panels

    head = panels()[0]
    assert head["groupby"] == "config.arm" and "source" not in head["title"]
    assert all(p.get("groupby") != "config.source" for p in panels())


@pytest.mark.parametrize("metric", ["test/acc", "test/balanced_acc", "test/kappa", "test/auroc"])
def test_bootstrap_resamples_are_the_one_at_a_time_metric(metric):
    """The batched bootstrap gives, resample for resample, the metric of each weighted resample
    computed on its own (the same draws, three classes for the confusion metrics, score ties
    and an arm with no scores for AUROC)."""
    rng = np.random.default_rng(1)
    n, k = 300, 2 if metric == "test/auroc" else 3
    label = rng.integers(0, k, n)
    arms = {}
    for a in ("x", "y"):
        arms[a] = {}
        for s in range(3):
            pred = np.where(rng.random(n) < 0.7, label, rng.integers(0, k, n))
            score = np.round(rng.random(n) * 0.5 + 0.5 * label, 1)  # ties
            arms[a][s] = stats.Predictions(label, pred, None if (a, s) == ("y", 2) else score)
    full, reps = stats.bootstrap_table(arms, metric, n_boot=50, seed=7)
    draw = np.random.default_rng(7)
    for b in range(50):
        w = np.bincount(draw.integers(0, n, n), minlength=n).astype(np.float64)
        for a, by_seed in arms.items():
            for s, p in by_seed.items():
                want = p.metric(metric, w, k=k)
                got = reps[a][s][b]
                assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want), (
                    (a, s, b, got, want),
                )
    assert full["x"][0] == pytest.approx(arms["x"][0].metric(metric, k=k))


def test_a_stage_with_two_foreign_inputs_lists_both():
    """The pipeline's summary of provenance overrides kept one reason per stage: a GAN guided
    by a foreign teacher and measured with a foreign feature net showed only one of them."""
    from tasks.pipeline import foreign_uses

    got = foreign_uses(
        {
            "gan": {
                "guidance/teacher_foreign": True,
                "guidance/teacher_foreign_reason": "saw seed 1's images",
                "feature_net_foreign": True,
                "feature_net_foreign_reason": "trained on seed 2's pool",
            },
            "classify_real": {"init_foreign": False},
        }
    )
    assert got == {
        "gan": [
            "guidance/teacher: saw seed 1's images",
            "feature_net: trained on seed 2's pool",
        ]
    }
