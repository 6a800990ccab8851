"""The GPU path on a CPU-only machine: small decoded sets move to the Trainer's device in the
tasks' own code path, jobs queue for a single GPU, and the benchmark runs the tasks' path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from tasks import run_task
from tasks.gan import gan_datamodule
from tests.conftest import FAST, GAN_FAST, ROOT, compose
from xfergan.errors import UserError
from xfergan.training import build_datamodule


class _Strategy:
    root_device = torch.device("meta")  # a device that is not the CPU, on any machine


class _Trainer:
    """The seam: what a datamodule reads from the Trainer that attaches it."""

    strategy = _Strategy()
    global_rank, world_size, training = 0, 1, False


def test_data_moves_to_the_device_whichever_order_the_task_touches_it(tmp_path):
    cfg = compose(FAST + GAN_FAST + ["dataset.n_per_class=4"], tmp_path)
    for dm in (build_datamodule(cfg), gan_datamodule(cfg)):
        dm.setup()  # as tasks/classify.py and tasks/gan.py do, before any Trainer exists
        _ = dm.num_classes
        assert dm.splits.train.x.device.type == "cpu"
        dm.trainer = _Trainer()
        dm.setup("fit")  # what the Trainer calls
        for split in (dm.splits.train, dm.splits.val, dm.splits.test):
            assert split.x.device.type == "meta" and split.y.device.type == "meta"
        batch = dm.train_dataloader().dataset.__getitems__([0, 1])
        assert batch.x.device.type == "meta"  # batches are sliced on the device


def test_a_single_gpu_is_queued_for(tmp_path):
    """device_slot(1): with one GPU, a second job waits until the first lets go."""
    code = (
        "import time; from xfergan.devices import device_slot\n"
        f"with device_slot(1, '{tmp_path}', poll_s=0.05) as s:\n"
        "    print(s, time.time(), flush=True); time.sleep(1.0)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    got = sorted(
        (float(t), int(s)) for s, t in (p.communicate(timeout=60)[0].split() for p in procs)
    )
    assert [s for _, s in got] == [0, 0]
    assert got[1][0] - got[0][0] >= 0.95, got


def test_bench_runs_every_case_on_the_task_path_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    t0 = time.time()
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--backbones",
            "mobilenet_v2",
            "--size",
            "32",
            "--batch",
            "8",
            "--steps",
            "2",
            "--mura-images",
            "24",
            "--out",
            str(out),
            "--repeats",
            "1",  # the rounds' median: test_the_bench_reports_the_lower_median_of_its_rounds
            "--cases",
            "classifier,gan,mura,gan_speed,jobs_per_gpu",
            "--jobs-per-gpu",
            "1,2",
            "--gan-variants",
            "eager_bs16,eager_bs32,nosuch_bs8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    cases = [c["case"] for c in res["results"]]
    assert any(c.startswith("classifier step mobilenet_v2") for c in cases)
    assert any(c.startswith("GAN step") for c in cases)
    assert sum(c.startswith("MURA input") for c in cases) == 2
    data = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data"))  # as bench.py
    n_real = len(list((data / "mura").glob("**/*.png")))
    content = f"content: {n_real} real MURA images" if n_real else "content: generated"
    assert all(content in c for c in cases if c.startswith("MURA"))
    assert any("CSV logger + bar vs a plain loop" in c for c in cases)  # as users run it
    jobs = [c for c in res["results"] if c["case"].startswith("jobs_per_gpu")]
    assert [c["case"].split()[1] for c in jobs] == ["K=1", "K=2"] and jobs[0]["ratio"] == 1.0
    speed = [c for c in res["results"] if c["case"].startswith("GAN speed")]
    assert [c["case"].split()[2] for c in speed] == ["eager_bs16", "eager_bs32", "nosuch_bs8"]
    assert speed[0]["ratio"] == 1.0 and speed[1]["ratio"] > 0  # against the first option
    assert speed[2]["ours"] == 0 and "KeyError" in speed[2]["error"]  # recorded, not a crash
    assert all(c["ratio"] > 0 and c["plain"] > 0 for c in res["results"] if c not in speed[2:])
    assert all(len(c["rounds"]) == 1 for c in res["results"])
    assert res["commit"] and res["machine"]["cpu_count"] >= 1
    assert "ratio" in r.stdout and time.time() - t0 < 300


def test_the_bench_reports_the_lower_median_of_its_rounds():
    """A noisy machine moves single timings: the bench reports the lower median of its rounds
    (never a ratio rounded up) and keeps every round."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench import median_of

    def rnd(r):
        return {"case": "c", "plain": 1.0, "ours": r, "ratio": r}

    two = median_of([rnd(0.9), rnd(0.8)])
    assert two["ratio"] == 0.8 and [x["ratio"] for x in two["rounds"]] == [0.9, 0.8]
    assert median_of([rnd(x) for x in (0.7, 0.95, 0.9, 0.8)])["ratio"] == 0.8
    assert median_of([rnd(x) for x in (0.7, 0.95, 0.9)])["ratio"] == 0.9


