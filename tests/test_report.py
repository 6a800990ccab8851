"""task=report on pipeline runs: every arm, paired differences by seed with CIs and verdicts."""

from __future__ import annotations

import json

import pytest
import yaml

from tasks import run_task
from tests.conftest import compose


def _pipeline_run(d, seed, n, accs: dict, extra=None, overrides=()):
    d.mkdir(parents=True)
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"dataset.n_per_class={n}", f"seed={seed}", *overrides])
    )
    m = {"task": "pipeline", "status": "ok", "seed": seed, "arms": list(accs)}
    for a, v in accs.items():  # what a comparison needs recorded: steps, real and test images
        m[f"test/acc_{a}"] = v
        m[f"steps_{a}"] = 600
        m[f"data/train_ids_sha256_{a}"] = f"subset-{seed}"
        m[f"data/test_ids_sha256_{a}"] = "test"
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
            {"val/gan_fid": 10.0 + seed},
        )
        job += 1
        _pipeline_run(sweep / str(job), seed, 32, {"real": r, "synthetic": s, "finetune": r + 0.01})
        job += 1
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "rep"))
    md = (sweep / "report.md").read_text()
    assert "| dataset.n_per_class | real | synthetic | finetune |" in md
    # finetune - real at n=8: diffs .02 .03 .01 -> mean .02, sd .01, t(2) = 4.303: +-.0248
    t = "t over seeds (no per-image predictions)"
    assert (
        "| 8 | test/acc | finetune − real | 600 vs 600 | +0.0200 | [-0.0048, +0.0448] | 0.0741 | 3 |"
        f" {t} | no evidence |" in md
    )
    assert "synthetic − real" in md and "hurts" in md
    # the same +0.01 at every seed: nothing is known about the spread, so no verdict (not p=0)
    assert (
        f"| 32 | test/acc | finetune − real | 600 vs 600 | +0.0100 | undefined | — | 3 | {t} |"
        in md
    )
    assert "undefined |" in md and "| 0 | 3 | helps |" not in md
    assert "## GAN quality" in md and "| 8 | 11 |" in md  # mean FID over seeds 10, 11, 12
    rep = json.loads((sweep / "report.json").read_text())
    g8 = rep["arms"]["groups"][0]
    assert g8["group"] == {"dataset.n_per_class": "8"}
    assert g8["arms"]["test/acc"]["finetune"]["by_seed"] == {"0": 0.92, "1": 0.83, "2": 0.86}
    assert (sweep / "plot_arms.png").stat().st_size > 5000


def test_markdown_tables_are_well_formed_without_group_columns(tmp_path):
    """Seeds only (pneumonia_gan): no grouping key, yet every table row has as many cells as
    its separator line (no empty first column that shifts the table)."""
    sweep = tmp_path / "sweep"
    for job, (r, b) in enumerate([(0.90, 0.92), (0.91, 0.94), (0.89, 0.90)]):
        _pipeline_run(sweep / str(job), job, 8, {"real": r, "real_balanced": b})
        ov = sweep / str(job) / ".hydra" / "overrides.yaml"
        ov.write_text(yaml.safe_dump([f"seed={job}"]))
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "rep"))
    lines = (sweep / "report.md").read_text().splitlines()
    seps = [i for i, ln in enumerate(lines) if ln.startswith("|---")]
    assert len(seps) >= 2
    for i in seps:
        width = lines[i].count("---|")
        for ln in lines[i - 1 : i] + [x for x in lines[i + 1 :] if x.startswith("| ")][:1]:
            assert ln.count(" | ") + 1 == width and not ln.startswith("|  |"), ln
    assert "| test/acc | real_balanced − real | 600 vs 600 | +0.0200 |" in "\n".join(lines)


def test_paired_statistics_against_hand_computed_values():
    from xfergan.stats import mean_ci, paired, verdict

    m, lo, hi, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and hi - m == pytest.approx(4.302653 * 1 / 3**0.5, rel=1e-5)
    d = paired({0: 0.92, 1: 0.83, 2: 0.86}, {0: 0.90, 1: 0.80, 2: 0.85})
    assert d["mean"] == pytest.approx(0.02) and d["p"] == pytest.approx(0.0742, abs=5e-4)
    assert verdict(d["low"], d["high"]) == "no evidence"
    assert verdict(0.001, 0.02) == "helps" and verdict(-0.02, -0.001) == "hurts"
    assert paired({0: 1.0}, {1: 1.0})["n"] == 0


