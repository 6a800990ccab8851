"""Pipeline arms compared across seeds: what task=report says about "does arm A beat arm B?".

Input: the pipeline runs' metrics.json (plain dicts, with `_dir` and `_overrides`) and, next to
each, its stages' test_predictions.npz. Output: a plain dict (report.json's `arms`) and the
markdown lines of report.md. Rules (the rules of evidence, made mechanical):
  - one run per seed and group: duplicates are left out and listed, never averaged in (the same
    rule, `one_per_seed`, for report.md's top table);
  - pairs by seed: a seed counts in a comparison only when both arms trained on the same real
    images (data/train_ids_sha256) and were tested on the same test images;
  - equal budgets: arms whose optimizer steps differ are not compared, unless the pipeline
    declared the arm in `pipeline.unequal_budgets` (then both budgets are shown);
  - unknown is not equal: a comparison whose steps or image ids were not recorded (for an arm
    at a seed it would use) is not compared, and says which;
  - intervals include the test sample: a t over seeds whose standard error adds the test
    images' bootstrap variance, where per-image predictions exist for every seed of both arms;
    otherwise a seed-only t, its method saying so and its notes naming each seed and arm
    without usable predictions (missing, damaged, other test images);
  - the comparisons the pipeline declared primary (`pipeline.primary`, judged on
    `pipeline.primary_metric`) are corrected together (Holm across the whole report, with
    Bonferroni simultaneous intervals), every declared one counting in the family (one not
    compared or undefined as p = 1) in each group whose runs declared it (a group of runs that
    declared none, e.g. `real` alone at more n_per_class for the exchange rate, adds none);
    every other comparison is exploratory;
  - an undefined number (null, NaN) is a missing value, counted and shown.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from xfergan import stats
from xfergan.errors import first_line

# the arms' numbers a pipeline run carries as <metric>_<arm>
ARM_METRICS = ("test/acc", "test/balanced_acc", "test/auroc", "test/kappa", "test/study_kappa")
# exploratory comparisons beyond "every arm vs real": (arm, baseline)
EXTRA_PAIRS = (("distill_gan", "distill_real"), ("distill_gan", "teacher"))
PREDICTIONS = "test_predictions.npz"
# what a comparison checks at every seed it uses; not recorded: not compared
RECORDED = (
    ("steps", "steps_{}"),
    ("real-image ids", "data/train_ids_sha256_{}"),
    ("test-image ids", "data/test_ids_sha256_{}"),
)
LEVEL = 0.95
N_BOOT = 2000


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def num_key(v: str):
    """Sort key: numbers by value (4 before 16), then the rest as text."""
    try:
        return (0, float(v))
    except (TypeError, ValueError):
        return (1, str(v))


def _load_predictions(run: dict, arm: str) -> tuple[Any, str | None]:
    """(an arm's per-image test predictions at a run's seed, None) or (None, why there are
    none: "missing", or "damaged (<the error's first line>)")."""
    import numpy as np

    f = Path(run["_dir"]) / f"classify_{arm}" / PREDICTIONS
    if not f.is_file():
        return None, "missing"
    try:
        z = np.load(f)
        p = stats.Predictions(z["label"], z["pred"], z["score"] if "score" in z else None)
        p.test_ids = str(z["test_ids_sha256"]) if "test_ids_sha256" in z else None
        return p, None
    except Exception as e:  # noqa: BLE001 - a damaged file: that seed is named, not a crash
        first = first_line(e, default="")
        return None, f"damaged ({type(e).__name__}: {first})" if first else "damaged"


def _stage(run: dict, arm: str) -> dict:
    from xfergan.io import read_json

    f = Path(run["_dir"]) / f"classify_{arm}" / "metrics.json"
    try:
        return read_json(f) if f.is_file() else {}
    except Exception:  # noqa: BLE001
        return {}


def report_groups(runs: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    """The report's groups: its finished runs by their values of the swept keys ("" unset)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        if r.get("status") == "ok":
            groups[tuple(r["_overrides"].get(k, "") for k in keys)].append(r)
    return groups