def test_step_budget_under_ddp_matches_what_each_rank_runs(tmp_path):
    """trainer.max_steps under DDP: whole epochs whose length is what EpochSampler gives each
    rank (10 images on 4 ranks: the budget is not silently cut)."""
    import math

    from datamodules.loaders import EpochSampler
    from xfergan.runtime import world_size

    cfg = compose(
        FAST
        + [
            "dataset.n_per_class=1",
            "dataset.batch_size=4",
            "trainer=ddp",
            "trainer.devices=[0,1,2,3]",
        ],
        tmp_path,
    )
    assert world_size(cfg) == 4
    dm = build_datamodule(cfg)
    dm.setup()
    epochs = dm.plan_epochs(600, 4)
    per_rank = [len(list(EpochSampler(10, 0, None, r, 4, dm.epoch_samples(4)))) for r in range(4)]
    assert len(set(per_rank)) == 1  # every rank runs the same number of steps
    bpe = math.ceil(per_rank[0] / dm.batch_size)
    assert bpe == dm.batches_per_epoch(4) and epochs * bpe == 600


class _CountReads:
    """Host reads (device syncs on a GPU) inside each training batch, after `warmup` batches."""

    def __init__(self, warmup: int = 2):
        import collections

        import pytorch_lightning as pl

        from xfergan.syncs import HostReads

        outer = self

        class Probe(pl.Callback):
            def on_train_batch_start(self, *args):
                outer.mode = HostReads() if outer.batches >= warmup else None
                if outer.mode:
                    outer.mode.__enter__()

            def on_train_batch_end(self, *args):
                outer.batches += 1
                if outer.mode:
                    outer.mode.__exit__(None, None, None)
                    outer.where += outer.mode.where
                    outer.counted += 1

        self.callback, self.where = Probe(), collections.Counter()
        self.batches = self.counted = 0
        self.mode = None


def _fit(cfg, dm, model, probe, steps, tmp_path, callbacks=()):
    from benchmarks.bench import _fit_overrides  # training steps only, as the benchmark times
    from xfergan.training import build_trainer

    trainer = build_trainer(
        cfg, tmp_path, [], [*callbacks, probe.callback], **_fit_overrides(steps)
    )
    trainer.fit(model, datamodule=dm)


