"""Each arm's worth in real labelled images per class (the exchange rate) for task=report.

The `real` arm run at several n_per_class for the same seeds is a curve: metric against n. Every
arm's metric at a compared n (a group where arms besides `real` ran) is read off that curve as
"the real labelled images per class that reach the same metric" (xfergan/stats.exchange_rate:
isotonic curve, linear in log n, censored outside the curve, bootstrap over seeds). `real` at its
own n is a sanity row. Input: arm_analysis's groups (one run per seed already chosen, undefined
values already out); output: report.json's `exchange_rates`, report.md's lines, report.csv's
rows and plot_exchange_rates.png.

Runs belong to one curve when their group keys agree except n_per_class and the keys that do not
change how `real` trains (`not_real_key`: the arms chosen, what is declared, the settings of
the other arms' own stages): a sweep of `real` alone at more n (e.g. pipeline.arms=[real]
pipeline.primary=[]) beside the sweep of every arm at n = 8 (and, say, two unlabelled caps) is
one curve. A compared group that finds no curve while another context has one is said in a note
(with the keys that differ), never dropped in silence; `real` run twice at one (seed, n) counts
once, the run beside the compared arms, and the note says so.
"""

from __future__ import annotations

import math
from pathlib import Path

from xfergan import stats

REAL = "real"
# keys that choose which arms run (or teach) or what is declared, not how `real` trains
CHOICE_KEYS = (
    "pipeline.arms",
    "pipeline.primary",
    "pipeline.primary_metric",
    "pipeline.unequal_budgets",
    "pipeline.teacher_ensemble",
)
# prefixes of keys that set only other arms' stages (the GAN, its samples, the teachers' pseudo-
# labels, the semi-supervised arms' methods and their unlabelled pool, the feature net)
OTHER_STAGE_PREFIXES = (
    "gan.",
    "synthesize.",
    "distill.",
    "semi.fixmatch.",
    "semi.semi_gan.",
    "dataset.unlabelled_cap",
    "pipeline.feature_net_overrides",
)


def not_real_key(k: str) -> bool:
    """True for a swept key that cannot change how the `real` arm trains: it joins runs into
    one curve. `pipeline.arm_overrides.<arm>...` counts for every arm but `real` (the whole
    `pipeline.arm_overrides` dict, which may hold real's, does not)."""
    if k in CHOICE_KEYS or k.startswith(OTHER_STAGE_PREFIXES):
        return True
    arm = k.removeprefix("pipeline.arm_overrides.").split(".")[0]
    return k.startswith("pipeline.arm_overrides.") and arm not in ("", REAL)


N_BOOT = 2000
BOOT_SEED = 0
LEVEL = 0.95
CSV_COLUMNS = [
    "kind",
    "arm",
    "exchange_metric",
    "exchange_rate",
    "exchange_rate_censored",
    "exchange_low",
    "exchange_low_censored",
    "exchange_high",
    "exchange_high_censored",
]


def _n_of(g: dict, npc: str | None) -> float | None:
    """A group's n_per_class (its group key, else the one its runs recorded); None when it has
    no positive number (n_per_class=null: every image)."""
    v = g["group"].get(npc) if npc else None
    if v in (None, "") and len(g.get("n_per_class") or []) == 1:
        v = g["n_per_class"][0]
    try:
        n = float(v)
    except (TypeError, ValueError):
        return None
    return n if math.isfinite(n) and n > 0 else None


def _as_compared(g: dict, arm: str, metric: str, by_seed: dict) -> tuple[dict | str, list[str]]:
    """An arm's values at the seeds where its comparison with `real` in its group was made (the
    same real subset and test set, equal step budgets or declared unequal), and that
    comparison's notes; or why it was not made (its verdict), so a rate is never read off the
    curve for an arm the report would not compare with `real`."""
    if arm == REAL:
        return by_seed, []
    d = next(
        (
            d
            for d in g.get("paired") or []
            if d["arm"] == arm and d["baseline"] == REAL and d["metric"] == metric
        ),
        None,
    )
    if d is None:
        return by_seed, []
    if str(d.get("verdict", "")).startswith("not compared"):
        return str(d["verdict"]).removeprefix("not compared: ") + " (against real)", []
    seeds = d.get("seeds")
    kept = {s: v for s, v in by_seed.items() if seeds is None or s in seeds}
    return kept, list(d.get("notes") or [])


