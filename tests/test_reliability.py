"""Resumable runs, clear errors, W&B without network, DDP on 2 CPU processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tasks import run_task
from tests.conftest import FAST, ROOT, compose, run_py
from xfergan.errors import UserError

RESUME = FAST + [
    "dataset.n_per_class=20",
    "dataset.val_per_class=5",
    "dataset.batch_size=20",
    "trainer.max_epochs=5",
    "trainer.deterministic=true",
    "logger=csv",
    "dataset.augment.enabled=true",
    "dataset.augment.rotation=10",
    "seed=7",
]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    expected = run_task(compose(RESUME, tmp_path / "ref"))  # in this process: no start-up

    run = tmp_path / "killed"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    p = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "run.py"),
            *RESUME,
            f"hydra.run.dir={run}",
            "trainer.max_epochs=5",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert last.exists(), "the run never wrote its first checkpoint"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (
        not (run / "metrics.json").exists()
        or json.loads((run / "metrics.json").read_text())["status"] != "ok"
    ), "killed before the end"

    r = run_py(RESUME + [f"hydra.run.dir={run}", "resume=true"])
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads((run / "metrics.json").read_text())
    assert got["train_s_before_resume"] > 0  # it continued the checkpoint, not a fresh start
    assert got["global_step"] == expected["global_step"]
    assert got["epochs"] == expected["epochs"]
    assert got["test/acc"] == pytest.approx(expected["test/acc"], abs=1e-6)
    assert got["test/loss"] == pytest.approx(expected["test/loss"], rel=1e-5)


# run as `python run.py` processes: exit 2, one line, no traceback
ONE_LINE_ERRORS = [
    (["dataset.n_per_class=9000"], "dataset.n_per_class=9000 but class 0 has only"),
    (["dataset.source=synthetic"], "dataset.source=synthetic needs dataset.synthetic_path"),
    (["task=pipeline", "pipeline.arms=[real,distil_gan]"], "unknown arm 'distil_gan'"),
]
# the same UserError path, checked in-process (each process is ~10 s of start-up on 2 cores)
IN_PROCESS_ERRORS = [
    (["dataset.n_per_class=0"], "dataset.n_per_class=0 must be a positive number"),
    (
        ["model=resnet18", "model.init=scratch", "dataset.image_size=16"],
        "dataset.image_size=16 is too small for resnet18",
    ),
    (
        ["model.init=/nonexistent/model.ckpt"],
        "init checkpoint /nonexistent/model.ckpt does not exist",
    ),
    (["task=gan", "gan.compile=fast"], "gan.compile='fast': use one of none, default"),
    (["dataset=mura", "paths.data_dir=/tmp"], "no MURA-v1.1/ folder in /tmp"),
    (["task=synthesize", "synthesize.checkpoint=/nonexistent"], "GAN checkpoint /nonexistent"),
    (
        ["task=pipeline", "pipeline.arms=[real,distill_gan]", "distill.min_confidence=1.5"],
        "distill.min_confidence=1.5 must be in (0, 1]",
    ),
]


# values no job can run with: refused before anything trains, in one line naming the key
BAD_VALUES = [
    (["dataset.batch_size=0"], "dataset.batch_size=0: use a batch size of at least 1"),
    (["dataset.eval_batch_size=0"], "dataset.eval_batch_size=0: use a batch size of at least 1"),
    (["task=gan", "gan.batch_size=0"], "gan.batch_size=0: use a batch size of at least 1"),
    (["task=synthesize", "synthesize.batch_size=0"], "synthesize.batch_size=0: use a batch"),
    (["task=pseudolabel", "distill.batch_size=0"], "distill.batch_size=0: use a batch size"),
    (["checkpoint.mode=bogus"], "checkpoint.mode='bogus': use max or min"),
    (  # MNIST has 10 classes: no threshold on P(class 1)
        ["model.decision=val_balanced_acc"],
        "model.decision=val_balanced_acc needs two classes and a val split (this data has 10 "
        "classes and 1000 val images); use model.decision=argmax",
    ),
    (
        ["task=gan", "gan/discriminator=projected", "gan.discriminator.weights=IMAGENET1K_V9"],
        "gan.discriminator.weights='IMAGENET1K_V9' is not a weights name of mobilenet_v2",
    ),
]


@pytest.mark.parametrize("args, message", BAD_VALUES, ids=[a[-1] for a, _ in BAD_VALUES])
def test_bad_values_are_refused_before_anything_trains(args, message, tmp_path, monkeypatch):
    import pytorch_lightning as pl

    def fit(*a, **k):
        raise AssertionError("it trained before refusing the value")

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    with pytest.raises(UserError) as e:
        run_task(compose([*FAST, "logger=none", "dataset.n_per_class=2", *args], tmp_path))
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_the_same_bad_input_in_process_is_one_line_user_error(tmp_path):
    for i, (args, message) in enumerate(IN_PROCESS_ERRORS):
        with pytest.raises(UserError) as e:
            run_task(compose([*FAST, "logger=none", *args], tmp_path / str(i)))
        assert message in str(e.value) and "\n" not in str(e.value).strip(), (args, str(e.value))


def test_a_checkpoint_that_does_not_fit_or_would_run_code_is_one_line(tmp_path):
    """A model.init checkpoint of another network, and one that would run code on load (it is
    read with weights_only=True: nothing runs)."""
    import pickle

    import torch

    from lightning_modules.nets.backbones import build_backbone

    net = build_backbone("small_cnn", 10, in_channels=1, init="scratch", width=8)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "cnn.ckpt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    cases = [
        (
            ["model=resnet18", "dataset.image_size=32", f"model.init={tmp_path / 'cnn.ckpt'}"],
            "does not fit this model",
        ),
        ([f"model.init={tmp_path / 'evil.ckpt'}"], "weights_only=True"),
    ]
    for i, (args, message) in enumerate(cases):
        with pytest.raises(UserError) as e:
            run_task(compose([*FAST, "logger=none", *args], tmp_path / str(i)))
        assert message in str(e.value) and "\n" not in str(e.value).strip(), str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_clear_one_line_errors(tmp_path):
    """Bad input of every kind: exit code 2, the last line `xfergan: error: ...`, no traceback.
    The cases run as concurrent processes (each is mostly start-up)."""
    cases = ONE_LINE_ERRORS
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "run.py"),
                *FAST,
                "logger=none",
                f"hydra.run.dir={tmp_path / str(i)}",
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (args, _) in enumerate(cases)
    ]
    for p, (args, message) in zip(procs, cases):
        err = p.communicate(timeout=300)[1]
        assert p.returncode == 2, (args, err[-2000:])
        last = err.strip().splitlines()[-1]
        assert last.startswith("xfergan: error: ") and message in last, (args, err[-2000:])
        assert "Traceback" not in err


def test_wandb_online_without_network_falls_back_offline_in_bounded_time(tmp_path):
    env = {
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "x" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB__SERVICE_WAIT": "20",
    }
    t0 = time.time()
    r = run_py(
        FAST
        + [
            "debug=smoke",
            "logger=default",
            "logger.init_timeout=4",
            "dataset.n_per_class=5",
            f"hydra.run.dir={tmp_path}",
        ],
        env=env,
        timeout=240,
    )
    took = time.time() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert took < 150, f"took {took:.0f}s"
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"
    assert list((tmp_path / "wandb").glob("offline-run-*")), "fell back to an offline run"


def test_lightnings_called_launcher_function_is_the_one_replaced():
    """pytorch_lightning's launcher calls its own imported copy of _hydra_subprocess_cmd: that is
    the name that must be (and is) replaced."""
    import lightning_fabric.strategies.launchers.subprocess_script as fab
    import pytorch_lightning.strategies.launchers.subprocess_script as pls

    from xfergan.ddp import child_command, patch_lightning_launcher

    patch_lightning_launcher()
    assert pls._hydra_subprocess_cmd is child_command
    assert fab._hydra_subprocess_cmd is child_command


def test_ddp_inside_a_multirun_runs_each_job_on_two_ranks_and_counts_each_image_once(tmp_path):
    """A 2-job sweep with trainer=ddp (2 gloo processes) on an odd-sized test set (123 real
    chest X-rays): every child runs exactly its job (RUN mode, no -m, no sweep list, the job's
    seed); n_test is the set's size and every test metric equals a single-process evaluation of
    the same checkpoint."""
    from tests.test_integrity import _medmnist_npz

    npz = _medmnist_npz(tmp_path / "odd.npz", n_test=123)
    sweep, logs = tmp_path / "sweep", tmp_path / "logs"
    r = run_py(
        [
            "-m",
            *FAST,
            "dataset=pneumoniamnist",
            f"dataset.npz_path={npz}",
            "dataset.image_size=28",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "logger=none",
            "seed=0,1",
            f"paths.log_dir={logs}",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert not logs.exists(), "a DDP child started a run of its own"
    for job, seed in (("0", 0), ("1", 1)):
        ranks = {
            p.stem: json.loads(p.read_text()) for p in (sweep / job / "processes").glob("*.json")
        }
        assert set(ranks) == {"rank0", "rank1"}, ranks
        child, parent = ranks["rank1"], ranks["rank0"]
        assert parent["hydra_mode"] == "MULTIRUN" and child["hydra_mode"] == "RUN"
        assert "-m" not in child["argv"] and "seed=0,1" not in child["argv"]
        assert child["seed"] == parent["seed"] == seed and child["world_size"] == 2
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["status"] == "ok" and m["n_test"] == 123 and m["seed"] == seed
    ddp = json.loads((sweep / "0" / "metrics.json").read_text())
    ev = tmp_path / "eval"
    r = run_py(
        [
            "task=evaluate",
            f"run={sweep / '0'}",
            "logger=none",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={ev}",
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    single = json.loads((ev / "metrics.json").read_text())
    assert single["evaluated_checkpoint"] == ddp["tested_checkpoint"]
    keys = [k for k in ddp if k.startswith("test/") and isinstance(ddp[k], float)]
    assert {"test/acc", "test/auroc", "test/kappa", "test/loss", "test/majority_acc"} <= set(keys)
    for k in keys:
        assert single[k] == pytest.approx(ddp[k], abs=1e-6), k


def test_gan_divergence_stops_with_a_clear_message(tmp_path):
    r = run_py(
        FAST
        + [
            "task=gan",
            "debug=smoke",
            "logger=none",
            "dataset.n_per_class=4",
            "gan.steps=30",
            "gan.discriminator.spectral_norm=false",
            "gan.lr_d=1e30",
            "gan.lr_g=1e30",
            "gan.image_size=28",
            "gan.generator.width=8",
            "gan.discriminator.width=8",
            "gan.batch_size=20",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "GAN diverged at step" in last and "last good checkpoint" in last


def test_collapsed_discriminator_is_detected():
    import torch

    from lightning_modules.gan import GANDivergedError
    from tests.conftest import small_gan

    m = small_gan(2, 28, divergence_patience=5)
    for _ in range(4):
        m._check_divergence(torch.tensor(0.0), torch.tensor(3.0))
    with pytest.raises(GANDivergedError, match="discriminator loss stayed at ~0"):
        m._check_divergence(torch.tensor(0.0), torch.tensor(3.0))
    m._div.bad.zero_(), m._div.worst.zero_()
    m._check_divergence(torch.tensor(0.5), torch.tensor(1.0))  # healthy
    with pytest.raises(GANDivergedError, match="NaN/Inf"):
        m._check_divergence(torch.tensor(float("nan")), torch.tensor(1.0))


def test_a_resumed_gan_goes_on_counting_its_collapsed_d_streak():
    """The streak lived in memory only: a GAN whose D had collapsed for 3 of its 5 allowed
    steps when its checkpoint was written got 5 more after each resume."""
    import torch

    from lightning_modules.gan import GANDivergedError
    from tests.conftest import small_gan

    m = small_gan(2, 28, divergence_patience=5)
    for _ in range(3):
        m._check_divergence(torch.tensor(0.0), torch.tensor(3.0), read=False)
    ckpt = {}
    m.on_save_checkpoint(ckpt)  # what Lightning (task=gan) and save_gan (gan_fused) write
    resumed = small_gan(2, 28, divergence_patience=5)
    resumed.on_load_checkpoint(ckpt)  # what a resumed fit and load_gan call
    resumed._check_divergence(torch.tensor(0.0), torch.tensor(3.0))
    with pytest.raises(GANDivergedError, match="stayed at ~0 for 5 steps"):
        resumed._check_divergence(torch.tensor(0.0), torch.tensor(3.0))


def test_a_bad_seed_is_a_failed_job_in_one_line_not_a_missing_one(tmp_path):
    """seed=-1 raised in seed_everything before the job's try: a traceback and no metrics.json,
    so a sweep called the job "missing (killed or never started)"."""
    from xfergan.schema import check_values

    with pytest.raises(UserError, match=r"seed=-1: use a whole number from 0 to 4294967295"):
        check_values(compose(["seed=-1"]))
    out = tmp_path / "job"
    with pytest.raises(UserError, match="seed=4294967296"):
        run_task(compose(FAST + ["dataset=mnist", "seed=4294967296", "logger=none"], out))
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


def test_the_sweep_summary_counts_only_this_sweeps_jobs(tmp_path):
    """A dir left by an earlier, larger sweep in the same hydra.sweep.dir (5/, failed) was
    reported as one of this 2-job sweep's failures, and the command exited 1."""
    from xfergan.sweep import job_outcomes

    for job, status in (("0", "ok"), ("1", "ok"), ("5", "failed")):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text(json.dumps({"status": status}))
    o = job_outcomes(tmp_path, 2)
    assert len(o["ok"]) == 2 and o["failed"] == [] and o["missing"] == []
    assert len(job_outcomes(tmp_path, None)["failed"]) == 1  # size unknown: every dir


