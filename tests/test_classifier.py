import json
import os
from pathlib import Path

import pytest
import torch

from lightning_modules.nets.backbones import build_backbone, load_init_checkpoint
from tasks import run_task
from tests.conftest import FAST, compose
from xfergan.errors import UserError

MOBILENET_FILE = (
    Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
)


def test_imagenet_weights_load_from_torch_home_and_differ_from_scratch():
    pre = build_backbone("mobilenet_v2", 10, init="imagenet", weights="IMAGENET1K_V1")
    scratch = build_backbone("mobilenet_v2", 10, init="scratch")
    ref = torch.load(MOBILENET_FILE, map_location="cpu", weights_only=True)
    w = pre.body[0][0][0].weight  # first conv of features
    assert torch.equal(w, ref["features.0.0.weight"])
    assert not torch.equal(scratch.body[0][0][0].weight, ref["features.0.0.weight"])
    assert torch.equal(pre.body[0][18][0].weight, ref["features.18.0.weight"])


def test_backbones_build_and_run_offline():
    x = torch.randn(2, 3, 32, 32)
    for name in ("resnet18", "resnet50", "densenet169", "small_cnn"):
        net = build_backbone(name, 2, init="scratch")
        assert net(x).shape == (2, 2)


def test_short_real_mnist_training_beats_chance_and_writes_metrics(out):
    full_test = [a for a in FAST if not a.startswith("trainer.limit_test_batches=")]
    cfg = compose(
        full_test
        + [
            "dataset.n_per_class=50",
            "trainer.max_epochs=8",
            "dataset.batch_size=32",
            "model.width=16",
            "logger=csv",
            "dataset.val_per_class=10",
            "seed=1",
        ],
        out,
    )
    metrics = run_task(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    assert saved["test/acc"] > 0.75, "500 real images, 8 epochs: far above 0.10 chance"
    assert saved["task"] == "classify" and saved["seed"] == 1 and saved["status"] == "ok"
    assert saved["n_train"] == 500 and saved["n_val"] == 100 and saved["n_test"] == 10000
    assert len([k for k in saved if k.startswith("test/acc_class_")]) == 10
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "csv" / "metrics.csv").is_file()


def test_init_from_checkpoint_and_mismatch_is_clear(out, tmp_path):
    net = build_backbone("small_cnn", 10, in_channels=1, init="scratch", width=8)
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "a.ckpt"
    )
    other = build_backbone("small_cnn", 2, in_channels=1, init="scratch", width=8)
    rep = load_init_checkpoint(other, str(tmp_path / "a.ckpt"))
    assert rep["skipped"] == 2  # the 10-class head does not fit a 2-class head
    assert torch.equal(other.body.blocks[0][0].weight, net.body.blocks[0][0].weight)
    resnet = build_backbone("resnet18", 10, init="scratch")
    with pytest.raises(UserError, match="does not fit this model"):
        load_init_checkpoint(resnet, str(tmp_path / "a.ckpt"))


def test_wandb_offline_run_files_written(out):
    cfg = compose(
        FAST + ["debug=smoke", "logger=default", "dataset.n_per_class=5", "name=wbtest"], out
    )
    run_task(cfg)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    assert (out / "metrics.json").is_file()


def test_last_ckpt_holds_the_final_weights_whatever_val_did(tmp_path):
    """checkpoints/last.ckpt (what checkpoint.test=last tests and resume=true continues) is the
    end of training. Lightning's save_last wrote it only when a top-k checkpoint was saved at
    that step: with val every 2 epochs of 3, the model of step 10 of 15 was tested as "last"."""
    from xfergan.io import safe_torch_load

    args = FAST + [
        "dataset=mnist",
        "dataset.n_per_class=4",
        "dataset.val_per_class=3",
        "dataset.batch_size=8",  # 40 images: 5 steps an epoch
        "trainer.max_epochs=3",
        "trainer.max_steps=-1",
        "trainer.check_val_every_n_epoch=2",
        "checkpoint.test=last",
        "logger=none",
    ]
    m = run_task(compose(args, tmp_path / "r"))
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    assert m["last_checkpoint"] == str(last) and m["tested_checkpoint"] == str(last)
    blob = safe_torch_load(last, "last")
    assert blob["global_step"] == m["global_step"] == 15
    best = safe_torch_load(m["best_checkpoint"], "best")
    assert best["global_step"] == 10  # the best by val: the one epoch val ran after


