"""Issue 30, point 2: every arm's worth in real labelled images per class (the exchange rate):
the statistic (xfergan/stats.py) and what task=report writes from it."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from tasks import run_task
from tests.conftest import compose
from tests.test_report import _pipeline_run
from xfergan.stats import _pava, exchange_rate, exchange_text, isotonic

NS = (4, 8, 16, 32, 64)


def _line(n: float) -> float:
    """A known curve: 0.5 + 0.1 log2 n (0.7 at n = 4, 1.1 at 64)."""
    return 0.5 + 0.1 * math.log2(n)


def test_a_value_on_a_log_linear_curve_is_worth_its_exact_n():
    curves = {s: {n: _line(n) for n in NS} for s in range(3)}
    d = exchange_rate(curves, {s: _line(9.1) for s in range(3)})
    assert d["point"] == pytest.approx(9.1, rel=1e-9) and d["point_censored"] is None
    assert d["anchors"] == [4, 8, 16, 32, 64] and d["n_seeds"] == 3
    # every seed the same: every resample the same, the interval is the point
    assert d["low"] == pytest.approx(9.1) and d["high"] == pytest.approx(9.1)
    assert all(v["rate"] == pytest.approx(9.1) for v in d["by_seed"].values())
    assert exchange_text(d) == "9.1 [9.1, 9.1]"
    # at an anchor exactly: that n (the real arm at its own n is worth its n)
    assert exchange_rate(curves, {s: _line(32) for s in range(3)})["point"] == pytest.approx(32)


def test_values_outside_the_curve_are_censored_never_extrapolated():
    curves = {s: {n: _line(n) for n in NS} for s in range(3)}
    below = exchange_rate(curves, {0: 0.60, 1: 0.65, 2: 0.69})  # under 0.7 at n = 4
    assert (below["point"], below["point_censored"]) == (4.0, "below 4")
    assert (below["low"], below["low_censored"]) == (4, "below 4")
    assert (below["high"], below["high_censored"]) == (4, "below 4")
    assert {v["censored"] for v in below["by_seed"].values()} == {"below 4"}
    assert exchange_text(below) == "below 4 [below 4, below 4]"
    # one seed over the top (1.2 > 1.1 at n = 64): the mean 1.05 is on the curve, n = 2^5.5
    above = exchange_rate(curves, {0: 1.2, 1: 1.0, 2: 0.95})
    assert above["point"] == pytest.approx(2**5.5) and above["point_censored"] is None
    assert above["by_seed"][0] == {"rate": 64.0, "censored": "above 64"}
    assert above["by_seed"][1]["rate"] == pytest.approx(32)
    assert above["high"] == 64.0 and above["high_censored"] == "above 64"
    assert above["low"] < above["point"] and above["low_censored"] is None


def test_a_non_monotone_curve_is_fitted_isotonic_before_it_is_read():
    """0.65 at n = 16 under 0.70 at n = 8: pooled to 0.675 at both; a value of 0.7 is then
    between 16 (0.675) and 32 (0.8), 1/5 of the way in log n (raw, it would be n = 8)."""
    curve = {4: 0.6, 8: 0.7, 16: 0.65, 32: 0.8, 64: 0.9}
    d = exchange_rate({0: curve, 1: curve}, {0: 0.7, 1: 0.7})
    assert d["curve_fit"] == pytest.approx([0.6, 0.675, 0.675, 0.8, 0.9])
    assert d["curve"] == pytest.approx([0.6, 0.7, 0.65, 0.8, 0.9])
    assert d["point"] == pytest.approx(2**4.2)
    # on the flat stretch: its smallest n
    assert exchange_rate({0: curve}, {0: 0.675})["point"] == pytest.approx(8)
    # our pool-adjacent-violators (older scipy) agrees with scipy's
    y = np.random.default_rng(0).normal(size=40)
    assert _pava(y) == pytest.approx(isotonic(y))
    assert isotonic([0.6, 0.7, 0.65, 0.8, 0.9]) == pytest.approx(curve_fit := d["curve_fit"])
    assert _pava(np.array([0.6, 0.7, 0.65, 0.8, 0.9])) == pytest.approx(curve_fit)


def _noisy(k=8, worth=12.0, seed=1):
    rng = np.random.default_rng(seed)
    off = rng.normal(0, 0.03, k)
    curves = {s: {n: _line(n) + off[s] + rng.normal(0, 0.01) for n in NS} for s in range(k)}
    values = {s: _line(worth) + off[s] + rng.normal(0, 0.03) for s in range(k)}
    return curves, values


def test_the_bootstrap_interval_holds_the_point_and_is_reproducible():
    curves, values = _noisy()
    d = exchange_rate(curves, values)
    assert d["n_boot"] >= 2000 and d["level"] == 0.95
    assert d["low"] < d["point"] < d["high"]
    assert 8 < d["point"] < 18 and d["high"] - d["low"] > 1
    again = exchange_rate(curves, values)
    assert (again["low"], again["point"], again["high"]) == (d["low"], d["point"], d["high"])
    other = exchange_rate(curves, values, seed=1)  # another RNG: another (near) interval
    assert (other["low"], other["high"]) != (d["low"], d["high"])
    assert other["low"] == pytest.approx(d["low"], rel=0.1)


def test_seeds_are_paired_and_bad_input_is_one_line():
    curves, values = _noisy(k=4)
    del values[3]
    curves[9] = curves[0]  # a curve without an arm value
    del curves[2][64]  # a seed without the whole curve
    d = exchange_rate(curves, values)
    assert d["seeds"] == [0, 1] and d["left_out"] == [2] and d["n_seeds"] == 2
    with pytest.raises(ValueError, match="at least 2 n_per_class anchors"):
        exchange_rate({0: {8: 0.7}}, {0: 0.7})
    with pytest.raises(ValueError, match="must be positive"):
        exchange_rate({0: {0: 0.6, 8: 0.7}}, {0: 0.7})
    with pytest.raises(ValueError, match="no seed has both") as e:
        exchange_rate({0: {4: 0.6, 8: 0.7}}, {1: 0.7})
    assert "\n" not in str(e.value)
    one = exchange_rate({0: {4: 0.6, 8: 0.7}}, {0: 0.65})  # one seed: no interval
    assert one["point"] == pytest.approx(2**2.5) and math.isnan(one["low"])
    assert exchange_text(one) == "5.66"


def test_the_real_arm_read_off_its_own_curve_is_worth_its_n_at_either_end():
    """The seed-mean curve and the seed-mean value are means of the same numbers summed in
    another order (numpy sums 8 or more in pairs): they differed in the last bit, and the real
    arm at the curve's first or last n read "below 4" / "above 64" about 1 time in 6 at 20
    seeds. Now equal up to 1e-9 means equal."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        y = np.stack([rng.integers(lo, lo + 500, 20) for lo in (8000, 9000, 9500)], 1) / 1e4
        curves = {s: {n: float(y[s, j]) for j, n in enumerate((4, 8, 16))} for s in range(20)}
        for j, n in enumerate((4, 8, 16)):
            d = exchange_rate(curves, {s: float(y[s, j]) for s in range(20)}, n_boot=50)
            assert (d["point"], d["point_censored"]) == (n, None), (n, d["curve"], d["value"])
            assert all(v == {"rate": n, "censored": None} for v in d["by_seed"].values())