def exchange_analysis(a: dict, n_boot: int = N_BOOT) -> dict:
    """report.json's `exchange_rates` from arm_analysis's output; {} without a curve (the real arm
    at fewer than two n, or no other arm to read off it)."""
    if not a or not a.get("metrics"):
        return {}
    pm = a.get("primary_metric")
    metric = pm if pm in a["metrics"] else a["metrics"][0]
    npc = next((k for k in a["keys"] if k.endswith("n_per_class")), None)
    ctx_keys = [k for k in a["keys"] if k != npc and not not_real_key(k)]
    contexts: dict[tuple, list[tuple[float, dict]]] = {}
    for g in a["groups"]:
        n = _n_of(g, npc)
        if n is not None:
            contexts.setdefault(tuple(g["group"][k] for k in ctx_keys), []).append((n, g))

    def compares(g: dict) -> bool:  # arms besides `real` ran (and have values) in this group
        return any(x != REAL and v["by_seed"] for x, v in g["arms"].get(metric, {}).items())

    curves, compared, orphans, curve_ctxs = [], [], [], []
    for ctx, gs in contexts.items():
        curve: dict = {}  # seed -> {n: real's metric}
        steps: dict[float, list] = {}
        twice: dict[float, set] = {}  # n -> seeds whose `real` ran in two groups
        # the groups that compare arms first: at their n, their `real` (the paired run) counts
        for n, g in sorted(gs, key=lambda ng: not compares(ng[1])):
            real = g["arms"].get(metric, {}).get(REAL)
            if real and real["by_seed"]:
                for s, v in real["by_seed"].items():
                    if n in curve.setdefault(s, {}):
                        twice.setdefault(n, set()).add(s)
                        continue
                    curve[s][n] = v
                steps.setdefault(n, g["steps"].get(REAL) or [])
        anchors = sorted({n for c in curve.values() for n in c})
        others = [(n, g) for n, g in gs if compares(g)]
        if len(anchors) >= 2:
            curve_ctxs.append(ctx)
        if len(anchors) < 2 or not others:
            orphans += [(ctx, n, g) for n, g in others]
            continue
        notes = [
            f"`real` ran more than once at n={n:g} for seeds {', '.join(map(str, sorted(ss)))}: "
            "the curve uses the run beside the compared arms (else the first by group)"
            for n, ss in sorted(twice.items())
        ]
        if len({tuple(s) for s in steps.values()}) > 1:
            notes.append(
                "the real arm ran different step budgets along the curve: "
                + ", ".join(f"n={n:g}: {'/'.join(map(str, s)) or '?'}" for n, s in steps.items())
            )
        context = dict(zip(ctx_keys, ctx))
        # the plotted mean: every seed's value at each n (a rate uses the seeds with all of them)
        mean = [stats.mean_ci([c[n] for c in curve.values() if n in c])[0] for n in anchors]
        curves.append(
            {
                "context": context,
                "anchors": anchors,
                "by_seed": {
                    s: {f"{n:g}": v for n, v in sorted(c.items())} for s, c in curve.items()
                },
                "mean": mean,
                "notes": notes,
            }
        )
        for n, g in others:
            rates = {}
            for arm, v in g["arms"][metric].items():
                if not v["by_seed"]:
                    continue
                values, checked = _as_compared(g, arm, metric, v["by_seed"])
                if isinstance(values, str):  # the comparison with `real` was not made: why
                    rates[arm] = {"not_computed": values}
                    continue
                try:
                    rates[arm] = stats.exchange_rate(
                        curve, values, LEVEL, n_boot=n_boot, seed=BOOT_SEED
                    )
                except ValueError as e:  # e.g. no seed in both: said, not a crash
                    rates[arm] = {"not_computed": str(e).removeprefix("exchange_rate: ")}
                    continue
                rates[arm]["metric"] = metric
                rates[arm]["notes"] = checked
            compared.append(
                {
                    "group": g["group"],
                    "context": context,
                    "n": n,
                    "curve": len(curves) - 1,
                    "arms": rates,
                }
            )
    if not curve_ctxs:  # nobody ran a curve: no section
        return {}
    unmatched = []
    for ctx, n, g in orphans:  # compared arms whose settings no curve shares: said, not dropped
        diff = sorted({k for c in curve_ctxs for k, a_, b_ in zip(ctx_keys, ctx, c) if a_ != b_})
        where = ", ".join(f"{k}={v}" for k, v in g["group"].items()) or "all runs"
        unmatched.append(
            f"no exchange rate for {where} (n={n:g}): no `real` curve with its settings"
            + (f" (the curve's runs differ in {', '.join(diff)})" if diff else "")
        )
    return {
        "metric": metric,
        "n_key": npc,
        "level": LEVEL,
        "n_boot": n_boot,
        "boot_seed": BOOT_SEED,
        "keys": a["keys"],
        "curves": curves,
        "compared": compared,
        "unmatched": unmatched,
    }


