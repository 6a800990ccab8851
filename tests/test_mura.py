import csv
import json

import pytest
import torch

import datamodules.files as files
from tasks import run_task
from tests.conftest import compose, run_py
from tests.mura_tree import build_tree, damage
from xfergan.errors import UserError
from xfergan.training import build_datamodule

SMALL = [
    "dataset=mura",
    "dataset.image_size=64",
    "dataset.decode_workers=1",
    "model=resnet18",
    "model.init=scratch",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "dataset.eval_batch_size=64",
]


@pytest.fixture
def tree(tmp_path):
    return build_tree(tmp_path / "data" / "mura")


def dm_for(tmp_path, overrides=()):
    cfg = compose(SMALL + [f"paths.data_dir={tmp_path / 'data'}", *overrides], tmp_path / "run")
    dm = build_datamodule(cfg)
    dm.setup()
    return dm


def test_counts_match_csv_rows_and_patients_are_disjoint(tree, tmp_path):
    dm = dm_for(tmp_path)
    s = dm.summary
    for part in ("elbow", "wrist"):
        n_train = s["train"].get(part, {}).get("images", 0) + s["val"].get(part, {}).get(
            "images", 0
        )
        assert n_train == tree["counts"][("train", part)]
        assert s["test"][part]["images"] == tree["counts"][("valid", part)]
    assert s["skipped"]["count"] == 0
    info = dm.splits.info
    assert set(info["train_groups"]).isdisjoint(info["val_groups"])
    assert set(info["train_groups"]).isdisjoint(info["test_groups"])
    assert len(info["val_groups"]) >= 1
    # the real MURA radiographs from ../shared are in the test split
    assert "patient11185" in info["test_groups"]
    assert dm.splits.test.x.shape[1:] == (1, 64, 64)


def test_one_body_part_only(tree, tmp_path):
    dm = dm_for(tmp_path, ["body_part=wrist"])
    assert set(dm.group_parts) == {"wrist"}
    assert dm.sizes()["n_test"] == tree["counts"][("valid", "wrist")]


def test_cache_is_built_once_and_reused(tree, tmp_path, monkeypatch):
    calls = []
    real = files._decode_job
    monkeypatch.setattr(files, "_decode_job", lambda a: calls.append(a) or real(a))
    dm1 = dm_for(tmp_path)
    n = len(calls)
    assert n == sum(tree["counts"].values())
    dm2 = dm_for(tmp_path)
    assert len(calls) == n, "second run must read the cache, not decode again"
    assert torch.equal(dm1.splits.test.x, dm2.splits.test.x)
    # a damaged cache file is rebuilt, never half-used
    cache = next((tmp_path / "run" / "cache" / "mura").glob("mura-*.pt"))
    cache.write_bytes(cache.read_bytes()[:100])
    dm3 = dm_for(tmp_path)
    assert len(calls) > n and torch.equal(dm3.splits.test.x, dm1.splits.test.x)


def test_damaged_files_are_skipped_counted_and_listed(tree, tmp_path):
    kinds = damage(tree)
    bad = set(kinds["truncated"] + kinds["missing"] + kinds["garbage"])
    dm = dm_for(tmp_path, ["dataset.max_bad_fraction=0.5"])
    skipped = {p["path"] for p in dm.problems}
    assert skipped == bad, (
        "exactly the damaged files are skipped; odd modes and stray files are fine"
    )
    listed = sum(tree["counts"].values())
    assert sum(dm.sizes()[k] for k in ("n_train", "n_val", "n_test")) == listed - len(bad)
    reasons = {p["path"]: p["reason"] for p in dm.problems}
    assert all("missing" in reasons[p] for p in kinds["missing"])
    assert all("truncated" in reasons[p] or "corrupt" in reasons[p] for p in kinds["truncated"])