def one_per_seed(rs: list[dict]) -> tuple[list[dict], list[str]]:
    """The first run (by dir) of every seed (and task) in a group; a note for each one left out.
    The one rule for duplicates: the top table of report.md and the arms section both use it."""
    by_seed: dict[tuple, list[dict]] = defaultdict(list)
    for r in sorted(rs, key=lambda r: r["_dir"]):
        by_seed[r.get("seed"), str(r.get("task"))].append(r)
    kept, notes = [], []
    for (s, _), group in sorted(by_seed.items(), key=lambda kv: (num_key(kv[0][0]), kv[0][1])):
        kept.append(group[0])
        for extra in group[1:]:
            notes.append(
                f"seed {s} has {len(group)} runs: kept `{group[0]['_dir']}`, left out "
                f"`{extra['_dir']}`"
            )
    return kept, notes


def same_test_set(preds: dict, unusable: dict) -> dict:
    """The per-image predictions that share the first one's test set (same ids digest, same
    labels in the same order); the others are left out and said so in `unusable` (arm -> seed
    -> why; their seeds fall back to a t)."""
    import numpy as np

    ref = next((p for ps in preds.values() for p in ps.values() if p is not None), None)
    out: dict = {}
    for a, ps in preds.items():
        for s, p in ps.items():
            if p is None:
                continue
            if p.test_ids != ref.test_ids or not np.array_equal(p.label, ref.label):
                unusable.setdefault(a, {})[s] = "on other test images than the first arm's"
                continue
            out.setdefault(a, {})[s] = p
    return out


def _labelled(run: dict, arm: str, counted: bool = True) -> str | None:
    """'8 train + 8 val per class (160 labelled images)' from an arm's stage metrics ('20 train
    per class + 524 val images' when val is not the same number per class, or a stage did not
    record its val class counts, or `counted` is False); None when the arm trained on no real
    image (or did not record it)."""
    st = _stage(run, arm)
    k = len(st.get("class_names") or [])
    tr, va = st.get("n_train_real"), st.get("n_val")
    if not k or not tr or va is None:
        return None
    if run.get("n_per_class") is None or tr % k:
        return f"{tr} train + {va} val images ({tr + va} labelled; not per class)"
    counts = st.get("val_class_counts")  # val per class only where it was (PneumoniaMNIST's
    if counted and isinstance(counts, list) and len(set(counts)) == 1:  # official val is not)
        return f"{tr // k} train + {va // k} val per class ({tr + va} labelled images)"
    return f"{tr // k} train per class + {va} val images ({tr + va} labelled images)"


def labelled_budget(rs: list[dict], arms: list[str]) -> str | None:
    """The labelled budget of the `real` arm, else of the first arm that trained on real images;
    arms that trained on another real budget are named after it."""
    if not rs:
        return None
    trained = [a for a in arms if _labelled(rs[0], a, False)]  # on real images
    # a pipeline resumed across versions: stages that did not record their val class counts
    # beside ones that did are all worded without them (not "arms disagree")
    counted = all("val_class_counts" in _stage(rs[0], a) for a in trained)
    by_arm = {a: _labelled(rs[0], a, counted) for a in trained}
    if not by_arm:
        return None
    main = "real" if "real" in by_arm else next(iter(by_arm))
    other = [f"{a}: {b}" for a, b in by_arm.items() if b != by_arm[main]]
    text = (
        by_arm[main]
        if not other
        else f"{by_arm[main]} ({main}); arms disagree: " + "; ".join(other)
    )
    pools = {}  # semi-supervised arms: the unlabelled images they learned from besides (every
    for a in arms:  # seed's: a file dataset's pool can differ by seed, with its val split)
        ns = sorted({int(n) for r in rs if (n := _stage(r, a).get("n_unlabelled"))})
        if ns:
            size = f"{ns[0]:,}" if len(ns) == 1 else f"{ns[0]:,} to {ns[-1]:,} (by seed)"
            pools.setdefault(size, []).append(a)
    for size, names in pools.items():
        text += f"; plus {size} unlabelled images ({', '.join(names)}: labels never read)"
    return text


def semi_arms(rs: list[dict], arms: list[str]) -> list[str]:
    """The arms whose stages learned from the unlabelled pool (recorded semi/method)."""
    return [a for a in arms if any(_stage(r, a).get("semi/method") for r in rs)]