def test_decision_threshold_is_chosen_on_val_and_keeps_auroc():
    import torch

    from xfergan.evaluation.metrics import at_threshold, balanced_acc_threshold, binary_metrics

    # val: positives at .3 .4 .9, negatives at .1 .2 .35 -> t=.3 gives recall 1, specificity 2/3
    # (balanced .833); t=.4: recall 2/3, specificity 1 (.833): the tie goes to .4 (nearer .5)
    p = torch.tensor([0.3, 0.4, 0.9, 0.1, 0.2, 0.35])
    y = torch.tensor([1, 1, 1, 0, 0, 0])
    t = balanced_acc_threshold(p, y)
    assert t == pytest.approx(0.4)
    q = at_threshold(p, t)
    assert ((q >= 0.5) == (p >= t)).all() and torch.equal(q.argsort(), p.argsort())
    a, b = binary_metrics(p, y, "x/"), binary_metrics(q, y, "x/")
    assert a["x/auroc"] == pytest.approx(b["x/auroc"])
    assert b["x/balanced_acc"] == pytest.approx(5 / 6)  # at t = .4
    assert a["x/balanced_acc"] == pytest.approx(2 / 3)  # at .5: only .9 is called positive


def test_a_pipeline_still_running_is_missing_not_its_stages(tmp_path):
    """A sweep reported while a pipeline job runs: its finished stages (their own metrics.json,
    a string `overrides`) are not runs of the report; the job counts as missing."""
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        _pipeline_run(sweep / str(seed), seed, 8, {"real": 0.9 + seed / 100, "synthetic": 0.7})
    running = sweep / "2"
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=2"]))
    (running / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"task": "pipeline"}))
    (running / "classify_real").mkdir()
    stage = {"task": "classify", "status": "ok", "test/acc": 0.5, "overrides": "seed=2"}
    (running / "classify_real" / "metrics.json").write_text(json.dumps(stage))
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "rep"))
    md = (sweep / "report.md").read_text()
    assert "2 runs (2 ok, 0 failed), 1 missing" in md


