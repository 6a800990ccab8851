"""Long runs a user can watch, trust and pick up again (issue 19): progress lines where no bar
can be drawn, resume that says what it does, damaged files named in one line, and a pipeline
killed anywhere that resumes to the same answer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tasks import run_task
from tests.conftest import FAST, GAN_FAST, ROOT, compose, run_py
from xfergan.errors import UserError

# progress on (FAST turns it off): these tests read the progress lines
SMALL = [a for a in FAST if not a.startswith("trainer.enable_progress_bar=")] + [
    "trainer.enable_progress_bar=true",
    "logger=none",
    "dataset.n_per_class=3",
    "dataset.val_per_class=2",
]


def test_a_non_interactive_pipeline_says_where_it_is(tmp_path):
    """No terminal (a pipe, as under CI, SLURM or nohup): stage k/N, steps done/total, steps/s
    and ETA while training, one line per finished stage, and the pipeline's own count."""
    r = run_py(
        SMALL
        + [
            "task=pipeline",
            "pipeline.arms=[real,teacher]",
            "+pipeline.teacher_overrides={trainer.max_steps: 6}",
            "trainer.max_steps=8",
            f"hydra.run.dir={tmp_path}",
        ],
        env={"XFERGAN_PROGRESS_EVERY_S": "0"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "stage 1/2 classify_real: started" in out
    assert re.search(
        r"stage 1/2 classify_real: \d/8 steps \(\d+%\), [\d.]+ steps/s, ETA \d:\d\d:\d\d", out
    )
    assert re.search(r"stage 1/2 classify_real: done in \d:\d\d:\d\d, test/acc 0\.\d+", out)
    assert re.search(r"pipeline: 1/2 stages done, ETA \d:\d\d:\d\d", out)
    assert re.search(r"stage 2/2 classify_teacher: \d/6 steps", out)
    assert "pipeline: 2/2 stages done, ETA 0:00:00" in out
    assert "it/s]" not in r.stderr  # no bar drawn into a pipe


def test_sweep_jobs_say_which_job_they_are(tmp_path):
    r = run_py(
        ["-m"] + SMALL + ["trainer.max_steps=3", "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}"],
        env={"XFERGAN_PROGRESS_EVERY_S": "0"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[job 1/2]" in r.stdout and "[job 2/2]" in r.stdout
    assert "2 jobs -- 2 ok, 0 failed, 0 missing" in r.stdout


def test_resume_without_a_checkpoint_says_so_and_starts_fresh(tmp_path, caplog):
    caplog.set_level("WARNING")
    m = run_task(compose(SMALL + ["trainer.max_steps=3", "resume=true"], tmp_path / "c"))
    assert m["global_step"] == 3
    assert "has no checkpoints/last.ckpt: starting from scratch" in caplog.text
    caplog.clear()
    g = run_task(
        compose(SMALL + GAN_FAST + ["task=gan", "gan.steps=3", "resume=true"], tmp_path / "g")
    )
    assert g["gan/steps"] == 3 and "starting from scratch" in caplog.text


def test_resume_from_a_checkpoint_of_other_settings_starts_fresh(tmp_path, caplog):
    run_task(compose(SMALL + ["trainer.max_steps=4"], tmp_path))
    caplog.set_level("WARNING")
    m = run_task(compose(SMALL + ["trainer.max_steps=6", "resume=true"], tmp_path))
    assert "was written with other settings" in caplog.text and m["global_step"] == 6


def test_a_damaged_checkpoint_or_metrics_file_is_one_line(tmp_path):
    run_task(compose(SMALL + ["trainer.max_steps=3"], tmp_path / "c"))
    last = tmp_path / "c" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(UserError, match="last.ckpt.*delete it to start this run from scratch"):
        run_task(compose(SMALL + ["trainer.max_steps=3", "resume=true"], tmp_path / "c"))
    (tmp_path / "c" / "metrics.json").write_text('{"status": "ok", "test/ac')
    r = run_py(["task=evaluate", f"run={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'e'}"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("xfergan: error:")
    assert "metrics.json is not valid JSON" in r.stderr


def test_a_pipeline_with_a_truncated_stage_file_reruns_that_stage(tmp_path):
    args = SMALL + ["task=pipeline", "pipeline.arms=[real]", "trainer.max_steps=4"]
    first = run_task(compose(args, tmp_path))
    f = tmp_path / "classify_real" / "metrics.json"
    f.write_text(f.read_text()[:40])
    again = run_task(compose(args + ["resume=true"], tmp_path))
    assert again["test/acc_real"] == pytest.approx(first["test/acc_real"], abs=1e-9)
    assert json.loads(f.read_text())["status"] == "ok"


def test_a_failing_stage_is_named_with_its_arm(tmp_path):
    args = SMALL + [
        "task=pipeline",
        "pipeline.arms=[real,teacher]",
        "+pipeline.teacher_overrides={model.backbone: no_such_net}",
        "trainer.max_steps=2",
    ]
    with pytest.raises(UserError, match=r"pipeline stage classify_teacher \(arm teacher\) failed"):
        run_task(compose(args, tmp_path))


# ----------------------------------------------------------------------------- kill anywhere
KILL_ARGS = (
    FAST
    + GAN_FAST
    + [
        "logger=none",
        "task=pipeline",
        "pipeline.arms=[real,synthetic,mixed]",
        "pipeline.feature_net=false",
        "dataset.n_per_class=4",
        "dataset.val_per_class=2",
        "trainer.max_steps=120",  # two epochs of 60: a checkpoint mid-arm
        "gan.steps=120",
        "gan.checkpoint_every_n_steps=20",
        "gan.sample_every_n_steps=1000",
        "synthesize.n_per_class=20",
        "dataset.mix_balance=0.5",
    ]
)


def _table(d):
    t = json.loads((d / "table3.json").read_text())
    return {a: r["test/acc"] for a, r in t["arms"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill") / "full"
    r = run_py(KILL_ARGS + [f"hydra.run.dir={d}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return _table(d)


@pytest.mark.parametrize(
    "when",
    [
        "gan/checkpoints/last.ckpt",  # mid-GAN, after its first checkpoint (what resume reads)
        "classify_synthetic/checkpoints/last.ckpt",  # mid-arm, after its first epoch
    ],
)
def test_killed_anywhere_then_resumed_gives_the_same_table(uninterrupted, when, tmp_path):
    d = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *KILL_ARGS, f"hydra.run.dir={d}"],
        cwd=ROOT,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (d / when).exists() and p.poll() is None:
        time.sleep(0.02)
    assert (d / when).exists(), f"never reached {when}"
    os.killpg(p.pid, signal.SIGKILL)  # kill -9, the whole job
    p.wait(timeout=30)
    assert not (d / "table3.json").exists()
    r = run_py(KILL_ARGS + [f"hydra.run.dir={d}", "resume=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _table(d) == uninterrupted
    # the stage it was killed in counts the fit time of the steps it kept from the first process
    stage = when.split("/")[0]
    m = json.loads((d / stage / "metrics.json").read_text())
    key = "gan/train_s" if stage == "gan" else "train_s"
    assert 0 < m[key + "_before_resume"] < m[key]