def test_one_seeds_extra_n_leaves_no_other_seed_out():
    """Four seeds ran the real arm at n = 4 and 8, seed 0 also at 16: every other seed was left
    out (the anchors were every n any seed ran). The curve is now the n run by more than half
    of the seeds; the extra n is named as left out of it."""
    curves = {s: {4: 0.6 + 0.01 * s, 8: 0.7 + 0.01 * s} for s in range(4)}
    curves[0][16] = 0.8
    d = exchange_rate(curves, {s: 0.65 + 0.01 * s for s in range(4)}, n_boot=100)
    assert d["seeds"] == [0, 1, 2, 3] and d["left_out"] == [] and d["n_seeds"] == 4
    assert d["anchors"] == [4, 8] and d["anchors_dropped"] == [16]
    assert d["point"] == pytest.approx(2**2.5) and not math.isnan(d["low"])
    # the majority's n stays: one seed without n = 16 of three is the one left out
    three = {s: {4: 0.6, 8: 0.7, 16: 0.8} for s in range(3)}
    del three[2][16]
    d = exchange_rate(three, {s: 0.65 for s in range(3)}, n_boot=100)
    assert d["anchors"] == [4, 8, 16] and d["left_out"] == [2] and d["anchors_dropped"] == []


# ----------------------------------------------------------------------- through task=report
PRIMARY = [["distill_gan", "real"], ["synthetic", "real"], ["mixed", "real"]]
PRIMARY += [["distill_gan", "distill_real"]]
DELTA = (-0.02, -0.01, 0.0, 0.01, 0.02)  # each seed's offset of the real curve (sum 0)
NOISE = (0.01, -0.01, 0.02, -0.02, 0.0)  # the arms' own seed noise (sum 0)