def test_a_resumed_stage_keeps_the_val_curve_of_its_first_attempt(tmp_path, monkeypatch):
    """Stopped after 2 of 4 epochs and resumed: the stage's val curve (what report.md's
    "where each method is heading" plots) holds all 4 val points, as an uninterrupted run's
    does. Lightning's CSVLogger empties csv/metrics.csv when the resumed fit starts, which
    left only epochs 3 and 4. A fresh start in the same dir drops the earlier attempt's log."""
    import tasks.classify
    from tests.test_gan import _StopAfter
    from xfergan.evaluation.curves import _points

    args = FAST + [
        "dataset=mnist",
        "dataset.n_per_class=4",
        "dataset.val_per_class=3",
        "dataset.batch_size=8",  # 40 images: 5 steps an epoch
        "trainer.max_epochs=4",
        "trainer.max_steps=-1",
        "trainer.check_val_every_n_epoch=1",
        "logger=csv",
    ]
    whole = tmp_path / "whole"
    run_task(compose(args, whole))
    part = tmp_path / "part"
    build = tasks.classify.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(tasks.classify, "build_callbacks", lambda *a: [*build(*a), _StopAfter(2)])
        assert run_task(compose(args, part))["global_step"] == 10
    assert run_task(compose(args + ["resume=true"], part))["global_step"] == 20
    want = _points(whole)
    assert [s for s, _ in want][:4] == [4, 9, 14, 19]  # each epoch's val (then the final one)
    # every point of the uninterrupted run, the same values (plus the stopped fit's own end-of-
    # fit val at step 10: a true point of the same training)
    got = dict(_points(part))
    assert set(got) == {s for s, _ in want} | {10}
    assert [got[s] for s, _ in want] == pytest.approx([v for _, v in want], abs=1e-6)
    # a fresh start (resume=false) in the same dir: only its own points
    run_task(compose(args + ["trainer.max_epochs=1"], part))
    assert max(s for s, _ in _points(part)) <= 5 and not list((part / "csv").glob("metrics.*.csv"))


def test_a_frozen_backbone_keeps_its_batchnorm_statistics(tmp_path):
    """model.finetune=head froze the backbone's weights but not its BatchNorm statistics:
    Lightning's train mode let every few-shot batch overwrite them (ImageNet's running_var
    moved by up to 1.25 in 5 steps), so the head trained on batch statistics and was tested on
    others. Frozen BatchNorm layers now stay in eval mode; trainable ones still learn theirs."""
    import torch

    from tasks.classify import build_classifier
    from xfergan.training import build_datamodule

    cfg = compose(
        FAST
        + [
            "model=mobilenet_v2",
            "model.init=scratch",
            "model.finetune=last_n",
            "model.finetune_last_n=1",
            "dataset.image_size=32",
            "dataset.channels=3",
            "dataset.normalize=imagenet",
            "dataset.n_per_class=2",
            "logger=none",
        ],
        tmp_path,
    )
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_classifier(cfg, dm)
    bns = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = [m for m in bns if not any(p.requires_grad for p in m.parameters())]
    trained = [m for m in bns if m not in frozen]
    assert frozen and trained
    before = [m.running_var.clone() for m in bns]
    model.train()
    model.net(torch.randn(8, 3, 32, 32) * 3 + 1)
    moved = [not torch.equal(b, m.running_var) for b, m in zip(before, bns)]
    assert not any(mv for mv, m in zip(moved, bns) if m in frozen)
    assert all(mv for mv, m in zip(moved, bns) if m in trained)