def test_a_partial_copy_names_a_few_missing_images_and_lists_every_one(tree, tmp_path, caplog):
    """A copy missing thousands of images logs the first few and a count, not a line each, and
    skipped_images.csv lists every one, also when there are too many to go on."""
    import logging

    gone = tree["rows"]["train"][:12]
    for p in gone:
        (tree["root"] / p).unlink()
    caplog.set_level(logging.WARNING, logger=files.__name__)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="max_bad_fraction"):
        run_task(compose(SMALL + [f"paths.data_dir={tmp_path / 'data'}"], out))
    said = [r.getMessage() for r in caplog.records if r.name == files.__name__]
    assert len([m for m in said if m.startswith("skipped ")]) == 5, said
    assert said[-1].endswith("(... and 7 more; skipped_images.csv lists every one)"), said
    with open(out / "skipped_images.csv", newline="") as f:
        assert sorted(r["path"] for r in csv.DictReader(f)) == sorted(gone)


def test_bad_image_policies(tree, tmp_path):
    damage(tree)
    with pytest.raises(UserError, match="on_bad_image=skip"):
        dm_for(tmp_path, ["dataset.on_bad_image=error"])
    with pytest.raises(UserError, match="max_bad_fraction"):
        dm_for(tmp_path, ["dataset.max_bad_fraction=0.01"])


def test_csv_paths_outside_the_root_are_refused(tree, tmp_path):
    f = tree["root"] / "MURA-v1.1" / "train_image_paths.csv"
    with open(f, "a", newline="") as fh:
        csv.writer(fh).writerow(["MURA-v1.1/train/XR_ELBOW/../../../../../etc/passwd"])
    dm = dm_for(tmp_path, ["dataset.max_bad_fraction=0.5"])
    assert any(p["reason"] == "path outside the dataset root" for p in dm.problems)


def test_inspect_writes_data_summary(tree, tmp_path):
    damage(tree)
    out = tmp_path / "inspect"
    cfg = compose(
        SMALL
        + [f"paths.data_dir={tmp_path / 'data'}", "task=inspect", "dataset.max_bad_fraction=0.5"],
        out,
    )
    run_task(cfg)
    s = json.loads((out / "data_summary.json").read_text())
    assert s["skipped"]["count"] == 5
    assert {"images", "studies", "patients", "abnormal_images", "abnormal_studies"} <= set(
        s["test"]["wrist"]
    )
    assert (out / "skipped_images.csv").read_text().count("\n") == 6


