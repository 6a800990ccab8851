"""task=report on pipeline runs: every arm, paired differences by seed with CIs and verdicts."""

from __future__ import annotations

import json

import pytest
import yaml

from tasks import run_task
from tests.conftest import compose


def _pipeline_run(d, seed, n, accs: dict, extra=None):
    d.mkdir(parents=True)
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"dataset.n_per_class={n}", f"seed={seed}"])
    )
    m = {"task": "pipeline", "status": "ok", "seed": seed, "arms": list(accs)}
    m.update({f"test/acc_{a}": v for a, v in accs.items()})
    m.update(extra or {})
    (d / "metrics.json").write_text(json.dumps(m))


def test_report_shows_every_arm_and_paired_differences(tmp_path):
    sweep = tmp_path / "sweep"
    runs = [  # (seed, real, finetune, synthetic) at n=8; at n=32 finetune is always +0.01
        (0, 0.90, 0.92, 0.70),
        (1, 0.80, 0.83, 0.71),
        (2, 0.85, 0.86, 0.69),
    ]
    job = 0
    for seed, r, f, s in runs:
        _pipeline_run(
            sweep / str(job),
            seed,
            8,
            {"real": r, "synthetic": s, "finetune": f},
            {"gan/fid": 10.0 + seed},
        )
        job += 1
        _pipeline_run(sweep / str(job), seed, 32, {"real": r, "synthetic": s, "finetune": r + 0.01})
        job += 1
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "rep"))
    md = (sweep / "report.md").read_text()
    assert "| dataset.n_per_class | real | synthetic | finetune |" in md
    # finetune - real at n=8: diffs .02 .03 .01 -> mean .02, sd .01, t(2) = 4.303: +-.0248
    assert (
        "| 8 | test/acc | finetune − real | +0.0200 | [-0.0048, +0.0448] | 0.0742 | 3 |"
        " no evidence |" in md
    )
    assert "synthetic − real" in md and "hurts" in md
    assert (
        "| 32 | test/acc | finetune − real | +0.0100 | [+0.0100, +0.0100] | 0 | 3 | helps |" in md
    )
    assert "- dataset.n_per_class=8: synthetic vs real: hurts" in md
    assert "## GAN quality" in md and "| 8 | 11 |" in md  # mean FID over seeds 10, 11, 12
    rep = json.loads((sweep / "report.json").read_text())
    g8 = rep["arms"]["groups"][0]
    assert g8["group"] == {"dataset.n_per_class": "8"}
    assert g8["arms"]["test/acc"]["finetune"]["by_seed"] == {"0": 0.92, "1": 0.83, "2": 0.86}
    assert (sweep / "plot_arms.png").stat().st_size > 5000


def test_paired_statistics_against_hand_computed_values():
    from xfergan.stats import mean_ci, paired, verdict

    m, lo, hi, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and hi - m == pytest.approx(4.302653 * 1 / 3**0.5, rel=1e-5)
    d = paired({0: 0.92, 1: 0.83, 2: 0.86}, {0: 0.90, 1: 0.80, 2: 0.85})
    assert d["mean"] == pytest.approx(0.02) and d["p"] == pytest.approx(0.0742, abs=5e-4)
    assert verdict(d["low"], d["high"]) == "no evidence"
    assert verdict(0.001, 0.02) == "helps" and verdict(-0.02, -0.001) == "hurts"
    assert paired({0: 1.0}, {1: 1.0})["n"] == 0
