"""Trustworthy comparisons: no test label in any choice, majority baselines that are classifiers,
provenance for every synthetic image, evaluate what was tested, one source of defaults."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tasks import run_task
from tests.conftest import DATA_DIR, FAST, GAN_FAST, ROOT, compose, run_py
from xfergan.errors import UserError

SMOKE = FAST + ["debug=smoke", "logger=none"]


# ----------------------------------------------------------------------------- selection
def test_optuna_sweep_optimizes_validation_numbers(tmp_path):
    """3 Optuna trials: each trial's value (read back from the study's storage) is that job's
    val/acc in metrics.json, and optimization_results.yaml holds one of those val numbers."""
    import optuna

    sweep, db = tmp_path / "sweep", tmp_path / "study.db"
    r = run_py(
        [
            "-m",
            "experiment=paper_table1",
            "sweep=optuna",
            "hydra.sweeper.n_trials=3",
            "debug=smoke",
            *FAST,
            "logger=none",
            f"hydra.sweeper.storage=sqlite:///{db}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="sweep_optuna", storage=f"sqlite:///{db}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 3
    ms = {
        t.number: json.loads((sweep / str(t.number) / "metrics.json").read_text()) for t in trials
    }
    for t in trials:
        assert t.value == pytest.approx(ms[t.number]["val/acc"], abs=1e-9), (t.number, ms)
    # that says "val, not test" only where the two differ: in at least one trial they must
    assert any(m["val/acc"] != pytest.approx(m["test/acc"], abs=1e-9) for m in ms.values()), ms
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    assert best == pytest.approx(max(t.value for t in trials))


def test_an_optuna_objective_no_job_writes_is_one_line_after_the_first_trial(tmp_path):
    """sweep.objective=val/accuracy (a name the task never writes): every trial returned
    nothing, Optuna marked each failed, and the sweep ended in a traceback at best_trial. Now the
    first trial stops the sweep in one line naming the val numbers there are."""
    sweep = tmp_path / "sweep"
    r = run_py(
        [
            "-m",
            "experiment=paper_table1",
            "sweep=optuna",
            "hydra.sweeper.n_trials=3",
            "sweep.objective=val/accuracy",
            "debug=smoke",
            *FAST,
            "logger=none",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert last.startswith("xfergan: error: sweep.objective=val/accuracy is not a number")
    assert "val/acc" in last and not (sweep / "1").exists()


@pytest.mark.parametrize("override", ["sweep.objective=test/acc", "checkpoint.monitor=test/auroc"])
def test_a_test_metric_can_never_choose(override, out):
    with pytest.raises(UserError, match="never chosen on"):
        run_task(compose(SMOKE + ["dataset.n_per_class=2", override], out))
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


def test_evaluate_uses_the_checkpoint_the_run_tested(tmp_path):
    """A run that tests `last` (paper_table1's setting) is re-evaluated with `last`, not `best`."""
    run_dir = tmp_path / "run"
    m = run_task(
        compose(
            FAST
            + [
                "logger=none",
                "dataset.n_per_class=5",
                "dataset.val_per_class=3",
                "trainer.max_epochs=3",
                "checkpoint.test=last",
            ],
            run_dir,
        )
    )
    assert m["tested_checkpoint"].endswith("last.ckpt") and m["tested_checkpoint_kind"] == "last"
    assert m["best_checkpoint"] != m["tested_checkpoint"]
    import shutil

    (run_dir / ".hydra").mkdir()
    cfg = compose(FAST + ["logger=none", "dataset.n_per_class=5", "dataset.val_per_class=3"])
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    ev = tmp_path / "eval"
    e = run_task(compose(FAST + ["task=evaluate", f"run={run_dir}", "logger=none"], ev))
    assert e["evaluated_checkpoint"] == m["tested_checkpoint"]
    assert e["evaluated_checkpoint_kind"] == "last"
    assert e["test/acc"] == pytest.approx(m["test/acc"], abs=1e-9)
    best = run_task(
        compose(
            FAST + ["task=evaluate", f"run={run_dir}", "evaluate.checkpoint=best", "logger=none"],
            tmp_path / "eval_best",
        )
    )
    assert best["evaluated_checkpoint"] == m["best_checkpoint"]
    shutil.rmtree(tmp_path / "eval_best")


# ----------------------------------------------------------------------------- baselines
def test_majority_baseline_is_a_classifier_fitted_on_train():
    from xfergan.evaluation.metrics import majority_baseline, max_class_share

    train = torch.tensor([0, 0, 0, 1, 1])  # majority: 0
    test = torch.tensor([1, 1, 1, 0])  # test's own majority: 1
    acc, c = majority_baseline(train, test, 2)
    assert (acc, c) == (0.25, 0)
    assert max_class_share(test, 2) == 0.75
    acc, c = majority_baseline(torch.tensor([2, 1, 2, 1]), torch.tensor([1, 2, 2]), 3)
    assert c == 1 and acc == pytest.approx(1 / 3)  # a tie goes to the lowest class index


def test_finger_and_shoulder_baselines_from_the_real_mura_csvs():
    """Real MURA-v1.1 CSVs: finger images are 3,138 normal / 1,968 abnormal in train, so 'always
    normal' scores 214/461 on valid; shoulder studies flip (train majority abnormal)."""
    from datamodules.mura import parse_csvs
    from xfergan.evaluation.outputs import group_labels
    from xfergan.schema import BodyPart  # noqa: F401 - the parts the CSVs are filtered by

    root = DATA_DIR / "mura"
    train, _ = parse_csvs(root, "train")
    valid, _ = parse_csvs(root, "valid")
    from xfergan.evaluation.metrics import majority_baseline, max_class_share

    def part(rows, p):
        rows = [r for r in rows if r.part == p]
        ids = {s: i for i, s in enumerate(sorted({r.group for r in rows}))}
        return (
            torch.tensor([r.label for r in rows]),
            torch.tensor([ids[r.group] for r in rows]),
        )

    ty, _ = part(train, "finger")
    vy, _ = part(valid, "finger")
    assert torch.bincount(ty).tolist() == [3138, 1968]
    acc, c = majority_baseline(ty, vy, 2)
    assert c == 0 and acc == pytest.approx(214 / 461)  # 0.464, not the test share 0.536
    assert max_class_share(vy, 2) == pytest.approx(247 / 461)
    ty, tg = part(train, "shoulder")
    vy, vg = part(valid, "shoulder")
    sty, _ = group_labels(ty, tg)
    svy, _ = group_labels(vy, vg)
    acc, c = majority_baseline(sty, svy, 2)
    assert c == 1 and acc == pytest.approx(95 / 194)  # train studies: 1,457 abnormal > 1,364
    assert max_class_share(svy, 2) == pytest.approx(99 / 194)


def test_study_aggregation_and_part_baselines_on_a_hand_made_toy():
    from xfergan.evaluation.outputs import grouped_metrics

    # test: study 0 (normal) images p=.2,.4 -> .3; study 1 (abnormal) .9 -> .9;
    # study 2 (abnormal) .6,.2 -> .4 (wrong); study 3 (normal) .7 -> .7 (wrong)
    p1 = torch.tensor([0.2, 0.4, 0.9, 0.6, 0.2, 0.7])
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    g = torch.tensor([0, 0, 1, 2, 2, 3])
    parts = ["elbow", "wrist", "wrist", "elbow", "a", "b", "c"]  # study id -> body part
    # training studies 4, 5, 6 (parts a, b, c: no elbow or wrist training images)
    train_y = torch.tensor([1, 1, 0, 1])
    train_g = torch.tensor([4, 4, 5, 6])
    out, (sp, sy) = grouped_metrics(p1, y, g, parts, train_y, train_g, ["n", "ab"])
    assert sp.tolist() == pytest.approx([0.3, 0.9, 0.4, 0.7])
    assert out["test/study_acc"] == pytest.approx(0.5)
    # kappa: predictions [0,1,0,1] vs truth [0,1,1,0]: po = .5, pe = .5 -> 0
    assert out["test/study_kappa"] == pytest.approx(0.0)
    # AUROC of [.3,.9,.4,.7] for truth [0,1,1,0]: pairs (pos,neg): (.9,.3)(.9,.7)(.4,.3)(.4,.7)
    assert out["test/study_auroc"] == pytest.approx(0.75)
    # training studies 4 (abnormal), 5 (normal), 6 (abnormal): majority abnormal -> 2/4 on test
    assert out["test/study_majority_acc"] == pytest.approx(0.5)
    assert out["test/study_majority_class"] == "ab"
    assert out["test/elbow/study_acc"] == pytest.approx(0.5)  # .3 right, .7 wrong
    assert "test/elbow/majority_acc" not in out  # no elbow training images: no baseline
    assert out["test/elbow/max_class_share"] == pytest.approx(1.0)  # 3 normal elbow images


# ----------------------------------------------------------------------------- provenance
@pytest.fixture(scope="module")
def seed0_synthetic(tmp_path_factory):
    """A GAN trained on seed 0's 4-per-class subset, and a synthetic set made from it."""
    tmp = tmp_path_factory.mktemp("prov")
    gan = tmp / "gan"
    run_task(compose(SMOKE + GAN_FAST + ["task=gan", "dataset.n_per_class=4", "seed=0"], gan))
    syn = tmp / "syn"
    run_task(
        compose(
            SMOKE + ["task=synthesize", f"synthesize.checkpoint={gan}", "synthesize.n_per_class=5"],
            syn,
        )
    )
    return syn


def test_synthetic_set_records_the_real_images_its_gan_saw(seed0_synthetic):
    m = json.loads((seed0_synthetic / "manifest.json").read_text())
    rd = m["real_data"]
    assert rd["dataset"] == "mnist" and rd["n_per_class"] == 4 and rd["seed"] == 0
    assert rd["n_images"] == 40 and len(rd["train_ids_sha256"]) == 64
    from datamodules.base import uids_digest, uids_of
    from datamodules.mnist import load_mnist_arrays
    from datamodules.sampling import few_shot_split

    labels = load_mnist_arrays(str(DATA_DIR / "mnist"))["train"][1]
    train, _ = few_shot_split(labels, 4, 100, 0, 10)
    assert rd["train_ids_sha256"] == uids_digest(uids_of([f"mnist/train/{i}" for i in train]))


def test_foreign_synthetic_set_is_refused_in_one_line_or_flagged(seed0_synthetic, tmp_path):
    args = SMOKE + [
        "dataset.n_per_class=4",
        "dataset.source=mixed",
        f"dataset.synthetic_path={seed0_synthetic}",
    ]
    r = run_py(args + ["seed=1", f"hydra.run.dir={tmp_path / 'refused'}"])
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("xfergan: error: synthetic set")
    assert "n_per_class=4 val_per_class=100 seed=0" in last  # the GAN's subset
    assert "n_per_class=4 val_per_class=100 seed=1" in last  # this run's subset
    assert "Traceback" not in r.stderr
    m = run_task(
        compose(args + ["seed=1", "dataset.synthetic_provenance=ignore"], tmp_path / "ignored")
    )
    assert m["status"] == "ok" and m["synthetic_foreign"] is True
    assert "seed=0" in m["synthetic_foreign_reason"]
    own = run_task(compose(args + ["seed=0"], tmp_path / "own"))
    assert own["synthetic_foreign"] is False and own["n_train_synthetic"] == 50


def test_a_gan_that_saw_test_images_is_always_refused(seed0_synthetic, tmp_path):
    from datamodules.synthetic import check_provenance, load_synthetic
    from xfergan.training import build_datamodule

    dm = build_datamodule(compose(FAST + ["dataset.n_per_class=4", "seed=0"], tmp_path))
    dm.setup()
    s = load_synthetic(seed0_synthetic, 10)
    assert check_provenance(s, dm, dm.splits)["synthetic_foreign"] is False
    s.real_uids = torch.cat([s.real_uids, dm.splits.test.uid[:3]])
    dm.synthetic_provenance = "ignore"
    with pytest.raises(UserError, match="saw 3 images of this run's test split"):
        check_provenance(s, dm, dm.splits)
    s.real_uids = torch.cat([s.real_uids[:-3], dm.splits.val.uid[:2]])
    info = check_provenance(s, dm, dm.splits)
    assert info["synthetic_foreign"] and info["synthetic_leak_val"] == 2


def test_ratio_sweep_mixes_each_seed_with_its_own_gan(tmp_path):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from xfergan.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hcompose(
            config_name="config",
            overrides=["experiment=paper_table3", "sweep=synthetic_ratio"],
            return_hydra_config=True,
        )
    assert str(cfg.task) == "pipeline" and "seed" in cfg.hydra.sweeper.params
    assert "dataset.synthetic_path" not in str(cfg.hydra.sweeper.params)
    assert "mixed_0.5" in cfg.pipeline.arms and "real" in cfg.pipeline.arms


# ----------------------------------------------------------------------------- defaults
def _schema_default(cls, name):
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return getattr(f.default, "name", f.default)
            return dataclasses.MISSING
    return dataclasses.MISSING


@pytest.mark.parametrize(
    "target, schema",
    [
        ("lightning_modules.gan.ConditionalGAN", "GANConfig"),
        ("lightning_modules.classifier.ClassifierModule", "ClassifierConfig"),
        ("datamodules.base.ImageDataModule", "DatasetConfig"),
        ("datamodules.mnist.MNISTDataModule", "MnistConfig"),
        ("datamodules.files.FileImageDataModule", "FilesConfig"),
        ("datamodules.mura.MURADataModule", "MuraConfig"),
    ],
)
def test_constructors_take_their_defaults_from_the_schema(target, schema):
    """The schema dataclasses are the one source of defaults, and no constructor swallows
    unknown keys."""
    import dataclasses

    import hydra

    from xfergan import schema as S

    cls = hydra.utils.get_class(target)
    sch = getattr(S, schema)
    checked = 0
    for owner in cls.__mro__:  # the class and every base it forwards **kwargs to
        if "__init__" not in vars(owner) or not owner.__module__.startswith(
            ("datamodules", "lightning_modules")
        ):
            continue
        for name, p in inspect.signature(owner.__init__).parameters.items():
            if p.default is inspect.Parameter.empty or name in ("self",):
                continue
            want = _schema_default(sch, name)
            if want is dataclasses.MISSING:
                continue
            assert p.default == want, f"{owner}({name}={p.default!r}) but the schema says {want!r}"
            checked += 1
    assert checked >= 2
    if schema in ("GANConfig", "ClassifierConfig", "DatasetConfig"):  # subclasses forward to it
        assert not any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()
        ), target