def _budget(rs: list[dict], arm: str) -> set:
    return {r.get(f"steps_{arm}") for r in rs if r.get(f"steps_{arm}") is not None}


def _total_budget(rs: list[dict], arm: str) -> set:
    """An arm's optimizer steps per run with its pre-training's (finetune: its own + the
    synthetic pre-training it starts from): what an equal-budget comparison compares."""
    return {
        r[f"steps_{arm}"] + (r.get(f"steps_pre_{arm}") or 0)
        for r in rs
        if r.get(f"steps_{arm}") is not None
    }


def _steps(own: list, pre: list) -> str:
    """An arm's optimizer steps over the runs ('600', '300/600' when they differ, '?' when not
    recorded), its pre-training steps added (finetune: '600 + 600 pre-training')."""
    text = "/".join(map(str, own)) or "?"
    return f"{text} + {'/'.join(map(str, pre))} pre-training" if pre else text


def _seeds(xs: list) -> str:
    return ("seed " if len(xs) == 1 else "seeds ") + ", ".join(map(str, xs))


def _unknown(rs: list[dict], a: str, b: str, seeds: list) -> list[str]:
    """Why a and b cannot be checked as an equal-budget true pair at `seeds`: steps or image ids
    not recorded (unknown is never taken for equal)."""
    at = [r for r in rs if r.get("seed") in seeds]
    out = []
    for what, key in RECORDED:
        by_arm = {x: [r.get("seed") for r in at if r.get(key.format(x)) is None] for x in (a, b)}
        if by_arm[a] == by_arm[b] and by_arm[a]:
            out.append(f"{what} not recorded for arms {a} and {b} at {_seeds(by_arm[a])}")
            continue
        out += [f"{what} not recorded for arm {x} at {_seeds(s)}" for x, s in by_arm.items() if s]
    return out


def _pairable(rs: list[dict], a: str, b: str) -> tuple[list, list[str]]:
    """Seeds at which a and b are a true pair (same real subset, same test set)."""
    seeds, notes = [], []
    for r in rs:
        s = r.get("seed")
        ta, tb = r.get(f"data/train_ids_sha256_{a}"), r.get(f"data/train_ids_sha256_{b}")
        xa, xb = r.get(f"data/test_ids_sha256_{a}"), r.get(f"data/test_ids_sha256_{b}")
        if ta is not None and tb is not None and ta != tb:
            notes.append(f"seed {s}: {a} and {b} trained on different real images")
            continue
        if xa is not None and xb is not None and xa != xb:
            notes.append(f"seed {s}: {a} and {b} were tested on different images")
            continue
        seeds.append(s)
    return seeds, notes


def comparisons(pipes: list[dict], arms: list[str]) -> tuple[list[tuple], set[tuple]]:
    """(every comparison in order, the primary ones)."""
    primary: set[tuple] = set()
    for r in pipes:
        primary |= {tuple(p) for p in r.get("primary") or [] if len(p) == 2}
    out = sorted(primary)  # a declared one with an unknown arm is shown as undefined
    if "real" in arms:
        out += [(a, "real") for a in arms if a != "real"]
    out += [(a, b) for a, b in EXTRA_PAIRS if a in arms and b in arms]
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq, primary