def _acc(n: float) -> float:
    return 0.4 + 0.08 * math.log2(n)  # 0.56 at n = 4 ... 0.88 at 64


def _job(d, seed, n, accs, overrides=(), extra=None):
    """A pipeline job dir as a sweep writes it (tests/test_report.py's), with its overrides."""
    meta = {"primary_metric": "test/acc", "n_per_class": n, **(extra or {})}
    _pipeline_run(d, seed, n, accs, meta, overrides)


def _main(sweep, overrides=()):
    """Every arm at n = 8, seeds 200-204, the primaries declared: distill_gan at 0.4 + 0.08
    log2 12 (worth 12), distill_real at 0.70 (worth 2^3.75), synthetic 0.50 (below 4), mixed
    0.95 (above 64)."""
    for j, s in enumerate(range(200, 205)):
        e = NOISE[j]
        accs = {
            "real": _acc(8) + DELTA[j],
            "synthetic": 0.50 + e,
            "mixed": 0.95 + e,
            "distill_real": 0.70 + NOISE[-1 - j],  # not a constant away from distill_gan
            "distill_gan": _acc(12) + e,
        }
        _job(sweep / str(j), s, 8, accs, overrides, extra={"primary": PRIMARY})


def _curve(sweep, ns=(4, 16, 32, 64), offset=0.0):
    """`real` alone at n = 4, 16, 32, 64, the same seeds, nothing declared, no teacher (as
    README's curve command runs it: these choose arms, not how `real` trains)."""
    job = 0
    for n in ns:
        for j, s in enumerate(range(200, 205)):
            ov = [
                "pipeline.arms=[real]",
                "pipeline.primary=[]",
                "pipeline.teacher_ensemble=[]",
                "pipeline.unequal_budgets=[]",
            ]
            real = _acc(n) + DELTA[j] + offset
            _job(sweep / str(job), s, n, {"real": real}, ov, {"primary": []})
            job += 1


def _reported_study(tmp_path):
    """main/ beside curve/ under one parent, and main/ alone, each reported: (parent, alone)."""
    parent, alone = tmp_path / "study", tmp_path / "alone"
    _main(parent / "main")
    _curve(parent / "curve")
    _main(alone / "main")
    for d in (parent, alone):
        run_task(compose(["task=report", f"dir={d}", "logger=none"], tmp_path / "rep"))
    return parent, alone