def test_unknown_datamodule_keys_fail():
    from datamodules.mnist import MNISTDataModule

    with pytest.raises(TypeError):
        MNISTDataModule(name="mnist", root=str(DATA_DIR / "mnist"), n_per_clas=3)


def test_removed_keys_fail_at_compose(tmp_path):
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigKeyError

    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose(["extras.x=1"], tmp_path)


def test_truncation_keeps_noise_inside_the_bound():
    from lightning_modules.gan import truncated_normal

    g = torch.Generator().manual_seed(0)
    z = truncated_normal(2000, 16, 0.5, g)
    assert z.abs().max() <= 0.5 and z.std() < 0.35  # a normal truncated at 0.5 has sd 0.28
    assert truncated_normal(5, 4, None, torch.Generator().manual_seed(0)).abs().max() > 0


def _medmnist_npz(path: Path, rgb: bool = False, multilabel: bool = False, n_test: int = 60):
    z = np.load(DATA_DIR / "pneumoniamnist" / "pneumoniamnist.npz")
    out = {}
    for split, n in (("train", 120), ("val", 40), ("test", n_test)):
        x, y = z[f"{split}_images"][:n], z[f"{split}_labels"][:n]
        if rgb:  # three different real-image channels: a colour image with real structure
            x = np.stack([x, np.roll(x, 3, axis=1), 255 - x], axis=-1)
        if multilabel:
            y = np.concatenate([y, 1 - y, y], axis=1)
        out[f"{split}_images"], out[f"{split}_labels"] = x, y
    np.savez(path, **out)
    return path


