"""Statistics for comparisons over seeds (scipy.stats and numpy): t intervals of a mean, paired
differences by seed, intervals that add the test images' variance (bootstrapped) to the seeds'
(a t over seeds), Holm's correction, and the one-word verdict a report prints.

Two sources of chance move a test metric: which few real images a seed drew (seed variance) and
which images happen to be in the test set (test-sample variance: 624 PneumoniaMNIST test images
give a ~1.1 pp binomial standard error per arm). `bootstrap_paired` adds both: the seeds'
variance from the per-seed differences (a t with n - 1 degrees of freedom: honest at 3-5 seeds)
and the test images' from resampling them with replacement, the same images for both arms and
every seed (the test set is shared: a crossed design). A difference with no spread at all is
"undefined", never p = 0."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

UNDEFINED = "undefined"


def mean_ci(xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n): Student-t interval; with one value the interval is undefined (nan)."""
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = sum(xs) / n
    if n == 1:
        return m, math.nan, math.nan, 1
    sd = std(xs)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half, n


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def paired(
    a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95
) -> dict[str, float | int | list]:
    """a - b over the seeds both have (seed variance only): mean, t interval, paired t-test
    p-value, n, seeds. No spread between the seeds' differences (or one seed) leaves the
    interval and p undefined (nan): nothing is known about how they vary."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    m, lo, hi, n = mean_ci(d, level)
    p = math.nan
    if n >= 2 and max(d) != min(d):
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    else:
        lo = hi = math.nan
    return {"mean": m, "low": lo, "high": hi, "p": p, "n": n, "seeds": seeds}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; an undefined
    (nan) p stays undefined and does not count in the family."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    out = [math.nan] * len(pvalues)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def verdict(low: float, high: float) -> str:
    """helps (interval above 0) / hurts (below 0) / no evidence (contains 0) / undefined."""
    if math.isnan(low) or math.isnan(high):
        return UNDEFINED
    if low > 0:
        return "helps"
    if high < 0:
        return "hurts"
    return "no evidence"


# ----------------------------------------------------------------------------- per-image metrics
def _confusion(code: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(code, weights=w, minlength=k * k).reshape(k, k)


# The metrics take one confusion matrix (k, k) or a stack of them (..., k, k): the bootstrap
# evaluates thousands of resamples at once.
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _acc(c: np.ndarray) -> np.ndarray:
    return _ratio(np.trace(c, axis1=-2, axis2=-1), c.sum((-2, -1)))


def _balanced_acc(c: np.ndarray) -> np.ndarray:
    rows = c.sum(-1)
    ok = rows > 0
    per = _ratio(np.diagonal(c, axis1=-2, axis2=-1), rows)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(-1), np.where(ok, per, 0).sum(-1) / ok.sum(-1), np.nan)


def _kappa(c: np.ndarray) -> np.ndarray:
    t = c.sum((-2, -1))
    po = _ratio(np.trace(c, axis1=-2, axis2=-1), t)
    pe = _ratio((c.sum(-2) * c.sum(-1)).sum(-1), t**2)
    return np.where(pe < 1, _ratio(po - pe, 1 - pe), np.nan)


CONFUSION_METRICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "test/acc": _acc,
    "test/balanced_acc": _balanced_acc,
    "test/kappa": _kappa,
}


class Predictions:
    """One arm's test predictions at one seed (test_predictions.npz): label, decided class and,
    for two classes, P(class 1). Metrics under per-image weights (bootstrap counts)."""

    def __init__(self, label: np.ndarray, pred: np.ndarray, score: np.ndarray | None = None):
        self.label = np.asarray(label, dtype=np.int64)
        self.pred = np.asarray(pred, dtype=np.int64)
        self.k = int(max(self.label.max(initial=0), self.pred.max(initial=0)) + 1)
        self.score = None if score is None else np.asarray(score, dtype=np.float64)
        if self.score is not None:
            _, self._bins = np.unique(self.score, return_inverse=True)
            self._nbins = int(self._bins.max(initial=-1) + 1)

    def code(self, k: int) -> np.ndarray:
        return self.label * k + self.pred

    def metric(self, name: str, w: np.ndarray | None = None, k: int | None = None) -> float:
        w = np.ones(len(self.label)) if w is None else w
        if name == "test/auroc":
            return self._auroc(w)
        k = k or self.k
        return float(CONFUSION_METRICS[name](_confusion(self.code(k), w, k)))

    def _auroc(self, w: np.ndarray) -> float:
        """Weighted Mann-Whitney AUROC (ties count one half)."""
        if self.score is None:
            return math.nan
        pos = self.label == 1
        wp = np.bincount(self._bins, weights=w * pos, minlength=self._nbins)
        wn = np.bincount(self._bins, weights=w * ~pos, minlength=self._nbins)
        return float(_auroc_counts(wp, wn))


def _auroc_counts(wp: np.ndarray, wn: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC from (weighted) positive and negative counts per score bin, in score
    order (..., bins); ties count one half; nan without both classes."""
    tp, tn = wp.sum(-1), wn.sum(-1)
    below = np.cumsum(wn, -1) - wn  # negatives strictly below each score
    return _ratio((wp * (below + 0.5 * wn)).sum(-1), tp * tn)