def arm_analysis(runs: list[dict], keys: list[str], n_boot: int = N_BOOT) -> dict:
    pipes = [r for r in runs if r.get("status") == "ok" and r.get("task") == "pipeline"]
    if not pipes:
        return {}
    arms: list[str] = []
    for r in pipes:
        arms += [a for a in r.get("arms") or [] if a not in arms]
    keys = [k for k in keys if len({r["_overrides"].get(k, "") for r in pipes}) > 1]
    groups = report_groups(pipes, keys)
    metrics = [m for m in ARM_METRICS if any(f"{m}_{a}" in r for r in pipes for a in arms)]
    # each group is judged on its own declarations (a report may hold several experiments)
    declared_metrics = list(
        dict.fromkeys(r["primary_metric"] for r in pipes if r.get("primary_metric"))
    )
    primary_metric = declared_metrics[0] if len(declared_metrics) == 1 else None
    unequal = {a for r in pipes for a in r.get("unequal_budgets") or []}
    _, primary = comparisons(pipes, arms)  # every pair declared anywhere: report.json's list
    out: dict = {
        "keys": keys,
        "arms": arms,
        "metrics": metrics,
        "groups": [],
        "primary": [list(p) for p in sorted(primary)],
        "primary_metric": primary_metric,  # None when groups declared different ones
        "primary_metrics": declared_metrics,
        "unequal_budgets": sorted(unequal),
        "semi_arms": semi_arms(pipes, arms),
        "level": LEVEL,
    }
    family = []  # the primary comparisons, corrected together
    for gkey, rs in sorted(groups.items(), key=lambda kv: [num_key(v) for v in kv[0]]):
        rs, notes = one_per_seed(rs)
        # a group's primaries are the ones its own runs declared: a group where only `real` ran
        # (an anchor of the exchange-rate curve, pipeline.primary=[]) adds nothing to the family
        pairs, declared = comparisons(rs, arms)
        g_metric = next((r["primary_metric"] for r in rs if r.get("primary_metric")), None)
        g_unequal = {a for r in rs for a in r.get("unequal_budgets") or []}
        g: dict = {
            "group": dict(zip(keys, gkey)),
            "seeds": [r.get("seed") for r in rs],
            "notes": notes,
            "arms": {},
            "paired": [],
            "gan": {},
            "primary_metric": g_metric,
            "unequal_budgets": sorted(g_unequal),
            "steps": {a: sorted(_budget(rs, a)) for a in arms},
            "steps_pre": {a: sorted(_budget(rs, f"pre_{a}")) for a in arms},  # finetune's
            "labelled": labelled_budget(rs, arms),
            "n_per_class": sorted({r["n_per_class"] for r in rs if r.get("n_per_class")}, key=str),
            "foreign": {  # a list of reasons per stage (one string in older runs)
                f"seed {r.get('seed')}: {stage}": why if isinstance(why, str) else "; ".join(why)
                for r in rs
                for stage, why in (r.get("foreign") or {}).items()
            },
        }
        loaded = {a: {r.get("seed"): _load_predictions(r, a) for r in rs} for a in arms}
        preds = {a: {s: p for s, (p, _) in ps.items()} for a, ps in loaded.items()}
        unusable = {a: {s: why for s, (_, why) in ps.items() if why} for a, ps in loaded.items()}
        have = same_test_set(preds, unusable)
        # every declared primary is judged (and counted in the family), even on a metric no arm
        # recorded
        judged = metrics + [g_metric] * bool(declared and g_metric not in [None, *metrics])
        for m in judged:
            by_arm, missing = {}, {}
            for a in arms:
                vals = {r.get("seed"): r.get(f"{m}_{a}") for r in rs if f"{m}_{a}" in r}
                by_arm[a] = {s: float(v) for s, v in vals.items() if _finite(v)}
                missing[a] = sorted(s for s, v in vals.items() if not _finite(v))
            g["arms"][m] = {
                a: {
                    **dict(zip(("mean", "low", "high", "n"), stats.mean_ci(list(v.values())))),
                    "by_seed": v,
                    "missing_seeds": missing[a],
                }
                for a, v in by_arm.items()
                if v or missing[a]
            }
            boot = None
            if m in stats.BOOTSTRAP_METRICS and have:
                boot = stats.bootstrap_table(have, m, n_boot=n_boot)
            for a, b in pairs:
                kind = "primary" if (a, b) in declared and m == g_metric else "exploratory"
                if kind == "exploratory" and not (
                    (by_arm.get(a) or missing.get(a)) and (by_arm.get(b) or missing.get(b))
                ):
                    continue  # an arm never run here: nothing declared, nothing to show
                d = compare(rs, m, a, b, by_arm, boot, unusable, g_unequal)
                d["kind"] = kind
                g["paired"].append(d)
                if kind == "primary":
                    family.append(d)  # compared or not: the family is what was declared
        g["gan"] = gan_quality(rs)
        out["groups"].append(g)
    correct(family)
    for g in out["groups"]:
        for d in g["paired"]:
            d.pop("_se", None)
            d.pop("_df", None)
    out["family_size"] = len(family)
    return out