def exchange_lines(x: dict, row, head) -> list[str]:
    """report.md's section "Worth in real labelled images per class"."""
    if not x:
        return []
    m, keys = x["metric"], x["keys"]
    if not x["compared"]:  # a curve ran, but no compared group shares its settings
        head_ = ["", f"## Worth in real labelled images per class ({m})", ""]
        return head_ + [f"- {n}" for n in x["unmatched"]]
    anchors = sorted({n for c in x["curves"] for n in c["anchors"]})
    lines = [
        "",
        f"## Worth in real labelled images per class ({m})",
        "",
        f"Each arm's {m} at the compared n_per_class, read off the `real` arm's curve: the real "
        "labelled images per class at which `real` reaches the same value. The curve is the "
        f"mean over seeds of `real`'s {m} at n_per_class "
        f"{', '.join(f'{n:g}' for n in anchors)}, made non-decreasing (isotonic fit) and read "
        "linearly in log n (on a flat stretch: its smallest n); a value outside it is "
        f'"below {anchors[0]:g}" / "above {anchors[-1]:g}", never extrapolated. Paired by '
        f"seed (a seed counts with its whole curve and the arm's value); the interval is a "
        f"{x['level']:.0%} percentile bootstrap over seeds ({x['n_boot']} resamples of the "
        f"seeds, curve and value together, RNG seed {x['boot_seed']}). `real` at its own n is "
        "the sanity row: worth its own n (unless the isotonic fit pooled that n with a "
        "neighbour).",
        "",
        *head(keys + ["arm", f"{m} (mean)", "worth [95% interval]", "seeds", "seeds outside"]),
    ]
    notes = []
    for c in x["compared"]:
        cells = [c["group"][k] for k in keys]
        for arm, d in c["arms"].items():
            if "not_computed" in d:
                lines.append(row(cells + [arm, "—", "not computed", 0, "—"]))
                notes.append(f"{arm} at n={c['n']:g}: not computed: {d['not_computed']}")
                continue
            out = [v["censored"] for v in d["by_seed"].values() if v["censored"]]
            lines.append(
                row(
                    cells
                    + [
                        arm,
                        f"{d['value']:.4f}",
                        stats.exchange_text(d),
                        d["n_seeds"],
                        ", ".join(f"{out.count(o)} {o}" for o in dict.fromkeys(out)) or "none",
                    ]
                )
            )
            notes += [f"{arm} at n={c['n']:g}: {n}" for n in d.get("notes") or []]
            if d["left_out"]:
                notes.append(
                    f"{arm} at n={c['n']:g}: left out seeds {', '.join(map(str, d['left_out']))}"
                    " (no real run at every n of the curve)"
                )
            if d.get("anchors_dropped"):
                notes.append(
                    f"{arm} at n={c['n']:g}: the real curve leaves out n="
                    + ", ".join(f"{n:g}" for n in d["anchors_dropped"])
                    + " (run by half of the seeds with a curve or fewer)"
                )
    notes += [n for c in x["curves"] for n in c["notes"]] + list(x.get("unmatched") or [])
    if notes:
        lines += ["", *[f"- {n}" for n in dict.fromkeys(notes)]]
    return lines