BOOTSTRAP_METRICS = (*CONFUSION_METRICS, "test/auroc")


def bootstrap_table(
    arms: Mapping[str, Mapping[int, Predictions]],
    metric: str,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, np.ndarray]]]:
    """Every arm's metric at every seed on the full test set, and on `n_boot` resamples of the
    test images (the same resamples for every arm and seed): ({arm: {seed: value}},
    {arm: {seed: [n_boot values]}}). Arms must share one test set (same labels)."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    first = next(iter(p for by_seed in arms.values() for p in by_seed.values()))
    n = len(first.label)
    k = max(p.k for by_seed in arms.values() for p in by_seed.values())
    full = {a: {s: p.metric(metric, k=k) for s, p in bs.items()} for a, bs in arms.items()}
    reps = {a: {s: np.empty(n_boot) for s in bs} for a, bs in arms.items()}

    def columns(p: Predictions) -> sparse.csr_matrix:
        """images x cells: the confusion cell (or, for AUROC, the score bin and class) of each."""
        if metric == "test/auroc":
            if p.score is None:
                return None
            col, width = p._bins * 2 + (p.label == 1), 2 * max(p._nbins, 1)
        else:
            col, width = p.code(k), k * k
        return sparse.csr_matrix((np.ones(n), (np.arange(n), col)), shape=(n, width))

    cells = {(a, s): columns(p) for a, bs in arms.items() for s, p in bs.items()}
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))  # resamples at once (~16 MB of weights)
    for b0 in range(0, n_boot, chunk):
        rows = range(b0, min(n_boot, b0 + chunk))
        w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in rows]).astype(
            np.float64
        )  # the resamples' image counts, drawn in the same order as one at a time
        for (a, s), m in cells.items():
            if m is None:
                reps[a][s][rows.start : rows.stop] = math.nan
                continue
            c = np.asarray((m.T @ w.T).T)  # (resamples, cells): weighted counts, exact
            if metric == "test/auroc":
                reps[a][s][rows.start : rows.stop] = _auroc_counts(c[:, 1::2], c[:, 0::2])
            else:
                reps[a][s][rows.start : rows.stop] = CONFUSION_METRICS[metric](c.reshape(-1, k, k))
    return full, reps


def bootstrap_paired(
    full_a: Mapping[int, float],
    full_b: Mapping[int, float],
    reps_a: Mapping[int, np.ndarray],
    reps_b: Mapping[int, np.ndarray],
    seeds: Sequence[int],
    level: float = 0.95,
) -> dict:
    """a - b, the mean over `seeds`, with both sources of chance in its standard error:
        se^2 = s_d^2 / n  (seed variance: the per-seed differences on the full test set)
             + var_b(mean over seeds of the replicate differences)  (test images: the same
               resample for every seed and arm, bootstrap_table)
    and a Student-t interval and p-value with n - 1 degrees of freedom. A bootstrap over only a
    few seeds would understate their spread (by (n - 1) / n, with normal tails); the t over
    seeds does not. Fewer than two seeds, or no spread at all, leave the interval and p
    undefined (nan)."""
    seeds = list(seeds)
    n = len(seeds)
    nan = math.nan
    out = {"mean": nan, "low": nan, "high": nan, "p": nan, "n": n, "se": nan, "df": n - 1}
    if n == 0:
        return out
    d = np.array([full_a[s] - full_b[s] for s in seeds], dtype=np.float64)
    out["mean"] = float(d.mean())
    if n < 2:
        return out
    rep = np.mean([reps_a[s] - reps_b[s] for s in seeds], axis=0)
    rep = rep[np.isfinite(rep)]
    var_test = float(np.var(rep, ddof=1)) if len(rep) > 1 else 0.0
    var_seed = float(np.var(d, ddof=1)) / n
    out["se_seed"], out["se_test"] = math.sqrt(var_seed), math.sqrt(var_test)
    se = math.sqrt(var_seed + var_test)
    if not se > 0:
        return out
    out["se"] = se
    out["low"], out["high"] = t_interval(out["mean"], se, n - 1, level)
    out["p"] = float(2 * stats.t.sf(abs(out["mean"]) / se, n - 1))
    return out


def t_interval(mean: float, se: float, df: int, level: float) -> tuple[float, float]:
    """mean -/+ t(df) quantile x se at `level` (e.g. 1 - 0.05 / m for Bonferroni)."""
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return mean - half, mean + half