GAN_KEYS = (
    "val/gan_fid",
    "val/gan_kid",
    "val/gan_precision",
    "val/gan_recall",
    "val/gan_recall_per_class_min",
    "val/gan_memorization_ratio",
    "val/gan_n_real",
    "val/gan_n_fake",
    "test/gan_fid",
    "test/gan_precision",
    "test/gan_recall",
    "gan/steps",
    "gan/wall_s",
    "gan/train_s",
)


def gan_quality(rs: list[dict]) -> dict[str, dict]:
    """GAN stage (gan, gan_<variant>) -> its quality keys (mean, CI over the seeds): FID ... on
    the val images, the steps it trained, the smallest per-class share the teacher kept."""
    gans: dict[str, str] = {}
    for r in rs:  # GAN stage -> the suffix of its keys (older runs: the one gan)
        for stage, sfx in (r.get("gans") or {"gan": ""}).items():
            gans.setdefault(stage, sfx)
    variants = [sfx for sfx in gans.values() if sfx]
    out: dict[str, dict] = {}
    for stage, sfx in gans.items():
        kept = [
            k
            for k in rs[0]
            if k.startswith("distill/kept_fraction_min")
            and (k.endswith(sfx) if sfx else not any(k.endswith(v) for v in variants))
        ]
        row = {}
        for k in GAN_KEYS + tuple(k.removesuffix(sfx) if sfx else k for k in kept):
            vals = [float(r[k + sfx]) for r in rs if _finite(r.get(k + sfx))]
            if not vals and k.startswith("test/gan_"):  # older runs: gan/fid ... on test images
                vals = [float(r[o]) for r in rs if _finite(r.get(o := "gan/" + k[9:]))]
            if vals:
                row[k] = stats.mean_ci(vals)
        if row:
            out[stage] = row
    return out


BOOTSTRAP = "t over seeds + bootstrap over test images"
NOT_COMPARED = "not compared"


def _without_predictions(a: str, b: str, seeds: list, unusable: dict) -> list[str]:
    """A note per arm and reason for the seeds of a comparison without usable predictions."""
    out = []
    for x in (a, b):
        by_why: dict[str, list] = defaultdict(list)
        for s in seeds:
            if s in unusable.get(x, {}):
                by_why[unusable[x][s]].append(s)
        out += [f"{x}: {PREDICTIONS} {why} at {_seeds(ss)}" for why, ss in by_why.items()]
    return out


def compare(rs, m, a, b, by_arm, boot, unusable, unequal) -> dict:
    """One paired comparison a - b at metric m in a group: its method says how it was judged
    ("not compared" with the reason in its verdict when it cannot be judged)."""
    a_vals, b_vals = by_arm.get(a) or {}, by_arm.get(b) or {}
    budget = " vs ".join(
        _steps(sorted(_budget(rs, x)), sorted(_budget(rs, f"pre_{x}"))) for x in (a, b)
    )
    d: dict = {"metric": m, "arm": a, "baseline": b, "budget": budget, "notes": []}
    nan = math.nan
    d.update(mean=nan, low=nan, high=nan, p=nan, n=0, method=NOT_COMPARED)
    if not a_vals or not b_vals:
        d["verdict"] = f"not compared: no value of {m} for arm {a if not a_vals else b}"
        return d
    seeds, d["notes"] = _pairable(rs, a, b)
    seeds = [s for s in seeds if s in a_vals and s in b_vals]
    every = sorted({r.get("seed") for r in rs}, key=str)
    for x, vals in ((a, a_vals), (b, b_vals)):  # never a seed dropped without a word
        if lack := [s for s in every if s not in vals]:
            d["notes"].append(f"{x} has no {m} at {_seeds(lack)} (undefined or not run): left out")
    d["n"], d["seeds"] = len(seeds), seeds
    if unknown := _unknown(rs, a, b, seeds):
        d["verdict"] = "not compared: " + "; ".join(unknown)
        return d
    sa, sb = _total_budget(rs, a), _total_budget(rs, b)
    if bool(sa and sb and sa != sb) or len(sa) > 1 or len(sb) > 1:
        if a not in unequal and b not in unequal:
            d["verdict"] = "not compared: unequal step budgets"
            return d
        d["notes"].append(f"unequal budgets ({budget}), allowed by pipeline.unequal_budgets")
    lacking = _without_predictions(a, b, seeds, unusable)
    if m not in stats.BOOTSTRAP_METRICS:
        r = stats.paired({s: a_vals[s] for s in seeds}, {s: b_vals[s] for s in seeds})
        d["method"] = f"t over seeds ({m} cannot be bootstrapped)"
    elif lacking or boot is None:
        r = stats.paired({s: a_vals[s] for s in seeds}, {s: b_vals[s] for s in seeds})
        some = any(s not in unusable.get(x, {}) for x in (a, b) for s in seeds)
        d["method"] = "t over seeds (" + (
            "per-image predictions missing at some seeds: see the notes)"
            if some
            else "no per-image predictions)"
        )
        d["notes"] += lacking
    else:
        full, reps = boot
        r = stats.bootstrap_paired(full[a], full[b], reps[a], reps[b], seeds, LEVEL)
        d["method"] = BOOTSTRAP
        d["se_seed"], d["se_test"] = r.get("se_seed"), r.get("se_test")
    d.update({k: r.get(k, math.nan) for k in ("mean", "low", "high", "p", "n")})
    d["_se"], d["_df"] = _se(d, r), max(1, d["n"] - 1)
    d["seeds"] = seeds
    d["verdict"] = stats.verdict(d["low"], d["high"])
    return d