def test_curve_only_n_values_leave_holms_family_alone(tmp_path):
    """The curve's groups (`real` alone, pipeline.primary=[]) declare nothing: the primaries are
    main/'s 4 at n = 8 with the same Holm p as main/ reported alone (before, each of the 4
    curve n added 4 "not compared" primaries, p = 1: a family of 20)."""
    parent, alone = _reported_study(tmp_path)
    md = (parent / "report.md").read_text()
    rep = json.loads((parent / "report.json").read_text())
    a, b = rep["arms"], json.loads((alone / "report.json").read_text())["arms"]
    prim = [d for g in a["groups"] for d in g["paired"] if d["kind"] == "primary"]
    want = [d for g in b["groups"] for d in g["paired"] if d["kind"] == "primary"]
    assert a["family_size"] == b["family_size"] == len(prim) == 4
    assert [(d["arm"], d["baseline"]) for d in prim] == [(d["arm"], d["baseline"]) for d in want]
    assert [d["p_holm"] for d in prim] == pytest.approx([d["p_holm"] for d in want])
    assert all(math.isfinite(d["p_holm"]) for d in prim)
    assert "Holm-corrected over 4 comparisons" in md and "| not compared |" not in md
    # the curve's groups compare nothing (only real ran there)
    assert all(not g["paired"] for g in a["groups"] if g["group"]["dataset.n_per_class"] != "8")


def test_the_report_says_what_each_arm_is_worth_in_real_images(tmp_path):
    """main/ (every arm at n = 8, primaries declared) beside curve/ (`real` at 4, 16, 32, 64,
    pipeline.primary=[]), reported on their parent: exchange rates in report.json, .md, .csv
    and a plot, `real` itself worth its own n = 8; main/ alone (no curve) has none."""
    parent, alone = _reported_study(tmp_path)
    rep = json.loads((parent / "report.json").read_text())
    x = rep["exchange_rates"]
    assert x["metric"] == "test/acc" and x["n_boot"] >= 2000
    (c,) = x["compared"]
    assert c["n"] == 8 and c["group"]["dataset.n_per_class"] == "8"
    assert x["curves"][c["curve"]]["anchors"] == [4, 8, 16, 32, 64]
    r = c["arms"]
    assert set(r) == {"real", "synthetic", "mixed", "distill_real", "distill_gan"}
    assert r["real"]["point"] == pytest.approx(8) and r["real"]["point_censored"] is None
    assert r["distill_gan"]["point"] == pytest.approx(12)
    assert r["distill_gan"]["low"] < 12 < r["distill_gan"]["high"]
    assert r["distill_gan"]["n_seeds"] == 5 and r["distill_gan"]["anchors"] == [4, 8, 16, 32, 64]
    assert r["distill_real"]["point"] == pytest.approx(2**3.75)
    assert (r["synthetic"]["point"], r["synthetic"]["point_censored"]) == (4, "below 4")
    assert (r["mixed"]["point"], r["mixed"]["point_censored"]) == (64, "above 64")
    assert r["mixed"]["by_seed"]["200"] == {"rate": 64, "censored": "above 64"}

    md = (parent / "report.md").read_text()
    # the top table in n order (it sorted as text: 16, 32, 4, 64, 8)
    top = md.split("Grouped by:")[1].split("\n\n")[1].splitlines()[2:]
    assert [r.split("|")[1].strip() for r in top] == ["4", "8", "16", "32", "64"]
    assert "## Worth in real labelled images per class (test/acc)" in md
    assert "isotonic fit" in md and "percentile bootstrap over seeds" in md
    dg = r["distill_gan"]
    text = f"12 [{dg['low']:.3g}, {dg['high']:.3g}]"
    assert f"| distill_gan | {_acc(12):.4f} | {text} | 5 | none |" in md
    assert "| synthetic | 0.5000 | below 4 [below 4, below 4] | 5 | 5 below 4 |" in md
    assert "| mixed | 0.9500 | above 64 [above 64, above 64] | 5 | 5 above 64 |" in md
    assert "| real | 0.6400 | 8 [8, 8] | 5 | none |" in md
    assert (parent / "plot_exchange_rates.png").stat().st_size > 5000
    with open(parent / "report.csv") as f:
        rows = list(csv.DictReader(f))
    ex = {row["arm"]: row for row in rows if row["kind"] == "exchange_rate"}
    assert set(ex) == set(r) and {row["kind"] for row in rows} == {"aggregate", "exchange_rate"}
    assert float(ex["distill_gan"]["exchange_rate"]) == pytest.approx(12, rel=1e-5)
    assert ex["distill_gan"]["n"] == "5" and ex["synthetic"]["exchange_rate_censored"] == "below 4"
    assert ex["distill_gan"]["dataset.n_per_class"] == "8"

    # main/ alone has no curve: no exchange rates, report.csv as before
    assert json.loads((alone / "report.json").read_text())["exchange_rates"] == {}
    assert "kind" not in (alone / "report.csv").read_text().splitlines()[0].split(",")
    assert not (alone / "plot_exchange_rates.png").exists()


