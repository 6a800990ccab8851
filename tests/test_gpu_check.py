"""benchmarks/gpu_check.sh, the one prepared device run (issue 28): what it can be checked for
without a GPU. Its end-to-end run picks the fastest step it measured and sizes the paper's GAN
from that speed (benchmarks/gpu_sizing.py); every step it names exists; bench.py writes each
variant as it is measured (a step cut at its time cap keeps what it got)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_sizing  # noqa: E402


def _bench(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"results": rows}))
    return path


def _gan(name, ours, **kw):
    return {"case": f"GAN speed {name} (paper_table3_full G/D, plain loop)", "ours": ours, **kw}


def test_the_end_to_end_run_takes_the_fastest_step_that_ran(tmp_path):
    f = _bench(
        tmp_path / "speed.json",
        [
            _gan("eager_bs64_bf16", 1600.0),  # img/s: 25 steps/s at batch 64
            _gan("graph_bs64_bf16", 19200.0),  # 300 steps/s
            _gan("graph_bs256_bf16", 90000.0),  # another batch: not the run's
        ],
    )
    assert gpu_sizing.fastest("gan", f) == ("graph", 300.0)
    # the graph variant failed on this machine: the run stays eager
    f = _bench(
        tmp_path / "failed.json",
        [
            _gan("eager_bs64_bf16", 1600.0),
            _gan("graph_bs64_bf16", 0.0, error="BackendCompilerFailed: x"),
        ],
    )
    assert gpu_sizing.fastest("gan", f) == ("null", 25.0)
    assert gpu_sizing.fastest("gan", tmp_path / "missing.json") == ("null", 0.0)
    clf = _bench(
        tmp_path / "clf.json",
        [
            {"case": "classifier speed eager_bs64 (MobileNetV2)", "ours": 26.3},
            {"case": "classifier speed graph_bs64 (MobileNetV2)", "ours": 161.0},
        ],
    )
    assert gpu_sizing.fastest("clf", clf) == ("graph", 161.0)


def test_the_gan_is_sized_to_what_fits_the_cap_never_more_than_asked(tmp_path):
    steps, _ = gpu_sizing.sized("table3_gan", 15000, 260, 75, 1, 100.0)
    assert steps == 15000  # 16,650 would fit: the paper's 15,000 run
    steps, why = gpu_sizing.sized("table3_gan", 15000, 260, 75, 1, 21.6)
    assert steps == int(0.9 * 185 * 21.6) and "21.6 steps/s" in why
    steps, _ = gpu_sizing.sized("ablation_gan", 15000, 300, 150, 4, 21.6)  # 4 jobs at once
    assert steps == int(0.9 * 150 * 21.6 / 4)
    assert gpu_sizing.sized("x", 100, 10, 50, 1, 30.0)[0] == 1  # no time: one step, not zero
    # no speed given: the newest GPU bench file's GAN step; CPU rehearsals never count
    _bench(tmp_path / "2026-12-01_nvidia-h200.json", [{"case": "GAN step x", "ours": 20.0}])
    _bench(tmp_path / "2026-12-04_gpu.json", [{"case": "GAN step y", "ours": 30.0}])
    _bench(tmp_path / "2026-12-09_cpu-smoke.json", [{"case": "GAN step z", "ours": 2.0}])
    rate, src = gpu_sizing.last_gan_rate(tmp_path)
    assert rate == 30.0 and src.endswith("2026-12-04_gpu.json")


def _clf(name, ours, fit_s, fit_steps=205):
    return {
        "case": f"classifier speed {name} (x)",
        "ours": ours,
        "fit_s": fit_s,
        "fit_steps": fit_steps,
    }


def test_the_paper_table_runs_the_settings_that_fit_it_best_in_its_cap(tmp_path):
    """Step 2 picks, from what steps 4 and 8 measured, the classifier setting with the least
    total time (steps at its speed plus a compile per stage) and the GAN setting that fits the
    most of the paper's 15,000 steps in what is left (its compile counted)."""
    gan = _bench(
        tmp_path / "g.json",
        [
            _gan("eager_bs64_bf16", 25 * 64, first_step_s=1.0),
            _gan("graph_bs64_bf16", 300 * 64, first_step_s=40.0),
        ],
    )
    # graph: 160 steps/s after a 20 s compile (205 steps in 21.28 s of fit)
    fast = _bench(
        tmp_path / "c.json", [_clf("eager_bs64", 26.0, 9.0), _clf("graph_bs64", 160.0, 21.28125)]
    )
    plan, why = gpu_sizing.table3_plan(gan, fast, 260)
    clf_s = 4420 / 160 + 4 * 20.0  # 107.6 s against 170 s eager
    fit = int(0.9 * (260 - clf_s - 45 - 40.0) * 300 * 0.7)
    assert plan == {"gan.compile": "graph", "model.compile": "graph", "gan.steps": min(15000, fit)}
    assert "classifier graph" in why
    # a compile of 60 s a stage costs more than it saves: eager
    slow = _bench(
        tmp_path / "s.json", [_clf("eager_bs64", 26.0, 9.0), _clf("graph_bs64", 160.0, 61.28125)]
    )
    assert gpu_sizing.table3_plan(gan, slow, 260)[0]["model.compile"] == "false"
    # no room for the graph's 40 s compile: the eager GAN (1 s) fits more steps
    cap = clf_s + 45 + 30
    tight = gpu_sizing.table3_plan(gan, fast, cap)[0]
    assert tight["gan.compile"] == "null"
    assert tight["gan.steps"] == int(0.9 * (cap - clf_s - 45 - 1.0) * 25 * 0.7)