def test_the_progress_bar_reads_the_device_every_20_steps_not_every_step(tmp_path, monkeypatch):
    """Each redraw of Lightning's progress bar turns the logged loss into a number (a device
    sync); the default callbacks redraw every 20 steps (Lightning's default: every step)."""
    from tasks.classify import build_classifier
    from xfergan.training import build_callbacks

    cfg = compose(
        FAST + ["dataset.n_per_class=80", "logger=none", "trainer.enable_progress_bar=true"],
        tmp_path,
    )
    dm = build_datamodule(cfg)
    dm.setup()
    probe = _CountReads()
    monkeypatch.setenv("XFERGAN_PROGRESS", "bar")  # the bar a terminal gets (pytest has none)
    bar = build_callbacks(cfg, "classify", [])
    _fit(cfg, dm, build_classifier(cfg, dm), probe, 24, tmp_path, bar)
    assert probe.counted == 22 and 1 <= sum(probe.where.values()) <= 3, probe.where
    off = compose(FAST + ["dataset.n_per_class=80", "logger=none"], tmp_path)
    assert not build_callbacks(off, "classify", [])  # no bar when the Trainer shows none


def test_training_steps_never_wait_for_the_device(tmp_path):
    """A host read in a step (`.item()`, `float(t)`, `if t:`) stalls the CPU until the GPU has
    finished, so the next step cannot be queued. The classifier's step makes none (torchmetrics'
    NaN check on the loss did: 4 a step); the GAN's reads back its divergence counters once
    every 25 steps (it read the losses, the EMA count and the step count: 8 a step)."""
    from tasks.classify import build_classifier
    from tasks.gan import build_gan

    cfg = compose(FAST + ["dataset.n_per_class=40", "logger=none"], tmp_path)
    dm = build_datamodule(cfg)
    dm.setup()
    probe = _CountReads()
    _fit(cfg, dm, build_classifier(cfg, dm), probe, 12, tmp_path)
    assert probe.counted == 10 and sum(probe.where.values()) == 0, probe.where

    cfg = compose(FAST + GAN_FAST + ["task=gan", "dataset.n_per_class=60"], tmp_path)
    dm = gan_datamodule(cfg)
    dm.setup()  # 600 images at batch 20: 30 batches an epoch
    probe = _CountReads()
    _fit(cfg, dm, build_gan(cfg, dm), probe, 2 * 29, tmp_path)  # 2 optimizer steps a batch
    reads = sum(probe.where.values())
    assert probe.counted == 27 and 1 <= reads <= 2, probe.where  # step 25 only


def test_ema_without_host_reads_equals_averaged_model():
    """ConditionalGAN.update_ema is AveragedModel.update_parameters (with the warm-up decay)
    step for step, the count kept on the host."""
    import copy

    from tests.conftest import small_gan

    torch.manual_seed(0)
    a = small_gan(3, 28, ema_decay=0.9)
    b = copy.deepcopy(a)
    for _ in range(4):
        with torch.no_grad():
            for p in a.G.parameters():
                p.add_(torch.randn_like(p))
        b.G.load_state_dict(a.G.state_dict())
        a.update_ema()
        b.ema.update_parameters(b.G)
        for (k, x), y in zip(a.ema.state_dict().items(), b.ema.state_dict().values()):
            assert torch.equal(x, y), k
    assert a._ema_n == int(a.ema.n_averaged) == 4


def test_divergence_counted_between_reads_is_not_lost():
    """Streaks are counted on the device every step and read back later: a collapse that ended
    before the read still stops the run."""
    import pytest

    from lightning_modules.gan import GANDivergedError
    from tests.conftest import small_gan

    m = small_gan(2, 28, divergence_patience=5)
    for _ in range(6):
        m._check_divergence(torch.tensor(0.0), torch.tensor(3.0), read=False)
    m._check_divergence(torch.tensor(0.5), torch.tensor(1.0), read=False)  # recovered
    with pytest.raises(GANDivergedError, match="stayed at ~0 for 6 steps"):
        m._check_divergence(torch.tensor(0.5), torch.tensor(1.0), read=True)
    m = small_gan(2, 28)
    m._check_divergence(torch.tensor(float("inf")), torch.tensor(1.0), read=False)
    with pytest.raises(GANDivergedError, match="NaN/Inf"):
        m._check_divergence(torch.tensor(0.5), torch.tensor(1.0), read=True)


