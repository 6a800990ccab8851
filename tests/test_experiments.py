"""Sweeps, reports, parallel jobs, W&B run folders (issue: paper reproduction & sweeps)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import FAST, ROOT, run_py


def _wandb_records(path: Path):
    """Records of a W&B .wandb file (a LevelDB-style log: 7-byte file header, 32 KiB blocks,
    7-byte record headers: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def _wandb_meta(run_dir: Path) -> dict:
    """Group, job_type and tags of a run's offline W&B run, read back from its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    f = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    for data in _wandb_records(f):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") == "run":
            return {
                "group": rec.run.run_group,
                "job_type": rec.run.job_type,
                "tags": list(rec.run.tags),
            }
    raise AssertionError(f"no run record in {f}")


def test_paper_table1_sweep_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_py(
        [
            "-m",
            "experiment=paper_table1",
            "seed=0,1",
            "debug=smoke",
            "trainer.enable_progress_bar=false",
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
    r = run_py(["task=report", f"dir={sweep}", f"hydra.run.dir={tmp_path}/report", "logger=none"])
    assert r.returncode == 0, r.stderr[-2000:]
    report = (sweep / "report.md").read_text()
    assert "1 missing" in report and "MISSING" in report and "max_epochs=400" in report


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path):
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
    assert r.returncode == 0, r.stderr[-2000:]
    bad = json.loads((sweep / "0" / "metrics.json").read_text())
    good = json.loads((sweep / "1" / "metrics.json").read_text())
    assert bad["status"] == "failed" and "n_per_class=-1" in bad["error"]
    assert (sweep / "0" / "error.txt").is_file()
    assert good["status"] == "ok"
    run_py(["task=report", f"dir={sweep}", f"hydra.run.dir={tmp_path}/report", "logger=none"])
    assert "FAILED" in (sweep / "report.md").read_text()