def test_gan_on_three_channel_data_trains_three_channels(tmp_path):
    npz = _medmnist_npz(tmp_path / "rgb.npz", rgb=True)
    gan = tmp_path / "gan"
    args = (
        SMOKE
        + GAN_FAST
        + [
            "dataset=pneumoniamnist",
            f"dataset.npz_path={npz}",
            "dataset.image_size=28",
            "dataset.channels=3",
        ]
    )
    run_task(compose(args + ["task=gan"], gan))
    from tasks.synthesize import load_gan

    model = load_gan(gan / "checkpoints" / "last.ckpt")
    assert model.hparams.channels == 3
    assert model.sample(torch.tensor([0, 1])).shape == (2, 3, 28, 28)


def test_multilabel_medmnist_is_refused(tmp_path):
    npz = _medmnist_npz(tmp_path / "ml.npz", multilabel=True)
    with pytest.raises(UserError, match="multi-label"):
        run_task(compose(SMOKE + ["dataset=pneumoniamnist", f"dataset.npz_path={npz}"], tmp_path))


# ----------------------------------------------------------------------------- ranks, floors
def test_rank_zero_is_lightnings_decision(tmp_path):
    """SLURM_PROCID=1 (srun) is not rank zero: such a process writes no files."""
    import subprocess
    import sys

    code = "from xfergan.ranks import is_global_zero; print(is_global_zero())"
    for env, want in (({"SLURM_PROCID": "1"}, "False"), ({"RANK": "0"}, "True")):
        r = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**__import__("os").environ, **env},
            capture_output=True,
            text=True,
        )
        assert r.stdout.strip() == want, (env, r.stdout, r.stderr[-500:])