def exchange_csv_rows(x: dict, keys: list[str], width: int, fill: dict | None = None) -> list[list]:
    """report.csv's rows of kind `exchange_rate`: the group's keys (`fill`: the values of the
    report's keys the arms section leaves out, being the same for every pipeline), n = the seeds
    used, `width` empty metric cells, then CSV_COLUMNS."""
    rows = []
    for c in x.get("compared") or []:
        for arm, d in c["arms"].items():
            if "not_computed" in d:
                continue
            rows.append(
                [c["group"].get(k, (fill or {}).get(k, "")) for k in keys]
                + [d["n_seeds"]]
                + [""] * width
                + ["exchange_rate", arm, d["metric"]]
                + [
                    v
                    for part in ("point", "low", "high")
                    for v in (
                        "" if not math.isfinite(d[part]) else f"{d[part]:.6g}",
                        d[f"{part}_censored"] or "",
                    )
                ]
            )
    return rows


def exchange_plot(root: Path, x: dict) -> Path:
    """plot_exchange_rates.png: per compared group, `real`'s curve against n (log axis; every
    seed's faint, their mean bold), each other arm's mean as a horizontal line and its worth
    marked on the curve (an arrow-head at the range end when censored)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xfergan.evaluation.plots import _save

    k = len(x["compared"])
    fig, axes = plt.subplots(1, k, figsize=(6.0 * k, 4.2), squeeze=False)
    for ax, c in zip(axes[0], x["compared"]):
        curve = x["curves"][c["curve"]]
        for by_n in curve["by_seed"].values():
            pts = sorted((float(n), v) for n, v in by_n.items())
            ax.plot(*zip(*pts), color="0.6", lw=0.7, alpha=0.35)
        ax.plot(curve["anchors"], curve["mean"], "k-o", lw=2, label="real (mean over seeds)")
        arms = [(a, d) for a, d in c["arms"].items() if a != REAL and "point" in d]
        for i, (arm, d) in enumerate(arms):
            col = f"C{i}"
            ax.axhline(d["value"], color=col, lw=1, ls="--")
            marker = "o"  # censored: an arrow-head at the range end, pointing out of it
            if d["point_censored"]:
                marker = "<" if d["point_censored"].startswith("below") else ">"
            err = None
            if math.isfinite(d["low"]):
                err = [[d["point"] - d["low"]], [d["high"] - d["point"]]]
            ax.errorbar(
                [d["point"]],
                [d["value"]],
                xerr=err,
                fmt=marker,
                color=col,
                capsize=3,
                ms=7,
                label=f"{arm}: {stats.exchange_text(d)}",
            )
            ax.axvline(d["point"], color=col, lw=0.6, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(curve["anchors"], [f"{n:g}" for n in curve["anchors"]])
        ax.set_xlabel("real labelled images per class (n_per_class)")
        ax.set_ylabel(f"{x['metric']} (real test set)")
        where = [f"n_per_class={c['n']:g}"] + [f"{k}={v}" for k, v in c["context"].items() if v]
        ax.set_title(f"worth in real images per class: {', '.join(where)}", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, root / "plot_exchange_rates.png")