def test_seeds_added_later_in_a_nested_sweep_are_reported_and_recorded(tmp_path):
    """More seeds for a finished grid: a one-seed sweep with the same overrides, its sweep dir
    inside the grid's. task=report on the grid pairs all seeds; results/record.py copies every
    job's and stage's metrics.json and test predictions at any depth, nested files by their
    path (two stages' samples_final.png do not overwrite each other)."""
    import subprocess
    import sys

    import numpy as np

    from tests.conftest import ROOT

    sweep = tmp_path / "grid"
    for job, (seed, r, f) in enumerate([(0, 0.90, 0.92), (1, 0.80, 0.83)]):
        _pipeline_run(sweep / str(job), seed, 8, {"real": r, "finetune": f})
    _pipeline_run(sweep / "n8_seed2" / "0", 2, 8, {"real": 0.85, "finetune": 0.86})
    for stage_dir in (sweep / "0" / "classify_real", sweep / "n8_seed2" / "0" / "classify_real"):
        stage_dir.mkdir()
        (stage_dir / "metrics.json").write_text(json.dumps({"task": "classify", "status": "ok"}))
        np.savez(stage_dir / "test_predictions.npz", y=np.zeros(3))
        (stage_dir / "samples_final.png").write_bytes(str(stage_dir.relative_to(sweep)).encode())
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "rep"))
    g8 = json.loads((sweep / "report.json").read_text())["arms"]["groups"][0]
    assert g8["seeds"] == [0, 1, 2]
    dest = tmp_path / "recorded"
    files = ["report.md", "0/classify_real/samples_final.png"]
    files += ["n8_seed2/0/classify_real/samples_final.png"]
    cmd = [sys.executable, str(ROOT / "results" / "record.py"), "x", str(sweep)]
    cmd += ["--command", "c", "--dest", str(dest), "--files", *files]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = sorted(p.name for p in (dest / "jobs").iterdir())
    assert jobs == [
        "0.json",
        "0__classify_real.json",
        "1.json",
        "n8_seed2__0.json",
        "n8_seed2__0__classify_real.json",
    ]
    preds = sorted(p.name for p in (dest / "predictions").iterdir())
    assert preds == ["0__classify_real.npz", "n8_seed2__0__classify_real.npz"]
    for stage in ("0/classify_real", "n8_seed2/0/classify_real"):  # both, each its own
        flat = stage.replace("/", "__") + "__samples_final.png"
        assert (dest / flat).read_bytes() == stage.encode()
    assert json.loads((dest / "run.json").read_text())["jobs"] == 5
    # recorded again into the same folder from a run with less: nothing of the first stays
    # beside the new run.json (a hand-written README does), and a named file it lacks is said
    (dest / "README.md").write_text("notes")
    import shutil

    shutil.rmtree(sweep / "n8_seed2")
    cmd[cmd.index("--files") + 1 :] = ["report.md", "report.missing"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "not in" in r.stderr and "report.missing" in r.stderr
    run = json.loads((dest / "run.json").read_text())
    assert run["jobs"] == 3 and run["predictions"] == 1
    assert run["files_not_found"] == ["report.missing"]
    assert sorted(p.name for p in (dest / "jobs").iterdir()) == [
        "0.json",
        "0__classify_real.json",
        "1.json",
    ]
    assert not list(dest.glob("*samples_final.png")) and (dest / "README.md").read_text() == "notes"


def test_the_run_table_says_unknown_for_a_gan_number_not_known(tmp_path):
    """A GAN resumed from a checkpoint without its fit time has gan/train_s None: the pipeline's
    table3.md says unknown (it crashed formatting None after every stage had finished)."""
    from xfergan.evaluation.table3 import write_table3

    table = {"real": {"label": "real", "n_train_real": 8, "n_train_synthetic": 0, "test/acc": 0.9}}
    results = {"gan/steps": 1500, "gan/train_s": None, "val/gan_fid": 12.5}
    write_table3(tmp_path, "mnist", 8, 0, table, results)
    md = (tmp_path / "table3.md").read_text()
    assert "val/gan_fid 12.5" in md and "gan/steps 1500" in md and "gan/train_s unknown" in md


# ----------------------------------------------------------------- issue 27: what report says
def _report(sweep):
    """report.md, report.json's arms and its top-table rows, report.csv of a sweep dir."""
    from xfergan.evaluation.report_files import collect, write_report

    write_report(sweep, *collect(sweep))
    rep = json.loads((sweep / "report.json").read_text())
    return (sweep / "report.md").read_text(), rep, (sweep / "report.csv").read_text()


def _predictions(run_dir, arm, acc, label, damaged=False):
    """classify_<arm>/test_predictions.npz: wrong on the first (1 - acc) of the images."""
    import numpy as np

    stage = run_dir / f"classify_{arm}"
    stage.mkdir(exist_ok=True)
    pred = label.copy()
    wrong = round((1 - acc) * len(label))
    pred[:wrong] = 1 - pred[:wrong]
    if damaged:  # written by an older version, or cut short: no predictions in it
        np.savez(stage / "test_predictions.npz", label=label, test_ids_sha256="test")
    else:
        np.savez(stage / "test_predictions.npz", label=label, pred=pred, test_ids_sha256="test")


def test_every_comparison_states_its_method_and_names_seeds_without_predictions(tmp_path):
    """Point 3: a seed whose predictions are missing or damaged turns the comparison into a t
    over seeds; the primary table says so in a method column (its header no longer claims the
    bootstrap), the notes name the seed, arm and why; study_kappa says it cannot be
    bootstrapped. With every seed's predictions the bootstrap is used, and explained."""
    import numpy as np

    label = np.random.default_rng(0).integers(0, 2, 200)
    decl = {"primary": [["mixed", "real"]], "primary_metric": "test/acc"}
    accs = [(0.80, 0.84), (0.82, 0.85), (0.78, 0.83)]
    for sweep, holes in ((tmp_path / "holes", True), (tmp_path / "full", False)):
        for seed, (r, m) in enumerate(accs):
            d = sweep / str(seed)
            kappa = {
                "test/study_kappa_real": r - 0.3,
                "test/study_kappa_mixed": m - 0.2 - seed / 100,
            }
            _pipeline_run(d, seed, 8, {"real": r, "mixed": m}, {**decl, **kappa})
            if not (holes and seed == 1):  # seed 1: real has no predictions file
                _predictions(d, "real", r, label)
            _predictions(d, "mixed", m, label, damaged=holes and seed == 2)
        md, rep, _ = _report(sweep)
        by = {(d["metric"], d["arm"]): d for d in rep["arms"]["groups"][0]["paired"]}
        kappa = by["test/study_kappa", "mixed"]
        assert kappa["method"] == "t over seeds (test/study_kappa cannot be bootstrapped)"
        assert f"| {kappa['method']} |" in md
        acc = by["test/acc", "mixed"]
        assert f"| 3 | {acc['method']} | {acc['verdict']} |" in md  # the primary table's row
        if holes:
            assert acc["method"] == (
                "t over seeds (per-image predictions missing at some seeds: see the notes)"
            )
            assert "real: test_predictions.npz missing at seed 1" in acc["notes"]
            damaged = "mixed: test_predictions.npz damaged (KeyError: 'pred is not a file"
            assert any(n.startswith(damaged) and n.endswith("at seed 2") for n in acc["notes"])
            assert f"- all runs, mixed − real: {damaged}" in md
            assert "adds the test images' variance" not in md  # no bootstrap: none claimed
        else:
            assert acc["method"] == "t over seeds + bootstrap over test images"
            assert not acc["notes"] and "adds the test images' variance" in md


def test_a_duplicated_seed_is_left_out_of_the_top_table_as_in_the_arms(tmp_path):
    """Point 4: seed 0 run twice: the top table (report.md, .json, .csv) keeps the first run by
    dir and lists the other, as the arms section does: n=3, the same means in both."""
    sweep = tmp_path / "sweep"
    for seed, r in enumerate([0.80, 0.82, 0.78]):
        _pipeline_run(sweep / str(seed), seed, 8, {"real": r, "mixed": r + 0.02})
    _pipeline_run(sweep / "x_again", 0, 8, {"real": 0.50, "mixed": 0.50})
    md, rep, csv = _report(sweep)
    row, g = rep["rows"][0], rep["arms"]["groups"][0]
    assert row["n"] == 3 and row["seeds"] == g["seeds"] == [0, 1, 2]
    assert row["metrics"]["test/acc_real"][0] == pytest.approx(0.80)
    assert g["arms"]["test/acc"]["real"]["mean"] == pytest.approx(0.80)
    note = f"seed 0 has 2 runs: kept `{sweep / '0'}`, left out `{sweep / 'x_again'}`"
    assert row["notes"] == g["notes"] == [note]
    assert "| 3 |" in md.splitlines() and f"- all runs: {note}" in md
    assert csv.splitlines()[1].startswith("3,")


def test_every_declared_primary_counts_in_holms_family(tmp_path):
    """Point 6: three declared primaries, one with no values (synthetic), one with unequal
    steps (finetune): both are in the primary table with their reason and count as p = 1, so
    mixed's Holm p is 3 p (not p, as a family of one)."""
    sweep = tmp_path / "sweep"
    decl = {
        "primary": [["mixed", "real"], ["synthetic", "real"], ["finetune", "real"]],
        "primary_metric": "test/acc",
        "steps_finetune": 300,
    }
    for seed, (r, m) in enumerate([(0.80, 0.84), (0.82, 0.85), (0.78, 0.83)]):
        accs = {"real": r, "mixed": m, "synthetic": None, "finetune": r}
        _pipeline_run(sweep / str(seed), seed, 8, accs, decl)
    md, rep, _ = _report(sweep)
    a = rep["arms"]
    by = {d["arm"]: d for d in a["groups"][0]["paired"] if d["kind"] == "primary"}
    assert a["family_size"] == 3 and set(by) == {"mixed", "synthetic", "finetune"}
    assert by["mixed"]["p_holm"] == pytest.approx(min(1, 3 * by["mixed"]["p"]))
    assert "Holm-corrected over 3 comparisons" in md
    assert "| synthetic − real | 600 vs 600 |" in md
    assert "| not compared | not compared: no value of test/acc for arm synthetic |" in md
    assert "| finetune − real | 300 vs 600 |" in md
    assert "| not compared | not compared: unequal step budgets |" in md


def test_stages_of_two_versions_are_worded_alike_not_as_disagreeing_arms(tmp_path):
    """A pipeline resumed across versions: real's stage recorded its val class counts, the
    teacher's (reused) did not; both have 8 train + 80 val images: one budget, no 'disagree'."""
    sweep = tmp_path / "sweep"
    for seed in range(2):
        d = sweep / str(seed)
        _pipeline_run(d, seed, 8, {"real": 0.8 + seed / 100, "teacher": 0.85}, {"n_per_class": 8})
        for arm in ("real", "teacher"):
            (d / f"classify_{arm}").mkdir()
            st = {"class_names": list("abcdefghij"), "n_train_real": 80, "n_val": 80}
            if arm == "real":
                st["val_class_counts"] = [8] * 10
            (d / f"classify_{arm}" / "metrics.json").write_text(json.dumps(st))
    _, rep, _ = _report(sweep)
    assert rep["arms"]["groups"][0]["labelled"] == (
        "8 train per class + 80 val images (160 labelled images)"
    )


def test_a_holm_verdict_whose_simultaneous_interval_includes_zero_is_explained(tmp_path):
    """Two primaries: b − real far from 0, c − real with t = 3.0 over 5 seeds (p 0.0399): Holm's
    step-down p for c is its own p (< 0.05: helps) while its Bonferroni interval (level 97.5%)
    includes 0. report.md says why the verdict and the interval seem to disagree."""
    sweep = tmp_path / "sweep"
    decl = {"primary": [["b", "real"], ["c", "real"]], "primary_metric": "test/acc"}
    c_minus_real = [0.01, 0.02, 0.03, 0.00, 0.015]
    for seed, dc in enumerate(c_minus_real):
        r = 0.80 + seed / 100
        accs = {"real": r, "b": r + 0.10 + seed / 1000, "c": r + dc}
        _pipeline_run(sweep / str(seed), seed, 8, accs, decl)
    md, rep, _ = _report(sweep)
    c = next(d for d in rep["arms"]["groups"][0]["paired"] if d["arm"] == "c")
    assert c["p"] == pytest.approx(0.0399, abs=5e-4) and c["p_holm"] == pytest.approx(c["p"])
    assert c["verdict"] == "helps" and c["low_corrected"] < 0 < c["low"]
    assert "Holm's step-down test finds an effect where the simultaneous (Bonferroni) " in md
    note = md.split("interval still includes 0: ")[1].split(". The verdict")[0]
    assert note == "c − real"  # not b, whose interval excludes 0


def test_steps_or_image_ids_not_recorded_are_not_compared(tmp_path):
    """Point 7: synthetic's steps were not recorded, mixed's real-image ids not at seed 1: not
    compared, and said why. finetune shows its pre-training steps beside its own."""
    sweep = tmp_path / "sweep"
    for seed, (r, m) in enumerate([(0.80, 0.84), (0.82, 0.85), (0.78, 0.83)]):
        extra = {"steps_synthetic": None, "steps_pre_finetune": 600}
        if seed == 1:
            extra["data/train_ids_sha256_mixed"] = None
        accs = {"real": r, "mixed": m, "synthetic": r - 0.1, "finetune": m}
        _pipeline_run(sweep / str(seed), seed, 8, accs, extra)
    md, rep, _ = _report(sweep)
    by = {d["arm"]: d for d in rep["arms"]["groups"][0]["paired"] if d["metric"] == "test/acc"}
    assert by["synthetic"]["verdict"] == (
        "not compared: steps not recorded for arm synthetic at seeds 0, 1, 2"
    )
    assert by["mixed"]["verdict"] == (
        "not compared: real-image ids not recorded for arm mixed at seed 1"
    )
    assert by["synthetic"]["method"] == by["mixed"]["method"] == "not compared"
    assert by["finetune"]["budget"] == "600 + 600 pre-training vs 600"
    # its pre-training counts in the budget: 1,200 against 600 (not declared unequal here)
    assert by["finetune"]["verdict"] == "not compared: unequal step budgets"
    assert "| 600 | 600 | ? | 600 + 600 pre-training |" in md  # the steps table


def test_wandb_paired_table_says_kind_method_and_holm(tmp_path):
    """Point 9: report/paired carries kind, method, p_holm and the corrected interval next to
    each verdict (None where a comparison has none: an exploratory one's Holm p)."""
    import wandb

    from xfergan.evaluation.arms import PAIRED_COLUMNS, paired_rows
    from xfergan.tracking.wandb_backend import log_report

    sweep = tmp_path / "sweep"
    decl = {"primary": [["mixed", "real"]], "primary_metric": "test/acc"}
    for seed, (r, m) in enumerate([(0.80, 0.84), (0.82, 0.85), (0.78, 0.83)]):
        _pipeline_run(sweep / str(seed), seed, 8, {"real": r, "mixed": m, "synthetic": 0.7}, decl)
    _, rep, _ = _report(sweep)
    rows = [dict(zip(PAIRED_COLUMNS, r)) for r in paired_rows(rep["arms"])]
    want = {"kind", "method", "p_holm", "low_corrected", "high_corrected", "verdict"}
    assert want <= set(PAIRED_COLUMNS)
    prim = next(r for r in rows if r["kind"] == "primary")
    d = next(d for d in rep["arms"]["groups"][0]["paired"] if d["kind"] == "primary")
    assert prim["comparison"] == "mixed - real" and prim["p_holm"] == d["p_holm"]
    assert (prim["low_corrected"], prim["high_corrected"]) == (
        d["low_corrected"],
        d["high_corrected"],
    )
    assert prim["method"] == "t over seeds (no per-image predictions)"
    expl = next(r for r in rows if r["comparison"] == "synthetic - real")
    assert expl["kind"] == "exploratory" and expl["p_holm"] is None and expl["p"] is not None
    import csv

    with open(sweep / "report_paired.csv") as f:  # the same rows, for readers without us
        table = list(csv.DictReader(f))
    assert [r["comparison"] for r in table] == [r["comparison"] for r in rows]
    assert {r["method"] for r in table} == {r["method"] for r in rows}
    assert next(r for r in table if r["kind"] == "primary")["p_holm"] == str(d["p_holm"])

    logged = {}

    class Run:  # what log_report gives W&B
        def log(self, d):
            logged.update(d)

    log_report(Run(), rep, [])
    assert isinstance(logged["report/paired"], wandb.Table)
    assert logged["report/paired"].columns == PAIRED_COLUMNS


def test_the_labelled_budget_is_the_real_arms(tmp_path):
    """Point 11: a pipeline whose first arm is synthetic (no real image) states the real arm's
    budget, not '0 train'; an arm trained on another real budget is named."""
    sweep = tmp_path / "sweep"
    stages = {"synthetic": (0, 16), "real": (16, 16), "teacher": (8, 16)}
    for seed in range(2):
        d = sweep / str(seed)
        accs = {"synthetic": 0.7, "real": 0.8 + seed / 100, "teacher": 0.85}
        _pipeline_run(d, seed, 8, accs, {"n_per_class": 8})
        for arm, (tr, va) in stages.items():
            (d / f"classify_{arm}").mkdir()
            st = {"class_names": ["a", "b"], "n_train_real": tr, "n_val": va}
            st["val_class_counts"] = [va // 2, va // 2]
            (d / f"classify_{arm}" / "metrics.json").write_text(json.dumps(st))
    md, rep, _ = _report(sweep)
    assert rep["arms"]["groups"][0]["labelled"] == (
        "8 train + 8 val per class (32 labelled images) (real); arms disagree: "
        "teacher: 4 train + 8 val per class (24 labelled images)"
    )
    assert "labelled budget 8 train + 8 val per class (32 labelled images) (real)" in md


@pytest.mark.parametrize("counts", [[135, 389], None])
def test_a_val_split_not_drawn_per_class_is_not_called_per_class(tmp_path, counts):
    """PneumoniaMNIST's official val split (135 normal, 389 pneumonia) beside 20 labelled
    training images per class: the budget line said '262 val per class'; a stage that did not
    record its val class counts is not called per class either."""
    sweep = tmp_path / "sweep"
    for seed in range(2):
        d = sweep / str(seed)
        _pipeline_run(d, seed, 20, {"real": 0.8 + seed / 100}, {"n_per_class": 20})
        (d / "classify_real").mkdir()
        st = {"class_names": ["normal", "pneumonia"], "n_train_real": 40, "n_val": 524}
        if counts:
            st["val_class_counts"] = counts
        (d / "classify_real" / "metrics.json").write_text(json.dumps(st))
    _, rep, _ = _report(sweep)
    assert rep["arms"]["groups"][0]["labelled"] == (
        "20 train per class + 524 val images (564 labelled images)"
    )


def test_val_curves_keep_groups_apart_and_count_seeds_once(tmp_path):
    """report_curves.csv / plot_val_curves.png: runs that differ in a swept key besides n (here
    the unlabelled cap) are separate curves (before, grouped by n alone, they were averaged into
    one line), and a seed run twice counts once (the report's rule: the first by dir)."""
    from xfergan.evaluation.curves import training_curves, write_curves
    from xfergan.evaluation.report_files import collect, swept_keys

    sweep, job = tmp_path / "sweep", 0
    for n in (16, 4, 8):
        for cap in (100, 200):
            for seed in (0, 1, 1):  # seed 1 twice: a duplicate job
                d = sweep / str(job)
                _pipeline_run(d, seed, n, {"real": 0.5}, None, [f"dataset.unlabelled_cap={cap}"])
                (d / "classify_real" / "csv").mkdir(parents=True)
                val = cap / 1000 + (0.5 if job % 3 == 2 else 0.0)  # the duplicate is off
                (d / "classify_real" / "csv" / "metrics.csv").write_text(
                    f"step,val/acc\n10,{val}\n20,{val + 0.01}\n"
                )
                job += 1
    runs, missing = collect(sweep)
    keys = swept_keys(runs, missing)
    assert keys == ["dataset.n_per_class", "dataset.unlabelled_cap"]
    pts = training_curves(runs, keys)
    assert len(pts) == 3 * 2 * 2 * 2  # 3 n x 2 caps x 2 seeds (the duplicate left out) x 2 steps
    assert {p["val/acc"] for p in pts if p["dataset.unlabelled_cap"] == "100"} == {0.1, 0.11}
    assert write_curves(tmp_path, runs, keys).stat().st_size > 5000
    head = (tmp_path / "report_curves.csv").read_text().splitlines()[0]
    assert head == "dataset.n_per_class,dataset.unlabelled_cap,seed,arm,step,val/acc"


def test_the_unlabelled_pool_size_is_every_seeds(tmp_path):
    """A file dataset's pool can differ by seed (its val split does): the labelled-budget line
    gives the range over seeds, not the first seed's number as if every seed had it."""
    from xfergan.evaluation.arms import labelled_budget

    rs = []
    for seed, pool in ((0, 900), (1, 940)):
        d = tmp_path / str(seed)
        _pipeline_run(d, seed, 8, {"real": 0.9, "semi": 0.95})
        for arm in ("real", "semi"):
            st = {"n_train_real": 16, "n_val": 16, "class_names": ["a", "b"]}
            if arm == "semi":
                st |= {"n_unlabelled": pool, "semi/method": "fixmatch"}
            (d / f"classify_{arm}").mkdir()
            (d / f"classify_{arm}" / "metrics.json").write_text(json.dumps(st))
        rs.append({"_dir": str(d), "n_per_class": 8, "seed": seed})
    text = labelled_budget(rs, ["real", "semi"])
    assert text.endswith("plus 900 to 940 (by seed) unlabelled images (semi: labels never read)")


def test_pre_training_steps_count_in_the_equal_budget_check():
    """finetune at 600 own steps after 600 of synthetic pre-training was compared with real's
    600 as an equal budget (a verdict, no note, nothing declared). Its pre-training now counts:
    1,200 against 600 is not compared unless the experiment declares it unequal."""
    from xfergan.evaluation.arms import compare

    rs = [
        {
            "seed": s,
            "steps_real": 600,
            "steps_finetune": 600,
            "steps_pre_finetune": 600,
            **{
                f"data/{k}_ids_sha256_{a}": k
                for k in ("train", "test")
                for a in ("real", "finetune")
            },
        }
        for s in range(5)
    ]
    by_arm = {
        "real": {s: 0.80 + 0.01 * s for s in range(5)},
        "finetune": {s: 0.85 + 0.012 * s for s in range(5)},
    }
    d = compare(rs, "test/acc", "finetune", "real", by_arm, None, {}, set())
    assert d["verdict"] == "not compared: unequal step budgets", d
    d = compare(rs, "test/acc", "finetune", "real", by_arm, None, {}, {"finetune"})
    assert d["verdict"] != "not compared: unequal step budgets"
    assert any("600 + 600 pre-training vs 600" in n for n in d["notes"]), d["notes"]


def test_seeds_added_later_join_their_group_whatever_the_command_line_typed(tmp_path):
    """The report grouped runs by the override strings on their command lines: seeds added in
    a nested sweep that did not type dataset.n_per_class=8 (the default) or that typed
    logger=csv landed in groups of their own, and the declared primary was tested on 3 seeds
    in a Holm family of 2 instead of once on 5. Groups now follow each run's resolved value of
    every key any run typed (the Hydra config it saved), and never a setting that changes
    nothing computed (logger, devices, paths)."""
    from xfergan.evaluation.report_files import collect, write_report

    root = tmp_path / "sweep"
    acc = {0: (0.80, 0.83), 1: (0.82, 0.84), 2: (0.81, 0.85), 3: (0.79, 0.82), 4: (0.80, 0.84)}

    def job(d, seed, typed):
        extra = {"n_per_class": 8, "primary": [["mixed", "real"]], "primary_metric": "test/acc"}
        _pipeline_run(d, seed, 8, dict(zip(("real", "mixed"), acc[seed])), extra=extra)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", *typed]))
        cfg = {"seed": seed, "dataset": {"n_per_class": 8}, "trainer": {"devices": 1}}
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))

    for s in (0, 1, 2):
        job(root / str(s), s, ["dataset.n_per_class=8"])
    for j, s in enumerate((3, 4)):
        job(root / "more" / str(j), s, ["logger=csv", "trainer.devices=1"])
    runs, missing = collect(root)
    write_report(root, runs, missing)
    rep = json.loads((root / "report.json").read_text())
    groups = rep["arms"]["groups"]
    assert len(groups) == 1, [g["group"] for g in groups]
    (primary,) = [
        d for d in groups[0]["paired"] if d["metric"] == "test/acc" and d["kind"] == "primary"
    ]
    assert primary["n"] == 5 and "over 1 comparison" in (root / "report.md").read_text()