def test_dependency_floors_match_the_apis_used():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {d.split(">=")[0].strip(): d.split(">=")[1].split(",")[0] for d in deps if ">=" in d}
    from packaging.version import Version

    # trainer.test(weights_only=...): Lightning 2.6.0
    assert Version(floors["pytorch-lightning"]) >= Version("2.6.0")
    # wandb.init(reinit="finish_previous"): wandb 0.19.10
    assert Version(floors["wandb"]) >= Version("0.19.10")


# ----------------------------------------------------------------------------- small pieces
def test_diffaugment_off_is_identity_and_keeps_shapes():
    from lightning_modules.diffaugment import diff_augment, parse_policy

    x = torch.rand(6, 3, 28, 28)
    assert torch.equal(diff_augment(x, parse_policy("")), x)
    y = diff_augment(x, parse_policy("color,translation,cutout"))
    assert y.shape == x.shape and not torch.equal(y, x)
    torch.manual_seed(0)
    t = diff_augment(torch.ones(64, 1, 16, 16), ["cutout"])
    holes = (t == 0).float().mean(dim=(1, 2, 3))
    assert (holes > 0).all() and holes.max() == 0.25  # a hole in every image, at most 8 x 8
    with pytest.raises(UserError, match="unknown"):
        parse_policy("colour")