def _report(d, tmp_path):
    run_task(compose(["task=report", f"dir={d}", "logger=none"], tmp_path / "rep"))
    return json.loads((d / "report.json").read_text())["exchange_rates"], (
        d / "report.md"
    ).read_text()


def test_settings_of_other_arms_do_not_cut_the_curve_off(tmp_path):
    """main/ swept over two unlabelled-pool caps (which only the semi-supervised arms read) beside
    a curve run without a cap: both compared groups are read off the one curve (before, the cap
    split every group from the curve and the section vanished without a word)."""
    study = tmp_path / "study"
    _main(study / "cap1k", ["dataset.unlabelled_cap=1000"])
    _main(study / "cap2k", ["dataset.unlabelled_cap=2000"])
    _curve(study / "curve")
    x, md = _report(study, tmp_path)
    assert len(x["compared"]) == 2 and len(x["curves"]) == 1
    assert {c["group"]["dataset.unlabelled_cap"] for c in x["compared"]} == {"1000", "2000"}
    for c in x["compared"]:
        assert c["arms"]["distill_gan"]["point"] == pytest.approx(12)
    # both compared groups ran `real` at n = 8: the curve counts one, and says so
    assert "`real` ran more than once at n=8 for seeds 200, 201, 202, 203, 204" in md


def test_a_compared_group_without_its_curve_is_said_not_dropped(tmp_path):
    """main/ at a learning rate the curve's `real` runs did not use: no rate can be read (the
    curve is another training), and report.md says which group and which key differs."""
    study = tmp_path / "study"
    _main(study / "main", ["model.optimizer.lr=0.01"])
    _curve(study / "curve")
    x, md = _report(study, tmp_path)
    assert x["compared"] == [] and len(x["unmatched"]) == 1
    assert "## Worth in real labelled images per class (test/acc)" in md
    assert "no exchange rate for " in md and "model.optimizer.lr=0.01" in md
    assert "(the curve's runs differ in model.optimizer.lr)" in md
    assert not (study / "plot_exchange_rates.png").exists()


def test_real_twice_at_the_compared_n_uses_the_paired_run(tmp_path):
    """The curve sweep also ran n = 8 (0.03 higher than main/'s paired `real`): the curve at n = 8
    is main/'s run, so `real` is worth exactly its own 8 and distill_gan 12 (before, the
    curve-only run overwrote it, last by dir), and the note names the duplicate."""
    study = tmp_path / "study"
    _main(study / "main")
    _curve(study / "curve", ns=(4, 8, 16, 32, 64), offset=0.03)
    x, md = _report(study, tmp_path)
    (c,) = x["compared"]
    assert x["curves"][0]["by_seed"]["200"]["8"] == pytest.approx(_acc(8) + DELTA[0])
    assert c["arms"]["real"]["point"] == pytest.approx(8)
    assert "`real` ran more than once at n=8 for seeds 200, 201, 202, 203, 204" in md