def _se(d: dict, r: dict) -> float:
    """The standard error behind an interval (from the t interval when not given)."""
    if math.isfinite(r.get("se", math.nan)):
        return r["se"]
    if d["n"] >= 2 and math.isfinite(d["low"]):
        return (d["high"] - d["low"]) / 2 / float(stats.stats.t.ppf(0.5 + LEVEL / 2, d["n"] - 1))
    return math.nan


def correct(family: list[dict]) -> None:
    """Holm-adjusted p-values over every declared primary comparison (one not compared or
    undefined counts in the family as p = 1: it cannot be rejected, but it does not make the
    others easier), Bonferroni simultaneous t intervals, and the primary verdict from the
    adjusted p (a comparison not compared keeps its reason)."""
    m = len(family)
    adj = stats.holm([d["p"] if math.isfinite(d["p"]) else 1.0 for d in family])
    level = 1 - (1 - LEVEL) / max(1, m)
    for d, p in zip(family, adj):
        if not math.isfinite(d["p"]):
            d["p_holm"] = math.nan
            if d["method"] != NOT_COMPARED:
                d["verdict"] = stats.UNDEFINED
            continue
        d["p_holm"] = p
        d["low_corrected"], d["high_corrected"] = stats.t_interval(
            d["mean"], d["_se"], d["_df"], level
        )
        d["corrected_level"] = level
        if p < 1 - LEVEL:
            d["verdict"] = "helps" if d["mean"] > 0 else "hurts"
        else:
            d["verdict"] = "no evidence"


PAIRED_COLUMNS = [
    "group",
    "metric",
    "kind",
    "comparison",
    "steps",
    "mean",
    "low",
    "high",
    "p",
    "p_holm",
    "low_corrected",
    "high_corrected",
    "n",
    "method",
    "verdict",
]


def paired_rows(arms: dict) -> list[list]:
    """report.json's arm comparisons as table rows (PAIRED_COLUMNS: report_paired.csv and W&B's
    report/paired; a value a
    comparison does not have, e.g. p_holm of an exploratory one, is None)."""
    rows = []
    for g in arms["groups"]:
        group = " ".join(str(v) for v in g["group"].values()) or "all"
        for d in g["paired"]:
            cells = {**d, "group": group, "comparison": f"{d['arm']} - {d['baseline']}"}
            cells["steps"] = d.get("budget")
            rows.append([cells.get(c) for c in PAIRED_COLUMNS])
    return rows


def _signed(x: float) -> str:
    """+0.0123; a value that would print as ±0.0000 keeps its sign and size (+4.90e-06): a
    bound that decides a verdict never reads as zero."""
    text = f"{x:+.4f}"
    return f"{x:+.2e}" if x != 0 and float(text) == 0 else text


def _ci(lo: float, hi: float) -> str:
    return "undefined" if math.isnan(lo) or math.isnan(hi) else f"[{_signed(lo)}, {_signed(hi)}]"