def test_ema_update_ramps_then_follows_the_decay():
    from lightning_modules.gan import ema_with_warmup

    upd = ema_with_warmup(0.999)
    e, p = [torch.zeros(3)], [torch.ones(3)]
    upd(e, p, torch.tensor(0))  # n=0: decay min(.999, 1/10) = .1 -> e = .9
    assert e[0].tolist() == pytest.approx([0.9] * 3)
    e = [torch.zeros(3)]
    upd(e, p, torch.tensor(100000))  # ramp over: decay .999 -> e = .001
    assert e[0].tolist() == pytest.approx([0.001] * 3)
    buf = [torch.tensor([1])]
    upd(buf, [torch.tensor([7])], torch.tensor(3))  # integer buffers follow the generator
    assert buf[0].item() == 7


def test_minibatch_std_appends_the_batch_spread():
    from lightning_modules.nets.gan_nets import MinibatchStd

    same = torch.ones(8, 2, 4, 4)
    out = MinibatchStd(group=4)(same)
    assert out.shape == (8, 3, 4, 4) and out[:, 2].max() == pytest.approx(1e-4)  # sqrt(eps)
    x = torch.zeros(4, 1, 2, 2)
    x[0] = 2.0  # group of 4 values 2,0,0,0 per pixel: population sd = sqrt(.75)
    out = MinibatchStd(group=4)(x)
    assert out[:, 1].flatten().tolist() == pytest.approx([math.sqrt(0.75)] * 16)
    out.sum().backward() if x.requires_grad else None
    xs = torch.ones(4, 1, 2, 2, requires_grad=True)
    MinibatchStd(group=4)(xs).sum().backward()  # no spread: a finite gradient (std's is NaN)
    assert torch.isfinite(xs.grad).all()