def test_fused_gans_that_crash_stop_the_sweep_in_one_line(tmp_path, monkeypatch, capsys):
    """Any error of the fused GAN stage (e.g. out of memory) was only a Hydra warning, and every
    job then failed on "no finished GAN run": now one line with the cause, and exit 1."""
    from omegaconf import OmegaConf

    from tasks.pipeline import FusedGANsFirst

    def crash(self, config):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(FusedGANsFirst, "_train", crash)
    cfg = OmegaConf.create({"pipeline": {"fused_gans": True}, "hydra": {"sweep": {"dir": "s"}}})
    with pytest.raises(SystemExit) as e:
        FusedGANsFirst().on_multirun_start(cfg)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "the fused GANs failed: RuntimeError: CUDA out of memory" in err
    assert "more detail" not in err and err.count("\n") == 1


def test_budgets_and_precisions_that_would_not_do_what_they_say_are_one_line(tmp_path):
    """trainer.accumulate_grad_batches=2 under a step budget made every arm 600 / 2 optimizer
    steps while metrics.json said 600; a GAN under trainer.precision=bf16-true left most of its
    EMA generator's weights unmoved (the 0.001 step is below bf16's precision). Both are now
    refused in one line, the GAN's before a pipeline's first stage trains."""
    args = FAST + ["logger=none", "dataset.n_per_class=2", "trainer.max_steps=4"]
    with pytest.raises(UserError, match="accumulate_grad_batches=2 with a step budget") as e:
        run_task(compose(args + ["+trainer.accumulate_grad_batches=2"], tmp_path / "a"))
    assert "\n" not in str(e.value)
    # half of each epoch's batches: 100 steps asked, 50 made, metrics.json said 100 (a review)
    with pytest.raises(UserError, match=r"limit_train_batches=0.5 with a step budget \(4 steps"):
        run_task(compose(args + ["trainer.limit_train_batches=0.5"], tmp_path / "f"))
    pipe = args + ["task=pipeline", "pipeline.arms=[real,synthetic]", "pipeline.primary=[]"]
    with pytest.raises(UserError, match="trainer.precision=bf16-true for a GAN"):
        run_task(compose(pipe + ["trainer.precision=bf16-true"], tmp_path / "b"))
    assert not (tmp_path / "b" / "classify_real").exists()