def test_multirun_one_run_per_body_part_with_study_metrics(tree, tmp_path):
    sweep = tmp_path / "sweep"
    r = run_py(
        [
            "-m",
            *SMALL,
            "body_part=elbow,wrist",
            "debug=smoke",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = sorted(sweep.glob("*/metrics.json"))
    assert len(metrics) == 2
    parts = set()
    for m in metrics:
        d = json.loads(m.read_text())
        assert d["status"] == "ok", d
        parts.add(d["body_part"])
        for k in (
            "test/study_acc",
            "test/study_kappa",
            "test/majority_acc",
            "test/study_majority_acc",
            "test/auroc",
        ):
            assert k in d
        assert (m.parent / "roc.png").is_file() and (m.parent / "confusion_matrix.png").is_file()
    assert parts == {"elbow", "wrist"}


def test_xray_gan_at_64px_synthesizes_the_rarer_class_for_mixed_training(tree, tmp_path):
    """The GAN path on X-rays: conditioned on normal/abnormal within a body part, 64 px; the
    synthetic abnormal images join the real ones (dataset.source=mixed)."""
    data = f"paths.data_dir={tmp_path / 'data'}"
    base = SMALL + [data, f"paths.cache_dir={tmp_path / 'cache'}", "body_part=elbow", "debug=smoke"]
    gan = tmp_path / "gan"
    cfg = compose(
        base
        + [
            "task=gan",
            "gan.image_size=64",
            "gan.generator.width=8",
            "gan.discriminator.width=8",
            "gan.batch_size=8",
        ],
        gan,
    )
    run_task(cfg)
    from PIL import Image

    assert Image.open(gan / "samples_final.png").size[1] > 2 * 64  # two rows: normal, abnormal
    syn = tmp_path / "syn"
    run_task(
        compose(
            base
            + [
                "task=synthesize",
                f"synthesize.checkpoint={gan}",
                "synthesize.classes=[1]",
                "synthesize.n_per_class=12",
            ],
            syn,
        )
    )
    manifest = json.loads((syn / "manifest.json").read_text())
    assert manifest["counts_per_class"] == [0, 12] and manifest["image_size"] == 64
    out = tmp_path / "mixed"
    m = run_task(compose(base + ["dataset.source=mixed", f"dataset.synthetic_path={syn}"], out))
    assert m["status"] == "ok" and m["n_train_synthetic"] == 12
    assert "test/study_kappa" in m


def test_evaluate_a_finished_run_on_another_body_part(tree, tmp_path):
    """task=evaluate: an elbow model re-tested on every part, from its own saved config."""
    base = SMALL + [f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    run_dir = tmp_path / "elbow"
    r = run_py(base + ["body_part=elbow", "debug=smoke", f"hydra.run.dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-2000:]
    ev = tmp_path / "eval"
    r = run_py(
        [
            "task=evaluate",
            f"run={run_dir}",
            "body_part=all",
            "logger=none",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={ev}",
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((ev / "metrics.json").read_text())
    assert m["status"] == "ok" and m["task"] == "evaluate"
    assert m["evaluated_checkpoint"].startswith(str(run_dir))
    assert m["n_test"] == tree["counts"][("valid", "elbow")] + tree["counts"][("valid", "wrist")]
    assert "test/wrist/study_kappa" in m and "test/elbow/study_kappa" in m


def test_a_study_label_other_than_0_or_1_is_a_counted_problem_not_a_class(tree, tmp_path):
    """A labeled_studies.csv row with label 2 (or -1, the unlabelled marker) loaded as a third
    class of a two-class task (training then failed with an IndexError traceback); now that
    study's images are problems with their reason, like any row that cannot be used."""
    f = tree["root"] / "MURA-v1.1" / "train_labeled_studies.csv"
    rows = list(csv.reader(open(f)))
    rows[0][1], rows[1][1] = "2", "-1"
    csv.writer(open(f, "w", newline="")).writerows(rows)
    dm = dm_for(tmp_path, ["dataset.max_bad_fraction=0.9"])
    assert sorted(set(dm.splits.train.y.tolist()) | set(dm.splits.val.y.tolist())) == [0, 1]
    reasons = {p["reason"] for p in dm.problems}
    assert {"study label '2' is not 0 or 1", "study label '-1' is not 0 or 1"} <= reasons


def test_a_symlinked_copy_inside_the_root_is_read(tmp_path):
    """A dataset folder linked in (ln -s /big/disk/MURA-v1.1 data/mura/MURA-v1.1) made every
    image "outside the dataset root": the containment check resolved the link. It now reads the
    path's text: no absolute paths, no ..-escapes."""
    from datamodules.files import inside

    real = build_tree(tmp_path / "elsewhere" / "mura")
    (tmp_path / "data" / "mura").mkdir(parents=True)
    (tmp_path / "data" / "mura" / "MURA-v1.1").symlink_to(real["root"] / "MURA-v1.1")
    dm = dm_for(tmp_path)
    assert not dm.problems and len(dm.splits.test) == sum(
        n for (split, _), n in real["counts"].items() if split == "valid"
    )
    root = tmp_path / "data" / "mura"
    assert inside(root, "MURA-v1.1/train/x.png") and inside(root, "./a/../b.png")
    assert not inside(root, "../x.png") and not inside(root, "a/../../x.png")
    assert not inside(root, "/etc/passwd") and not inside(root, "..")