def test_undefined_spreads_dropped_seeds_and_damaged_files_are_said_never_zero(tmp_path):
    """Four gaps in what the report said: one seed's std printed as '± 0.0000' (and 0 in
    report.csv and the error bars); a mean over 2 of 3 seeds (one NaN) was printed under n=3
    with nothing said; a comparison dropped a seed where an arm was undefined or not run
    without a note; a metrics.json holding `[]` or non-UTF-8 bytes ended the report in a
    traceback, and pipelines with no arm metric crashed it after report.md was written."""
    from xfergan.evaluation.report_files import collect, write_report

    root = tmp_path / "sweep"
    vals = {0: (0.80, 0.85, 0.5), 1: (0.82, 0.86, 0.6), 2: (0.81, float("nan"), float("nan"))}
    for s, (r, y, k) in vals.items():
        _pipeline_run(root / str(s), s, 8, {"real": r, "synthetic": y}, {"test/kappa": k})
    _pipeline_run(root / "3", 3, 8, {"real": 0.79}, {"arms": ["real", "synthetic"]})
    _pipeline_run(root / "one", 0, 16, {"real": 0.9})  # one seed at n=16
    (root / "bad1").mkdir()
    (root / "bad1" / "metrics.json").write_text("[]")
    (root / "bad2").mkdir()
    (root / "bad2" / "metrics.json").write_bytes(b"\xff\xfe{")
    runs, missing = collect(root)
    assert sorted(m.get("error") for m in missing) == ["unreadable metrics.json"] * 2
    write_report(root, runs, missing)
    md = (root / "report.md").read_text()
    assert "± 0.0000" not in md and "0.9000 (n=1)" in md
    assert "0.5500 ± 0.0707 (n=2)" in md  # kappa: the mean of the 2 seeds that have it
    rep = json.loads((root / "report.json").read_text())
    g8 = next(g for g in rep["arms"]["groups"] if g["group"]["dataset.n_per_class"] == "8")
    (d,) = [d for d in g8["paired"] if d["metric"] == "test/acc" and d["arm"] == "synthetic"]
    assert d["n"] == 2
    assert "synthetic has no test/acc at seeds 2, 3 (undefined or not run): left out" in d["notes"]
    row16 = next(r for r in rep["rows"] if r["group"]["dataset.n_per_class"] == "16")
    assert row16["metrics"]["test/acc_real"][1] is None  # undefined (JSON null), not 0

    gan_only = tmp_path / "gan_only"
    for s in (0, 1):
        _pipeline_run(gan_only / str(s), s, 8, {}, {"arms": [], "val/gan_fid": 10.0 + s})
    runs, missing = collect(gan_only)
    write_report(gan_only, runs, missing)  # no traceback
    assert (gan_only / "report.json").is_file()