def test_every_step_the_check_runs_exists_and_the_script_parses():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)
    order = re.search(r"GPU_CHECK_STEPS:-([0-9 ]+)\}", script).group(1).split()
    defined = set(re.findall(r"^step(\d+)\(\) \{", script, re.M))
    assert order == ["4", "8", "6", "2", "0", "7", "3", "5"] and set(order) <= defined
    assert re.search(r"^BUDGET=\$\{GPU_CHECK_BUDGET_S:-(\d+)\}", script, re.M).group(1) == "500"
    assert "timeout -k" in script and "pack\n" in script
    # the paper-scale CPU result is never overwritten by a GPU run
    assert "GPU_CHECK_TABLE3_NAME:-paper_table3_full_gpu}" in script


def test_bench_writes_each_variant_as_it_is_measured(tmp_path, monkeypatch):
    """A step cut at its time cap kept nothing: the speed cases handed back their rows only
    after the last variant. Now the JSON holds each variant once it is measured: here the run
    is killed while the second variant runs, and the first is on disk."""
    import bench

    out = tmp_path / "speed.json"

    def measure(name, *a):
        if name.startswith("graph"):  # the cap's kill, while the second variant compiles
            raise SystemExit("killed at the step's time cap")
        return {"rate": 1600.0, "first_step_s": 1.0}

    monkeypatch.setattr(bench, "_gan_speed_one", measure)
    argv = ["bench.py", "--preset", "cpu", "--cases", "gan_speed", "--repeats", "1"]
    argv += ["--steps", "1", "--gan-variants", "eager_bs64,graph_bs64", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        bench.main()
    rows = json.loads(out.read_text())["results"]
    assert [r["case"].split()[2] for r in rows] == ["eager_bs64"] and rows[0]["ours"] == 1600.0


def test_a_classifier_variant_that_cannot_run_is_a_row_not_a_crash(tmp_path):
    import bench

    rows = list(bench.bench_classifier_speed(1, 0, False, tmp_path, "bogus_bs8"))
    assert len(rows) == 1 and rows[0]["ours"] == 0.0, rows
    assert "model.compile='bogus'" in rows[0]["error"], rows


def test_the_bf16_gan_speed_step_runs_as_task_gan_runs_it(tmp_path, monkeypatch):
    """gan_speed's bf16 variants ran gan_step under a plain torch.autocast, whose cast cache
    keeps D's bf16 weights from before D's update for the G half of the step; task=gan runs
    under Lightning's bf16-mixed context, which has no cache. The bench now measures the
    same computation: every autocast it opens is Lightning's (cache_enabled=False)."""
    import bench
    import torch

    opened = []
    real = torch.autocast

    class Recorded(real):
        def __init__(self, *a, **k):
            opened.append(k.get("cache_enabled", True))
            super().__init__(*a, **k)

    monkeypatch.setattr(torch, "autocast", Recorded)
    row = bench._gan_speed_one("eager_bs8_bf16", 1, 0, False, tmp_path)
    assert row["rate"] > 0 and opened and not any(opened), opened