def test_the_mean_loss_is_weighted_by_batch_size():
    from xfergan.evaluation.metrics import WeightedMean

    m = WeightedMean()
    m.update(torch.tensor(1.0), 3)
    m.update(torch.tensor(3.0), 1)
    assert float(m.compute()) == 1.5


def test_confusion_counts_give_torchmetrics_accuracies():
    """Accuracy, balanced accuracy and per-class accuracy from ConfusionCounts equal
    torchmetrics' MulticlassAccuracy (micro, macro, None), a class absent from the labels and a
    class never seen at all included."""
    from torchmetrics import classification as C

    from xfergan.evaluation.metrics import ConfusionCounts

    g = torch.Generator().manual_seed(0)
    k = 5
    ours, ref = (
        ConfusionCounts(k),
        [C.MulticlassAccuracy(k, average=a) for a in ("micro", "macro", None)],
    )
    for _ in range(3):
        probs = torch.rand(40, k, generator=g)
        probs[:, 4] = 0  # class 4: never predicted ...
        target = torch.randint(0, 3, (40,), generator=g)  # ... and never a label; 3: predicted only
        ours.update(probs, target)
        for r in ref:
            r.update(probs, target)
    got = ours.compute()
    assert torch.allclose(got["acc"], ref[0].compute())
    assert torch.allclose(got["balanced_acc"], ref[1].compute())
    assert torch.allclose(got["per_class"], ref[2].compute())


def test_k_jobs_share_one_gpu_and_the_next_one_waits(tmp_path, monkeypatch):
    """XFERGAN_JOBS_PER_GPU=2 on a (fake) one-GPU pool: two jobs hold device 0 at once, a third
    waits for a seat; with two GPUs, jobs spread over the devices before they share one."""
    import threading
    import time
    import types

    import xfergan.devices
    from xfergan.devices import device_slot

    waited = threading.Event()  # set when a job found every seat taken and sleeps to retry

    def sleep(s):
        waited.set()
        time.sleep(s)

    monkeypatch.setattr(xfergan.devices, "time", types.SimpleNamespace(sleep=sleep))
    monkeypatch.setenv("XFERGAN_JOBS_PER_GPU", "2")
    with device_slot(1, tmp_path / "one", poll_s=0.02) as a, device_slot(1, tmp_path / "one") as b:
        assert (a, b) == (0, 0) and not waited.is_set()
        got = []
        t = threading.Thread(
            target=lambda: got.append(_hold(device_slot(1, tmp_path / "one", poll_s=0.02)))
        )
        t.start()
        assert waited.wait(10) and not got  # the third job waits for a seat
    t.join(10)
    assert got == [0]
    with (
        device_slot(2, tmp_path / "two") as a,
        device_slot(2, tmp_path / "two") as b,
        device_slot(2, tmp_path / "two") as c,
    ):
        assert [a, b, c] == [0, 1, 0]
    monkeypatch.setenv("XFERGAN_JOBS_PER_GPU", "0")
    with pytest.raises(UserError, match="XFERGAN_JOBS_PER_GPU"):
        with device_slot(1, tmp_path / "bad"):
            pass


def _hold(slot_cm):
    with slot_cm as s:
        return s


def test_every_stage_computes_on_its_jobs_device(tmp_path, monkeypatch):
    """A sweep job pinned to GPU i (trainer.devices=[i]) samples, labels with teachers and
    predicts on cuda:i, not cuda:0; the CPU stays the CPU. Every stage asks job_device."""
    import torch

    import tasks.predict
    import tasks.pseudolabel
    import tasks.synthesize
    from xfergan.devices import job_device

    cfg = compose(FAST, tmp_path / "c")
    with open_dict(cfg):
        cfg.trainer.accelerator, cfg.trainer.devices = "gpu", [1]
    assert job_device(cfg) == torch.device("cuda", 1)
    with open_dict(cfg):
        cfg.trainer.accelerator = "cpu"
    assert job_device(cfg) == torch.device("cpu")
    asked = []

    def record(c):
        asked.append(str(c.task))
        return torch.device("cpu")

    for mod in (tasks.synthesize, tasks.pseudolabel, tasks.predict):
        monkeypatch.setattr(mod, "job_device", record)
    args = FAST + GAN_FAST + ["logger=none", "debug=smoke", "dataset.n_per_class=4"]
    args += ["task=pipeline", "pipeline.arms=[synthetic,distill_gan]"]
    run_task(compose(args, tmp_path / "p"))
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    run = tmp_path / "p" / "classify_synthetic"
    run_task(
        compose(["task=predict", f"run={run}", f"input={tmp_path / 'digit.png'}"], tmp_path / "q")
    )
    assert {"synthesize", "pseudolabel", "predict"} <= set(asked), asked


