"""Issue 30, point 2: every arm's worth in real labelled images per class (the exchange rate):
the statistic (xfergan/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