def test_device_slots_third_job_really_waits(tmp_path):
    """Two slots, three jobs holding a slot for 1.5 s: the third gets one only after a holder
    lets go."""
    import subprocess
    import sys
    import time

    code = (
        "import sys, time; from xfergan.devices import device_slot\n"
        f"with device_slot(2, '{tmp_path}', poll_s=0.05) as s:\n"
        "    print(s, time.time(), flush=True); time.sleep(1.5)\n"
    )
    t0 = time.time()
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    got = sorted(
        (float(t), int(s)) for s, t in (p.communicate(timeout=60)[0].split() for p in procs)
    )
    assert {s for _, s in got[:2]} == {0, 1}
    assert got[2][0] - got[0][0] >= 1.4, got  # the third started after a holder's 1.5 s
    assert got[2][0] - t0 < 30


def test_a_wandb_start_that_fails_warns_with_the_reason(out, caplog):
    (out / "wandb").write_text("a file where W&B wants its folder")
    with caplog.at_level("WARNING"):
        m = run_task(compose(FAST + ["debug=smoke", "dataset.n_per_class=2"], out))
    assert m["status"] == "ok"
    said = [r.getMessage() for r in caplog.records if "W&B could not start" in r.getMessage()]
    assert said and "NotADirectoryError" in said[0], caplog.text[-2000:]


def test_images_made_augmented_are_not_augmented_again(tmp_path):
    """distill_real's copies are augmented when the teacher labels them: training leaves them
    as they are (the label is for that view) and augments everything else."""
    from xfergan.training import build_datamodule

    dm = build_datamodule(
        compose(
            FAST
            + [
                "dataset.n_per_class=2",
                "dataset.augment.enabled=true",
                "dataset.augment.rotation=30",
            ],
            tmp_path,
        )
    )
    dm.setup()
    x = dm.splits.train.x[:4]
    fixed = torch.tensor([True, False, True, False])
    torch.manual_seed(0)
    out = dm.preprocess(x, train=True, fixed=fixed)
    plain = dm.preprocess(x, train=False)
    assert torch.equal(out[fixed], plain[fixed]) and not torch.equal(out[~fixed], plain[~fixed])


def test_evaluate_refuses_a_test_set_the_model_was_not_trained_on_in_one_line(tmp_path):
    """task=evaluate checked only the class count: dataset.normalize=imagenet on a model trained
    on [-1, 1] inputs ran and wrote a test/acc; dataset.channels=3 ended in a tensor traceback;
    dataset=pneumoniamnist (a config group) in a ValueError traceback. Each is now one line."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    args = FAST + ["logger=none", "dataset.n_per_class=2", "dataset.val_per_class=1"]
    run_task(compose(args + ["trainer.max_steps=2"], run_dir))
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(compose(args), run_dir / ".hydra" / "config.yaml")
    for override, says in (
        ("dataset.normalize=imagenet", "trained on dataset.normalize=half"),
        ("dataset.channels=3", "trained on dataset.channels=1"),
        ("dataset=pneumoniamnist", "dataset=pneumoniamnist picks a config group"),
    ):
        r = run_py(
            [
                "task=evaluate",
                f"run={run_dir}",
                "logger=none",
                override,
                f"hydra.run.dir={tmp_path / override.replace('=', '_')}",
            ]
        )
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and says in err[-1], (override, r.stderr[-1500:])
        assert "Traceback" not in r.stderr