def test_each_group_is_judged_on_its_own_declarations(tmp_path):
    """Two experiments in one report: exp_b declared test/balanced_acc, on which mixed hurts, and
    no unequal budget; exp_a declared test/acc and finetune's longer budget. The first
    pipeline's metric judged every group (exp_b's primary "helps" on test/acc) and a budget
    declared anywhere was allowed everywhere."""
    sweep = tmp_path / "sweep"
    for s in range(5):
        e = s / 1000
        decl_a = {"primary": [["finetune", "real"]], "primary_metric": "test/acc"}
        decl_a.update(steps_finetune=2400, unequal_budgets=["finetune"])
        _pipeline_run(
            sweep / "a" / str(s),
            s,
            8,
            {"real": 0.90 + e, "finetune": 0.92 + 2 * e},
            decl_a,
            ["experiment=exp_a"],
        )
        decl_b = {"primary": [["mixed", "real"], ["finetune", "real"]]}
        decl_b.update(primary_metric="test/balanced_acc", steps_finetune=2400)
        decl_b.update({"test/balanced_acc_real": 0.85 + e, "test/balanced_acc_mixed": 0.80 + 2 * e})
        decl_b["test/balanced_acc_finetune"] = 0.9 + e
        _pipeline_run(
            sweep / "b" / str(s),
            s,
            8,
            {"real": 0.90 + e, "mixed": 0.93 + 2 * e, "finetune": 0.95 + e},
            decl_b,
            ["experiment=exp_b"],
        )
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "rep"))
    a = json.loads((sweep / "report.json").read_text())["arms"]
    prim = {
        (g["group"]["experiment"], d["arm"]): d
        for g in a["groups"]
        for d in g["paired"]
        if d["kind"] == "primary"
    }
    assert set(prim) == {("exp_a", "finetune"), ("exp_b", "mixed"), ("exp_b", "finetune")}
    assert prim["exp_b", "mixed"]["metric"] == "test/balanced_acc"
    assert prim["exp_b", "mixed"]["verdict"] == "hurts"
    assert prim["exp_b", "finetune"]["verdict"] == "not compared: unequal step budgets"
    assert prim["exp_a", "finetune"]["verdict"] == "helps"
    assert a["primary_metric"] is None and a["family_size"] == 3
    md = (sweep / "report.md").read_text()
    assert "## Primary comparisons (test/acc, test/balanced_acc;" in md
    assert "| exp_b | test/balanced_acc | mixed − real |" in md