def _fmt_ci(v: dict) -> str:
    miss = f", {len(v['missing_seeds'])} undefined" if v.get("missing_seeds") else ""
    if not v["n"]:
        return f"— (n=0{miss})"
    if math.isnan(v["low"]):
        return f"{v['mean']:.4f} (n={v['n']}{miss})"
    return f"{v['mean']:.4f} [{v['low']:.4f}, {v['high']:.4f}] (n={v['n']}{miss})"


def _p(p: float) -> str:
    """Three significant digits, cut toward zero (0.049975 -> 0.0499, never 0.05): a printed p
    is on the same side of any threshold of three digits as the p the verdict read."""
    if not math.isfinite(p):
        return "—"
    if p <= 0:
        return f"{p:.3g}"
    from decimal import ROUND_DOWN, Decimal

    d = Decimal(repr(p))
    return f"{float(d.quantize(Decimal(1).scaleb(d.adjusted() - 2), rounding=ROUND_DOWN)):.3g}"


def _methods(ds: list[dict]) -> list[str]:
    """What each method that occurs in these comparisons means (a table's legend)."""
    out = []
    for m in dict.fromkeys(d["method"] for d in ds):
        if m == BOOTSTRAP:
            what = (
                "Student t over seeds (n - 1 df) whose standard error adds the test images' "
                "variance (bootstrap of the test set, the same resample for both arms and every "
                "seed)"
            )
        elif m == NOT_COMPARED:
            what = "no interval, p or verdict; the verdict says why"
        else:
            what = (
                "Student t over the seeds' paired differences (n - 1 df) only: the test images' "
                "variance is not in the interval"
            )
        out.append(f"- {m}: {what}.")
    return out