def test_a_rewritten_report_leaves_no_earlier_plot_behind(tmp_path):
    """Reported with the curve, then again after the curve's runs were removed: no exchange
    rates, and no plot_exchange_rates.png from the first report beside the new report.md (its
    PNGs also go to W&B); a user's own file in the dir stays."""
    parent, _ = _reported_study(tmp_path)
    assert (parent / "plot_exchange_rates.png").is_file()
    (parent / "notes.txt").write_text("mine")
    shutil.rmtree(parent / "curve")
    x, md = _report(parent, tmp_path)
    assert x == {} and "Worth in real labelled images" not in md
    assert not (parent / "plot_exchange_rates.png").exists()
    assert (parent / "plot_arms.png").is_file() and (parent / "report_paired.csv").is_file()
    assert (parent / "notes.txt").read_text() == "mine"


def test_a_curve_run_on_a_few_of_the_seeds_is_read_on_those_seeds():
    """Ten seeds compared at n = 8, the curve (4 ... 64) run on four of them: every n but 8 was
    dropped as "run by half of the seeds or fewer" and no rate was computed. Only seeds that ran
    a curve vote for its n now: it is read on the four seeds with the whole curve."""
    curves = {s: {8: 0.7} for s in range(10)}
    for s in range(4):
        curves[s] = {n: 0.4 + 0.08 * math.log2(n) for n in (4, 8, 16, 32, 64)}
    d = exchange_rate(curves, {s: 0.4 + 0.08 * math.log2(12) for s in range(10)}, n_boot=100)
    assert d["anchors"] == [4, 8, 16, 32, 64] and d["seeds"] == [0, 1, 2, 3]
    assert d["left_out"] == list(range(4, 10)) and d["anchors_dropped"] == []
    assert d["point"] == pytest.approx(12)


def test_an_arm_is_worth_real_images_only_where_the_report_compares_it_with_real(tmp_path):
    """An arm at 2,400 steps against `real`'s 600 (not declared unequal) is "not compared" in
    the arms section, and an arm trained on other real images is paired with no seed; yet both
    were given a rate off the curve (worth 16 [15.8, 16.2]). Their rates now say why they are
    not computed; a declared unequal budget gives a rate with the comparison's note."""
    sweep = tmp_path / "study"
    for j, s in enumerate(range(200, 205)):
        accs = {"real": _acc(8) + DELTA[j], "longer": _acc(16), "elsewhere": _acc(16)}
        accs["declared"] = _acc(16)
        extra = {
            "primary": [],
            "steps_longer": 2400,
            "steps_declared": 2400,
            "unequal_budgets": ["declared"],
            "data/train_ids_sha256_elsewhere": f"other-{s}",
        }
        _job(sweep / "main" / str(j), s, 8, accs, ["experiment=x"], extra)
    _curve(sweep / "curve", offset=0.0)
    for d in (sweep / "curve").iterdir():  # the curve in the same experiment
        ov = d / ".hydra" / "overrides.yaml"
        ov.write_text(ov.read_text() + "- experiment=x\n")
    x, md = _report(sweep, tmp_path)
    (c,) = x["compared"]
    r = c["arms"]
    assert r["longer"] == {"not_computed": "unequal step budgets (against real)"}
    assert "not_computed" in r["elsewhere"] and "no seed" in r["elsewhere"]["not_computed"]
    assert r["declared"]["point"] == pytest.approx(16, rel=1e-3)
    assert any("allowed by pipeline.unequal_budgets" in n for n in r["declared"]["notes"])
    assert "longer at n=8: not computed: unequal step budgets (against real)" in md
    with open(sweep / "report.csv") as f:  # every key filled, those all pipelines share too
        ex = [row for row in csv.DictReader(f) if row["kind"] == "exchange_rate"]
    assert {row["arm"] for row in ex} == {"real", "declared"}
    assert {row["experiment"] for row in ex} == {"x"}