def test_hydra_settings_never_split_a_group(tmp_path):
    """Seeds 0-2 ran with the report callback added on the command line (README's way), seeds
    3-4 were added later without it: two groups of 3 and 2 seeds, a Holm family of 2. Hydra's
    own settings change nothing a run computes: one group of 5."""
    sweep = tmp_path / "sweep"
    cb = "+hydra.callbacks.report._target_=tasks.report.ReportWhenDone"
    for s in range(5):
        ov = [cb] if s < 3 else ["hydra.job.chdir=false"]
        decl = {"primary": [["mixed", "real"]], "primary_metric": "test/acc"}
        _pipeline_run(sweep / str(s), s, 8, {"real": 0.9, "mixed": 0.91 + s / 100}, decl, ov)
    run_task(compose(["task=report", f"dir={sweep}", "logger=none"], tmp_path / "rep"))
    a = json.loads((sweep / "report.json").read_text())["arms"]
    assert len(a["groups"]) == 1 and a["groups"][0]["seeds"] == [0, 1, 2, 3, 4]
    assert a["family_size"] == 1


def test_printed_p_values_and_bounds_stay_on_their_side_of_the_threshold():
    """A Holm p of 0.049975 printed as 0.05 beside "helps"; a lower bound of +4.9e-06 printed
    as +0.0000. p is cut toward zero at three digits; a bound that would print as zero keeps
    its size."""
    from xfergan.evaluation.arms import _ci, _p

    assert _p(0.049975) == "0.0499" and _p(0.05) == "0.05" and _p(0.29) == "0.29"
    assert _p(1.0) == "1" and _p(0.12345) == "0.123" and _p(float("nan")) == "—"
    assert _ci(4.9e-06, 0.0284) == "[+4.90e-06, +0.0284]"
    assert _ci(-0.00004, 0.01) == "[-4.00e-05, +0.0100]" and _ci(0.0, 0.5) == "[+0.0000, +0.5000]"


@pytest.mark.parametrize(
    ("values", "ylim"), [({"a": 0.9, "b": 0.5}, (0, 1.05)), ({"a": 18.36}, None)]
)
def test_bar_charts_show_values_off_the_unit_scale(tmp_path, monkeypatch, values, ylim):
    """Every bar chart was drawn on [0, 1.05]: a FID of 18.36 ran off the axis."""
    from xfergan.evaluation import plots

    seen = {}
    monkeypatch.setattr(
        plots, "_save", lambda fig, path: seen.setdefault("y", fig.axes[0].get_ylim())
    )
    plots.bar_chart_png(values, tmp_path / "p.png", "t")
    if ylim:
        assert seen["y"] == pytest.approx(ylim)
    else:
        assert seen["y"][0] <= 0 and seen["y"][1] > 18.36