def test_gan_quality_is_measured_on_the_jobs_device_not_moved_to_the_cpu(tmp_path, monkeypatch):
    """Lightning hands the GAN back on the CPU after fit: evaluate_quality moves it to the job's
    device (job_device: the GPU training used) and samples with a generator there, never
    `.cpu()`. On this CPU machine the job's device is the CPU; what is checked is that the
    device comes from job_device and everything meets there."""
    from types import SimpleNamespace

    import lightning_modules.gan_metrics as gm
    import tasks.gan
    from datamodules.split import Split, Splits
    from lightning_modules.classifier import ClassifierModule
    from tests.test_gan import _Pooled

    where, asked = torch.device("cpu"), []
    monkeypatch.setattr(tasks.gan, "job_device", lambda c: asked.append(c) or where, raising=False)
    clf = _Pooled()
    clf.hparams = SimpleNamespace(input_spec={"image_size": 8, "channels": 1, "normalize": "none"})
    monkeypatch.setattr(ClassifierModule, "load_safely", staticmethod(lambda path: clf))
    seen = {}

    def gan_quality(features, real, real_y, fake, fake_y, train, **kw):
        seen["devices"] = {t.device for t in (real, fake, train)}
        return {}

    monkeypatch.setattr(gm, "gan_quality", gan_quality)

    class Gan(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moved_to, self.generators = [], []

        def cpu(self):
            raise AssertionError("moved to the CPU, not to the job's device")

        def to(self, device):
            self.moved_to.append(torch.device(device))
            return self

        def sample(self, labels, generator=None):
            self.generators.append(generator.device)
            return torch.rand(len(labels), 1, 8, 8, generator=generator)

    def split(n):
        return Split(torch.zeros(n, 1, 8, 8, dtype=torch.uint8), torch.arange(n) % 2)

    dm = SimpleNamespace(num_classes=2, splits=Splits(split(4), split(4), split(4), ["a", "b"]))
    cfg = compose(FAST + ["gan.feature_ckpt=clf.ckpt", "gan.image_size=8"], tmp_path)
    gan = Gan()
    tasks.gan.evaluate_quality(cfg, gan, dm)
    assert asked and gan.moved_to == [where] and set(gan.generators) == {where}
    assert seen["devices"] == {where}


def test_a_set_left_in_host_memory_reaches_a_gpu_from_pinned_memory(tmp_path):
    """Over 2 GiB a dataset stays in host memory: with a CUDA Trainer its loaders pin each batch
    (Lightning copies it with non_blocking=True); on the CPU nothing is pinned."""

    class _Cuda(_Trainer):
        strategy = type("S", (), {"root_device": torch.device("cuda", 0)})()

    dm = build_datamodule(compose(FAST + ["dataset.n_per_class=4"], tmp_path))
    dm.setup()
    dm.trainer = _Cuda()
    dm._maybe_move_to_device(max_bytes=0)  # too big for the device: it stays on the host
    assert dm.splits.train.x.device.type == "cpu"
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert loader.pin_memory
    dm.trainer = type(
        "T", (_Trainer,), {"strategy": type("S", (), {"root_device": torch.device("cpu")})()}
    )()
    assert not dm.train_dataloader().pin_memory