def arm_lines(a: dict, row, head) -> list[str]:
    """report.md's sections for pipeline arms (row/head: the report's markdown table helpers)."""
    if not a:
        return []
    keys, arms = a["keys"], a["arms"]
    lines: list[str] = []
    lines += ["", "## Setting", ""]
    for g in a["groups"]:
        where = ", ".join(f"{k}={g['group'][k]}" for k in keys) or "all runs"
        lines.append(
            f"- {where}: seeds {', '.join(str(s) for s in g['seeds'])}; labelled budget "
            f"{g['labelled'] or 'not recorded'}"
        )
        for n in g["notes"]:
            lines.append(f"  - {n}")
        for stage, why in g["foreign"].items():
            lines.append(f"  - provenance override, {stage}: {why}")
    lines += ["", "## Steps run per arm (classifier optimizer steps; arms compared must match)", ""]
    lines += head(keys + arms)
    for g in a["groups"]:
        cells = [g["group"][k] for k in keys]
        cells += [_steps(g["steps"][arm], g["steps_pre"][arm]) for arm in arms]
        lines.append(row(cells))
    if a.get("semi_arms"):
        lines += [
            "",
            f"A step of {', '.join(f'`{x}`' for x in a['semi_arms'])} also draws unlabelled "
            "images (semi.*.mu per labelled one); a semi-supervised GAN's generator takes one "
            "optimizer step of its own per classifier step, not counted here.",
        ]
    if a.get("unequal_budgets"):
        lines.append("")
        lines.append(
            "Allowed a different budget (pipeline.unequal_budgets): "
            + ", ".join(a["unequal_budgets"])
        )
    for m in a["metrics"]:
        lines += [
            "",
            f"## Arms: {m} on the real test set, mean [95% t interval over seeds]",
            "",
            *head(keys + arms),
        ]
        for g in a["groups"]:
            cells = [g["group"][k] for k in keys]
            for arm in arms:
                v = g["arms"][m].get(arm)
                cells.append(_fmt_ci(v) if v else "—")
            lines.append(row(cells))
    prim = [(g, d) for g in a["groups"] for d in g["paired"] if d["kind"] == "primary"]
    several = len(a.get("primary_metrics") or []) > 1  # groups judged on different metrics
    if prim:
        lines += [
            "",
            f"## Primary comparisons ({', '.join(a.get('primary_metrics') or ['?'])}; "
            "Holm-corrected over "
            f"{a['family_size']} comparisons)",
            "",
            "Paired by seed. Every declared primary comparison counts in the family (one not "
            "compared or undefined as p = 1); the simultaneous interval is Bonferroni-corrected; "
            "the verdict reads the Holm p. Interval and p, by method:",
            "",
            *_methods([d for _, d in prim]),
            "",
            *head(
                keys
                + ["metric"] * several
                + [
                    "comparison",
                    "steps",
                    "mean",
                    "95% interval",
                    "simultaneous interval",
                    "p",
                    "p (Holm)",
                    "seeds",
                    "method",
                    "verdict",
                ]
            ),
        ]
        for g, d in prim:
            cells = [g["group"][k] for k in keys] + [d["metric"]] * several
            cells += [
                f"{d['arm']} − {d['baseline']}",
                d["budget"],
                "—" if math.isnan(d["mean"]) else _signed(d["mean"]),
                _ci(d["low"], d["high"]),
                _ci(d.get("low_corrected", math.nan), d.get("high_corrected", math.nan)),
                _p(d["p"]),
                _p(d.get("p_holm", math.nan)),
                d["n"],
                d["method"],
                d["verdict"],
            ]
            lines.append(row(cells))
        wider = [
            f"{d['arm']} − {d['baseline']}" + "".join(f" ({g['group'][k]})" for k in keys)
            for g, d in prim
            if d["verdict"] in ("helps", "hurts")
            and d.get("low_corrected", math.nan) <= 0 <= d.get("high_corrected", math.nan)
        ]
        if wider:  # not a contradiction: Holm's step-down test is the sharper of the two
            lines += [
                "",
                "Holm's step-down test finds an effect where the simultaneous (Bonferroni) "
                "interval still includes 0: " + ", ".join(wider) + ". The verdict is the "
                "declared test's; the interval bounds the size of the effect less tightly.",
            ]
    lines += [
        "",
        "## Exploratory comparisons (uncorrected; not what the experiment was built to answer)",
        "",
        *_methods([d for g in a["groups"] for d in g["paired"] if d["kind"] == "exploratory"]),
        "",
        *head(
            keys
            + [
                "metric",
                "comparison",
                "steps",
                "mean",
                "95% interval",
                "p",
                "n",
                "method",
                "verdict",
            ]
        ),
    ]
    for g in a["groups"]:
        for d in g["paired"]:
            if d["kind"] != "exploratory":
                continue
            cells = [g["group"][k] for k in keys]
            cells += [
                d["metric"],
                f"{d['arm']} − {d['baseline']}",
                d["budget"],
                "—" if math.isnan(d["mean"]) else _signed(d["mean"]),
                _ci(d["low"], d["high"]),
                _p(d["p"]),
                d["n"],
                d["method"],
                d["verdict"],
            ]
            lines.append(row(cells))
    notes = [(g, d) for g in a["groups"] for d in g["paired"] if d.get("notes")]
    if notes:
        lines += ["", "Notes on comparisons:"]
        seen = set()
        for g, d in notes:
            for n in d["notes"]:
                where = ", ".join(f"{k}={g['group'][k]}" for k in keys) or "all runs"
                key = (where, d["arm"], d["baseline"], n)
                if key not in seen:
                    seen.add(key)
                    lines.append(f"- {where}, {d['arm']} − {d['baseline']}: {n}")
    if any(g["gan"] for g in a["groups"]):
        cols = sorted(
            {k for g in a["groups"] for q in g["gan"].values() for k in q},
            key=lambda k: (GAN_KEYS.index(k) if k in GAN_KEYS else 99, k),
        )
        # GAN variants (or a semi-supervised GAN's G): a row each, named by its stage
        several = any(set(g["gan"]) - {"gan"} for g in a["groups"])
        lines += [
            "",
            "## GAN quality next to it (mean over seeds; FID/KID on our own features; val/ "
            "against the val images, test/ reported only"
            + ("; one row per GAN of the pipeline)" if several else ")"),
            "",
            *head(keys + ["GAN"] * several + cols),
        ]
        for g in a["groups"]:
            for stage, q in g["gan"].items():
                cells = [g["group"][k] for k in keys] + [stage] * several
                cells += [f"{q[c][0]:.4g}" if c in q else "—" for c in cols]
                lines.append(row(cells))
    return lines
