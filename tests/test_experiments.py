"""Sweeps, reports, parallel jobs, W&B run folders (issue: paper reproduction & sweeps)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks import run_task
from tests.conftest import FAST, ROOT, compose, run_py


def _wandb_meta(run_dir: Path) -> dict:
    """Group, job_type and tags of a run's offline W&B run, read back from its .wandb file."""
    from xfergan.tracking.wandb_files import read_offline_run

    return read_offline_run(next(run_dir.glob("wandb/offline-run-*/run-*.wandb")))


def test_paper_table1_sweep_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_py(
        [
            "-m",
            "experiment=paper_table1",
            "seed=0,1",
            "debug=smoke",
            *FAST,
            "logger=default",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert len(jobs) == 2
    for j in jobs:  # every job: its own W&B offline run, grouped by experiment, job_type = task
        meta = _wandb_meta(j.parent)
        assert meta["group"] == "paper_table1" and meta["job_type"] == "classify"
        assert {"mnist", "real"} <= set(meta["tags"])
    r = run_py(["task=report", f"dir={sweep}", f"hydra.run.dir={tmp_path}/report", "logger=none"])
    assert r.returncode == 0, r.stderr[-3000:]
    report = (sweep / "report.md").read_text()
    rows = [ln for ln in report.splitlines() if ln.startswith("| ") and "n |" not in ln]
    assert len(rows) == 1 and "| 2 |" in rows[0], report
    assert list(sweep.glob("plot_*.png"))
    assert (sweep / "report.csv").read_text().count("\n") == 2


def test_joblib_parallel_jobs_and_a_killed_one(tmp_path):
    """Two jobs in parallel (joblib); job 1 is SIGKILLed mid-run. Job 0 keeps its results, and
    the report marks job 1 missing."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *FAST,
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        "logger=none",
        "dataset.n_per_class=10",
        "trainer.max_epochs=1,400",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    p = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    pid_file = sweep / "1" / "job.pid"
    while time.time() < deadline and not (
        (sweep / "0" / "metrics.json").exists() and pid_file.exists()
    ):
        time.sleep(0.1)
    assert (sweep / "0" / "metrics.json").exists() and pid_file.exists()
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    p.wait(timeout=120)
    m0 = json.loads((sweep / "0" / "metrics.json").read_text())
    assert m0["status"] == "ok"
    assert not (sweep / "1" / "metrics.json").exists()
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "report"))
    report = (sweep / "report.md").read_text()
    assert "1 missing" in report and "MISSING" in report and "max_epochs=400" in report


def test_failed_job_is_recorded_the_sweep_goes_on_and_the_command_fails(tmp_path):
    """Job 0 fails, job 1 still runs; then one summary names the failure and the command exits
    non-zero (a failed sweep never looks like a finished one)."""
    sweep = tmp_path / "sweep"
    r = run_py(
        [
            "-m",
            *FAST,
            "debug=smoke",
            "logger=none",
            "dataset.n_per_class=-1,5",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert "2 jobs -- 1 ok, 1 failed, 0 missing" in r.stdout
    assert f"FAILED  {sweep / '0'}: error: dataset.n_per_class=-1" in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("xfergan: error: sweep ")
    assert "Traceback" not in r.stderr
    bad = json.loads((sweep / "0" / "metrics.json").read_text())
    good = json.loads((sweep / "1" / "metrics.json").read_text())
    assert bad["status"] == "failed" and "n_per_class=-1" in bad["error"]
    assert (sweep / "0" / "error.txt").is_file()
    assert good["status"] == "ok"
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "report"))
    assert "FAILED" in (sweep / "report.md").read_text()
