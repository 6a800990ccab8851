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


# ------------------------------------------------------------------------------ exchange rate
# "arm A at n = 8 is worth 9.1 [8.3, 10.2] real labelled images per class": the n at which the
# `real` arm's accuracy curve reaches A's accuracy. The curve is made monotone (isotonic fit) and
# read linearly in log n between the n it ran at; outside them it is censored, never
# extrapolated.
def isotonic(y: Sequence[float]) -> np.ndarray:
    """The non-decreasing least-squares fit to y (equal weights): scipy's isotonic_regression
    (scipy >= 1.12), else pool adjacent violators."""
    y = np.asarray(y, dtype=np.float64)
    try:
        from scipy.optimize import isotonic_regression
    except ImportError:
        return _pava(y)
    return np.asarray(isotonic_regression(y, increasing=True).x, dtype=np.float64)


def _pava(y: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: merge neighbouring blocks while a block's mean exceeds the
    next one's."""
    means, sizes = [], []
    for v in np.asarray(y, dtype=np.float64):
        means.append(float(v))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            n = sizes[-2] + sizes[-1]
            means[-2] = (means[-2] * sizes[-2] + means[-1] * sizes[-1]) / n
            sizes[-2] = n
            del means[-1], sizes[-1]
    return np.repeat(means, sizes)


# Two means of the same numbers summed in another order differ in their last bits (numpy sums 8
# or more in pairs): the real arm read off its own curve must land on its n, not be censored.
# Metrics here are fractions of a test set (steps of 1e-4 and coarser): 1e-9 is far below them.
_SAME = 1e-9


def invert_curve(log_n: np.ndarray, fit: np.ndarray, value: float) -> float:
    """log n at which a non-decreasing curve (fit at log_n, ascending) first reaches `value`,
    linear between anchors (on a flat stretch: its smallest n); -inf below the curve's first
    value, +inf above its last (censored: the caller says "below"/"above", never extrapolates).
    Values within _SAME of an anchor's are that anchor's."""
    if value - fit[0] < -_SAME:
        return -math.inf
    if value - fit[-1] > _SAME:
        return math.inf
    j = int(np.argmax(fit >= value - _SAME))  # the first anchor that reaches it
    if j == 0 or abs(fit[j] - value) <= _SAME:
        return float(log_n[j])
    t = (value - fit[j - 1]) / (fit[j] - fit[j - 1])
    return float(log_n[j - 1] + t * (log_n[j] - log_n[j - 1]))


def _censored(x: float, anchors: Sequence[float]) -> tuple[float, str | None]:
    """A log2 n from invert_curve -> (n, None), or (the range end, "below 4" / "above 64")."""
    if x == -math.inf:
        return float(anchors[0]), f"below {anchors[0]:g}"
    if x == math.inf:
        return float(anchors[-1]), f"above {anchors[-1]:g}"
    return float(2.0**x), None


def curve_anchors(have: Sequence[set]) -> list[float]:
    """The curve's n, given the n each paired seed ran: those run by more than half of the seeds
    that ran a curve (two n or more; a seed run only at the compared n does not vote). So one
    seed's extra n leaves out that n, one seed's missing n leaves out that seed, and a curve run
    on a few of the seeds is read on those seeds."""
    voters = [h for h in have if len(h) >= 2] or list(have)
    every_n = sorted(set().union(*voters)) if voters else []
    return [n for n in every_n if 2 * sum(n in h for h in voters) > len(voters)]


def exchange_rate(
    curves: Mapping[int, Mapping[float, float]],
    values: Mapping[int, float],
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """What an arm's metric is worth in real labelled images per class.

    curves: seed -> {n_per_class: the `real` arm's metric}; values: seed -> the arm's metric at
    the compared n. Paired by seed: only seeds in both count. The anchors: curve_anchors (the
    others, `anchors_dropped`, are not read); seeds without every anchor are listed in
    `left_out`.
    Point: the seed-mean curve, made monotone (isotonic), inverted at the seed-mean value
    (linear in log n; a flat stretch gives its smallest n). Interval: percentile bootstrap over
    seeds (`n_boot` resamples of the seeds with replacement, curve and value together, RNG
    `seed`), the resampled rates' quantiles taken as observed values ('inverted_cdf') so that a
    censored resample stays censored. A rate outside the curve's n is its range end with
    `*_censored` "below 4" / "above 64" (else None). Also each seed's own rate (`by_seed`).
    Fewer than two seeds leave the interval undefined (nan)."""
    if not 0 < level < 1:
        raise ValueError(f"exchange_rate: level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"exchange_rate: n_boot must be at least 1, got {n_boot}")
    paired_seeds = sorted(set(curves) & set(values))
    if not paired_seeds:
        raise ValueError(
            "exchange_rate: no seed has both a real curve and an arm value "
            f"(curve seeds {sorted(curves)}, arm seeds {sorted(values)})"
        )
    have = [{float(n) for n in curves[s]} for s in paired_seeds]
    every_n = sorted(set().union(*have))
    anchors = curve_anchors(have)
    dropped = [n for n in every_n if n not in anchors]
    if len(anchors) < 2:
        raise ValueError(
            f"exchange_rate: the real curve needs at least 2 n_per_class anchors, got {anchors}"
        )
    if anchors[0] <= 0 or not all(math.isfinite(n) for n in anchors):
        raise ValueError(f"exchange_rate: n_per_class anchors must be positive, got {anchors}")
    seeds = [s for s, h in zip(paired_seeds, have) if h >= set(anchors)]
    left_out = [s for s in paired_seeds if s not in seeds]
    if not seeds:
        raise ValueError(
            f"exchange_rate: no seed has the real arm at every anchor n {anchors} "
            f"(seeds {paired_seeds})"
        )
    by_n = [{float(n): v for n, v in curves[s].items()} for s in seeds]
    y = np.array([[float(c[a]) for a in anchors] for c in by_n])
    v = np.array([float(values[s]) for s in seeds])
    if not (np.isfinite(y).all() and np.isfinite(v).all()):
        raise ValueError("exchange_rate: a curve or arm value is not a finite number")
    log_n = np.log2(anchors)

    def rate(curve: np.ndarray, value: float) -> float:
        return invert_curve(log_n, isotonic(curve), value)

    mean_curve = y.mean(0)
    point = rate(mean_curve, float(v.mean()))
    by_seed = {s: _censored(rate(y[i], v[i]), anchors) for i, s in enumerate(seeds)}
    lo = hi = math.nan
    lo_c = hi_c = None
    if len(seeds) >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(seeds), (n_boot, len(seeds)))
        reps = np.array([rate(y[i].mean(0), float(v[i].mean())) for i in idx])
        q = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
        (lo, lo_c), (hi, hi_c) = _censored(q[0], anchors), _censored(q[1], anchors)
    pt, pt_c = _censored(point, anchors)
    return {
        "point": pt,
        "point_censored": pt_c,
        "low": lo,
        "low_censored": lo_c,
        "high": hi,
        "high_censored": hi_c,
        "value": float(v.mean()),
        "anchors": anchors,
        "curve": mean_curve.tolist(),
        "curve_fit": isotonic(mean_curve).tolist(),
        "n_seeds": len(seeds),
        "seeds": seeds,
        "left_out": left_out,
        "anchors_dropped": dropped,
        "by_seed": {s: {"rate": r, "censored": c} for s, (r, c) in by_seed.items()},
        "level": level,
        "n_boot": n_boot,
        "boot_seed": seed,
    }


def exchange_text(d: Mapping) -> str:
    """'9.1 [8.3, 10.2]', 'below 4 [below 4, 5.2]', or '9.1' with no interval."""

    def one(x: float, censored: str | None) -> str:
        return censored or f"{x:.3g}"

    text = one(d["point"], d["point_censored"])
    if not math.isfinite(d["low"]):
        return text
    return f"{text} [{one(d['low'], d['low_censored'])}, {one(d['high'], d['high_censored'])}]"
