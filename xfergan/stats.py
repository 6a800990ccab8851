"""Statistics for comparisons over seeds (scipy.stats): t confidence intervals of a mean, paired
differences by seed with a paired t-test, and the one-word verdict a report prints."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scipy import stats


def mean_ci(xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n): Student-t interval; with one value the interval is undefined (nan)."""
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = sum(xs) / n
    if n == 1:
        return m, math.nan, math.nan, 1
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half, n


def paired(
    a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95
) -> dict[str, float | int | list]:
    """a - b over the seeds both have: mean, t interval, paired t-test p-value, n, seeds."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    m, lo, hi, n = mean_ci(d, level)
    p = math.nan
    if n >= 2:
        if max(d) == min(d):  # no spread: the t statistic is undefined
            p = 1.0 if d[0] == 0 else 0.0
        else:
            p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return {"mean": m, "low": lo, "high": hi, "p": p, "n": n, "seeds": seeds}


def verdict(low: float, high: float) -> str:
    """helps (interval above 0) / hurts (below 0) / no evidence (contains 0, or undefined)."""
    if math.isnan(low) or math.isnan(high):
        return "no evidence"
    if low > 0:
        return "helps"
    if high < 0:
        return "hurts"
    return "no evidence"
