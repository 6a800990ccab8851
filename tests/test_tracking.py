"""A self-hosted tracker: a real `mlflow server` (sqlite backend, temporary dir) on 127.0.0.1,
real and synthetic smoke classifications logged to it, read back grouped by source."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tasks import run_task
from tests.conftest import FAST, GAN_FAST, compose

mlflow = pytest.importorskip("mlflow")

SMOKE = FAST + ["debug=smoke", "dataset.n_per_class=4", "seed=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proc = subprocess.Popen(
        [
            exe,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp}/mlflow.db",
            "--default-artifact-root",
            str(tmp / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "server.log", "w"),  # noqa: SIM115 - closed with the process
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90  # bounded wait for the server
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, (tmp / "server.log").read_text()[-2000:]
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("mlflow server did not answer within 90 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_real_and_synthetic_runs_compare_by_source_in_mlflow(mlflow_server, tmp_path):
    gan, syn = tmp_path / "gan", tmp_path / "syn"
    run_task(compose(SMOKE + GAN_FAST + ["task=gan", "logger=none"], gan))
    run_task(
        compose(SMOKE + ["task=synthesize", f"synthesize.checkpoint={gan}", "logger=none"], syn)
    )
    log = ["logger=mlflow", f"logger.tracking_uri={mlflow_server}", "name=mlflow_test"]
    real = run_task(compose(SMOKE + log, tmp_path / "real"))
    synth = run_task(
        compose(
            SMOKE + log + ["dataset.source=synthetic", f"dataset.synthetic_path={syn}"],
            tmp_path / "synth",
        )
    )
    mlflow.set_tracking_uri(mlflow_server)
    df = mlflow.search_runs(experiment_names=["mlflow_test"])
    assert len(df) == 2
    by_source = {row["params.source"]: row for _, row in df.iterrows()}
    assert set(by_source) == {"real", "synthetic"}
    assert by_source["real"]["metrics.test/acc"] == pytest.approx(real["test/acc"])
    assert by_source["synthetic"]["metrics.test/acc"] == pytest.approx(synth["test/acc"])
    assert by_source["synthetic"]["params.n_train_synthetic"] == str(synth["n_train_synthetic"])
    assert by_source["real"]["tags.status"] == "ok" and by_source["real"]["status"] == "FINISHED"
    assert by_source["real"]["tags.mlflow.runName"] == "classify-mnist-real-n4v100-s0"
    mean = df.groupby("params.source")["metrics.test/acc"].mean()
    assert set(mean.index) == {"real", "synthetic"}
    client = mlflow.tracking.MlflowClient(mlflow_server)
    files = {a.path for a in client.list_artifacts(by_source["real"]["run_id"])}
    assert {"metrics.json", "confusion_matrix.png"} <= files


def test_unreachable_mlflow_costs_one_warning_line_not_the_run(tmp_path, caplog):
    t0 = time.time()
    with caplog.at_level("WARNING"):
        m = run_task(
            compose(
                SMOKE
                + [
                    "logger=mlflow",
                    "logger.tracking_uri=http://127.0.0.1:9",
                    "logger.init_timeout=5",
                ],
                tmp_path,
            )
        )
    assert m["status"] == "ok" and time.time() - t0 < 60
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow:")]
    assert len(said) == 1 and "does not answer" in said[0]
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == m["test/acc"]


def test_wandb_summary_keeps_the_best_val_value_and_the_tested_one(tmp_path, monkeypatch):
    """A real offline W&B run: val/acc logged 0.5, 0.9, 0.7, the tested checkpoint's 0.8; the
    summary holds both, and every later key of metrics.json is still written."""
    import wandb

    from xfergan.tracking.wandb_backend import define_best, finish_wandb
    from xfergan.tracking.wandb_files import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(mode="offline", dir=str(tmp_path), name="summary")
    define_best(run)
    for step, v in enumerate([0.5, 0.9, 0.7]):
        wandb.log({"val/acc": v, "val/loss": 1 - v}, step=step)
    finish_wandb(False, {"val/acc": 0.8, "val/loss": 0.2, "test/acc": 0.75, "status": "ok"})
    s = read_offline_run(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))["summary"]
    assert s["val/acc"] == {"max": 0.9, "tested": 0.8}
    assert s["val/loss"]["min"] == pytest.approx(0.1) and s["val/loss"]["tested"] == 0.2
    assert s["test/acc"] == 0.75 and s["status"] == "ok"


def test_reading_a_run_waits_for_the_file_wandb_is_still_writing(tmp_path, monkeypatch):
    """W&B's service may write the end of the file after wandb.finish() returns: the reader waits
    (bounded) for the exit record of a file written moments ago, and reads an old one at once."""
    import threading

    import wandb

    from xfergan.tracking.wandb_files import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.init(mode="offline", dir=str(tmp_path / "w"), name="late")
    wandb.log({"val/acc": 0.5})
    wandb.run.summary["test/acc"] = 0.75
    wandb.finish()
    src = next(tmp_path.glob("w/wandb/offline-run-*/run-*.wandb"))
    full = None
    for _ in range(150):  # the finished file, once the service has written all of it
        full = read_offline_run(src, settle_s=0)
        if "exit_code" in full:
            break
        time.sleep(0.2)
    assert full["summary"]["test/acc"] == 0.75 and full["exit_code"] == 0
    data = src.read_bytes()
    live = tmp_path / "live.wandb"
    live.write_bytes(data[:7])  # only the file header so far
    threading.Timer(1.0, live.write_bytes, args=(data,)).start()
    t0 = time.time()
    got = read_offline_run(live)
    assert got["summary"]["test/acc"] == 0.75 and 0.9 < time.time() - t0 < 10
    old = tmp_path / "killed.wandb"
    old.write_bytes(data[:7])
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # a run killed an hour ago
    t0 = time.time()
    assert "exit_code" not in read_offline_run(old) and time.time() - t0 < 1


def test_a_classifier_without_a_pool_is_the_dashboards_labelled_only_point(tmp_path):
    """The dashboard plots test/acc against config.n_unlabelled with 0 as "labelled only", but
    runs without a pool never carried the key, so the real arm never appeared there."""
    from xfergan.tracking import axes

    cfg = compose(FAST + ["dataset.n_per_class=8"], tmp_path)
    assert axes(cfg, {"n_train_real": 80, "n_train_synthetic": 0})["n_unlabelled"] == 0
    assert axes(cfg, {"n_train_real": 80, "n_unlabelled": 59_840})["n_unlabelled"] == 59_840
    assert "n_unlabelled" not in axes(cfg)  # before the data is loaded: not known yet


def test_wandb_runs_of_one_process_list_the_installed_packages_once(tmp_path, monkeypatch):
    """Each W&B run saves requirements.txt; the packages are listed once per process (wandb parses
    every package's metadata for each run otherwise) and every run still saves the full list."""
    import importlib.metadata

    import wandb

    from xfergan.tracking.wandb_backend import make_wandb_logger

    unlisted = getattr(wandb.util.working_set, "__wrapped__", wandb.util.working_set)
    monkeypatch.setattr(wandb.util, "working_set", unlisted)  # as before any run; undone after
    want = sorted(f"{d.key}=={d.version}" for d in unlisted())
    assert any(w.startswith("torch==") for w in want)
    listed = []
    real = importlib.metadata.distributions
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: listed.append(1) or real())
    for k in range(2):
        cfg = compose(FAST + ["debug=smoke", f"seed={k}"], tmp_path / str(k))
        make_wandb_logger(cfg, tmp_path / str(k), job_type="classify")
        wandb.finish()
    assert len(listed) == 1
    for k in range(2):
        req = next((tmp_path / str(k)).glob("wandb/offline-run-*/files/requirements.txt"))
        assert sorted(req.read_text().split()) == want
