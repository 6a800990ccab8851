"""The files a report writes from the runs below a dir: every metrics.json -> grouped by the
swept keys, aggregated over seeds (mean ± std, n), the arm comparisons (xfergan/evaluation/arms.py)
-> report.md, report.json, report.csv (the aggregate), report_paired.csv (every comparison with
its kind, method and Holm p) and PNG plots; with `real` at several n_per_class, each arm's
worth in real labelled images per class (xfergan/evaluation/exchange.py). Plain data in, files
out; task=report (tasks/report.py) and the sweep's ReportWhenDone call it."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import yaml

from xfergan.evaluation.arms import (
    PAIRED_COLUMNS,
    arm_analysis,
    arm_lines,
    num_key,
    one_per_seed,
    paired_rows,
    report_groups,
)
from xfergan.evaluation.curves import write_curves
from xfergan.evaluation.exchange import (
    CSV_COLUMNS,
    exchange_analysis,
    exchange_csv_rows,
    exchange_lines,
    exchange_plot,
)
from xfergan.io import atomic_write_text
from xfergan.schema import FUSED_GANS_DIR

log = logging.getLogger(__name__)

MAIN = [
    "test/acc",
    "test/auroc",
    "test/kappa",
    "test/study_acc",
    "test/study_kappa",
    "test/study_auroc",
    "test/majority_acc",
    "test/study_majority_acc",
    "val/gan_fid",
    "val/gan_kid",
    "val/gan_precision",
    "val/gan_recall",
]
IGNORED_KEYS = {"seed", "task", "dir"}  # (and Hydra's own settings: _volatile)


def _overrides(job_dir: Path) -> dict[str, str]:
    f = job_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return {}
    out = {}
    for item in yaml.safe_load(f.read_text()) or []:
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def collect(root: Path) -> tuple[list[dict], list[dict]]:
    """(runs with metrics.json, job dirs without one). A pipeline's stage dirs are skipped: its
    own metrics.json summarizes them (one still running is a job without one, whatever stages
    it has finished); so are the GANs a multirun's pipelines took from its fused_gans/ folder
    (pipeline.fused_gans: each pipeline's metrics.json carries its GAN's numbers)."""
    runs, missing = [], []
    job_dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    if (root / "metrics.json").is_file():
        job_dirs.add(root)
    pipelines = {j for j in job_dirs if _task(j) == "pipeline"}  # each job's task read once
    for d in sorted(job_dirs | {p.parent for p in root.rglob("metrics.json")}):
        if any(parent in pipelines for parent in d.parents):
            continue
        if pipelines and FUSED_GANS_DIR in d.relative_to(root).parts:
            continue
        mf = d / "metrics.json"
        if not mf.is_file():
            if (d / ".hydra").is_dir():
                missing.append({"dir": str(d), "overrides": _overrides(d)})
            continue
        try:
            m = json.loads(mf.read_text())
            if not isinstance(m, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError):  # damaged: listed, never a traceback
            missing.append(
                {"dir": str(d), "overrides": _overrides(d), "error": "unreadable metrics.json"}
            )
            continue
        if m.get("task") == "report":
            continue
        m["_dir"], m["_overrides"] = str(d), _overrides(d)
        runs.append(m)
    _same_keys_same_values(runs, missing)
    return runs, missing


def _fmt(v) -> str:
    """A resolved config value written as a command-line override writes it."""
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _volatile(key: str) -> bool:
    """A setting that does not change what a run computes (runtime.VOLATILE_KEYS: the logger,
    devices, paths, resume, ...): never a report group."""
    from xfergan.runtime import VOLATILE_KEYS

    head, _, rest = key.lstrip("+~").partition(".")
    if head.split("/")[0] == "hydra":  # Hydra's own settings (callbacks, dirs, launcher)
        return True
    sub = VOLATILE_KEYS.get(head, ())
    return head in VOLATILE_KEYS and (sub is None or rest.split(".")[0] in sub)


def _same_keys_same_values(runs: list[dict], missing: list[dict]) -> None:
    """Every run's value of every key any run's command line set, read from its resolved
    config (a group's choice from hydra.yaml): a key typed in one sweep and left at its default
    in another ("dataset.n_per_class=8" and nothing) has one value, and settings that change
    nothing computed (logger=csv, trainer.devices=1) group nothing. Seeds added later in a
    nested sweep thus join their group; the overrides dicts are rewritten in place."""
    entries = [(r, "_overrides") for r in runs] + [(m, "overrides") for m in missing]
    keys = sorted({k for e, f in entries for k in (e.get(f) or {}) if not _volatile(k)})
    for e, field in entries:
        typed = e.get(field) or {}
        d = Path(e.get("_dir") or e.get("dir") or "")
        cfg, choices = _resolved(d)
        out = {}
        for k in keys:
            if k in choices:
                out[k] = str(choices[k])
            elif cfg is not None and (v := _select(cfg, k)) is not _NONE:
                out[k] = _fmt(v)
            elif k in typed:
                out[k] = typed[k]
        e[field] = out


_NONE = object()


def _select(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _NONE
        node = node[part]
    return _NONE if isinstance(node, dict) else node


def _resolved(job_dir: Path) -> tuple[dict | None, dict]:
    """(the job's resolved config as plain data, its config-group choices); (None, {}) when it
    has none (a run dir written by other means)."""
    try:
        cfg = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None, {}
    try:
        hydra = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text()) or {}
        choices = (hydra.get("hydra") or {}).get("runtime", {}).get("choices") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        choices = {}
    return (cfg if isinstance(cfg, dict) else None), dict(choices)


def _task(d: Path) -> str | None:
    """A job dir's task: from its metrics.json, else (still running) from its Hydra config."""
    try:
        return json.loads((d / "metrics.json").read_text()).get("task")
    except (OSError, json.JSONDecodeError):
        pass
    try:
        return (yaml.safe_load((d / ".hydra" / "config.yaml").read_text()) or {}).get("task")
    except (OSError, yaml.YAMLError):
        return None


def swept_keys(runs: list[dict], missing: list[dict]) -> list[str]:
    def ov(r: dict) -> dict:  # a run's job overrides (a missing job's: "overrides")
        o = r["_overrides"] if "_overrides" in r else r.get("overrides")
        return o if isinstance(o, dict) else {}

    keys = set()
    for r in runs + missing:
        keys |= set(ov(r))
    varying = []
    for k in sorted(keys - IGNORED_KEYS):
        vals = {ov(r).get(k) for r in runs + missing}
        if len(vals) > 1 or k.startswith("experiment") or k in ("dataset", "body_part"):
            varying.append(k)
    return varying


def mean_std(xs: list[float]) -> tuple[float, float]:
    """(mean, sample std); the std of one value is undefined (nan), never 0."""
    from xfergan.stats import std

    return sum(xs) / len(xs), std(xs) if len(xs) > 1 else math.nan


def aggregate(runs: list[dict], keys: list[str]) -> list[dict]:
    rows = []
    groups = report_groups(runs, keys)
    for gkey, rs in sorted(groups.items(), key=lambda kv: [num_key(v) for v in kv[0]]):
        rs, notes = one_per_seed(rs)  # the arms section's rule: one run per seed, never averaged
        row = {
            "group": dict(zip(keys, gkey)),
            "n": len(rs),
            "seeds": [r.get("seed") for r in rs],
            "notes": notes,
            "metrics": {},
        }
        names = sorted(
            {
                k
                for r in rs
                for k, v in r.items()
                if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        for name in names:
            vals = [  # an undefined value (null, NaN) is missing, not a number
                float(r[name])
                for r in rs
                if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])
            ]
            if vals:
                row["metrics"][name] = (*mean_std(vals), len(vals))
        rows.append(row)
    return rows


def _cell(v: tuple | None, n: int) -> str:
    """'0.9012 ± 0.0123'; '0.9000 (n=1)' where one seed has it (no spread to show); the seeds
    it is the mean of where fewer than the row's (the rest undefined)."""
    if not v:
        return "—"
    mean, sd, k = v
    text = f"{mean:.4f}" + (f" ± {sd:.4f}" if math.isfinite(sd) else "")
    return text + (f" (n={k})" if k < n or k < 2 else "")


def _row(cells) -> str:
    """One markdown table row (no empty first cell when a table has no group columns)."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _head(cells) -> list[str]:
    """A markdown table's header row and its separator."""
    return [_row(cells), "|" + "---|" * len(cells)]


def write_report(root: Path, runs: list[dict], missing: list[dict]) -> dict:
    keys = swept_keys(runs, missing)
    rows = aggregate(runs, keys)
    failed = [r for r in runs if r.get("status") != "ok"]
    present = [m for m in MAIN if any(m in row["metrics"] for row in rows)]
    lines = [
        f"# Report: {root}",
        "",
        f"{len(runs)} runs ({len(runs) - len(failed)} ok, {len(failed)} failed), "
        f"{len(missing)} missing (job dir without metrics.json: killed or still running).",
        f"Grouped by: {', '.join(keys) if keys else '(nothing swept)'}; mean ± std over seeds "
        "(one run per seed: a duplicate is left out and listed below the table).",
        "",
    ]
    lines += _head(keys + ["n"] + present)
    for row in rows:
        cells = [row["group"][k] for k in keys] + [str(row["n"])]
        for m in present:
            cells.append(_cell(row["metrics"].get(m), row["n"]))
        lines.append(_row(cells))
    left_out = [(row, n) for row in rows for n in row["notes"]]
    if left_out:
        lines += ["", "Left out of this table (one run per seed and group, the first by dir):"]
        for row, n in left_out:
            where = ", ".join(f"{k}={v}" for k, v in row["group"].items()) or "all runs"
            lines.append(f"- {where}: {n}")
    arms = arm_analysis(runs, keys)
    lines += arm_lines(arms, _row, _head)
    rates = exchange_analysis(arms)
    lines += exchange_lines(rates, _row, _head)
    foreign = [r for r in runs if r.get("synthetic_foreign")]
    if foreign:
        lines += [
            "",
            "## Runs with a foreign synthetic set (dataset.synthetic_provenance=ignore)",
            "",
        ]
        lines += [f"- `{r['_dir']}`: {r.get('synthetic_foreign_reason')}" for r in foreign]
    if failed or missing:
        lines += ["", "## Failed or missing runs", ""]
        for r in failed:
            lines.append(f"- FAILED `{r['_dir']}` ({r.get('overrides', '')}): {r.get('error')}")
        for m in missing:
            ov = ",".join(f"{k}={v}" for k, v in m["overrides"].items())
            lines.append(f"- MISSING `{m['dir']}` ({ov}): {m.get('error', 'no metrics.json')}")
    atomic_write_text(root / "report.md", "\n".join(lines) + "\n")

    buf = io.StringIO()
    metric_names = sorted({m for row in rows for m in row["metrics"]})
    w = csv.writer(buf)
    # with exchange rates: a `kind` column (aggregate / exchange_rate) and theirs at the end
    extra = CSV_COLUMNS if rates.get("compared") else []
    w.writerow(keys + ["n"] + [f"{m}_{s}" for m in metric_names for s in ("mean", "std")] + extra)
    for row in rows:
        vals = []
        for m in metric_names:
            v = row["metrics"].get(m)
            vals += [f"{v[0]:.6g}", f"{v[1]:.6g}"] if v else ["", ""]
        kind = ["aggregate"] + [""] * (len(extra) - 1) if extra else []
        w.writerow([row["group"][k] for k in keys] + [row["n"]] + vals + kind)
    pipes = [r for r in runs if r.get("task") == "pipeline"]
    fill = {  # the keys every pipeline shares (the arms section leaves them out of its groups)
        k: next(iter(v)) for k in keys if len(v := {r["_overrides"].get(k, "") for r in pipes}) == 1
    }
    w.writerows(exchange_csv_rows(rates, keys, 2 * len(metric_names), fill))
    atomic_write_text(root / "report.csv", buf.getvalue())
    if arms:  # every comparison, its method and kind: what report.md's tables say, as rows
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(PAIRED_COLUMNS)
        w.writerows(paired_rows(arms))
        atomic_write_text(root / "report_paired.csv", buf.getvalue())
    from xfergan.io import atomic_write_json

    atomic_write_json(
        root / "report.json",
        {
            "keys": keys,
            "rows": rows,
            "arms": arms,
            "exchange_rates": rates,
            "failed": len(failed),
            "missing": len(missing),
        },
    )
    plots = make_plots(root, rows, keys, present)
    if arms and arms.get("metrics"):  # pipelines with GAN numbers only: no arms to plot
        plots.append(arms_plot(root, arms))
    if rates.get("compared"):
        plots.append(exchange_plot(root, rates))
    written = {"report_paired.csv"} if arms else set()
    if curve := write_curves(root, runs, keys):
        plots.append(curve)
        written.add("report_curves.csv")
    # an earlier report's optional files this one did not write (e.g. the exchange-rate plot
    # after the curve's runs were removed) would sit beside a report.md without them, and its
    # PNGs would reach W&B: removed
    written |= {p.name for p in plots}
    for f in [*root.glob("plot_*.png"), root / "report_paired.csv", root / "report_curves.csv"]:
        if f.is_file() and f.name not in written:
            f.unlink()
            log.info("removed %s: an earlier report's, not part of this one", f)
    return {
        "report/runs": len(runs),
        "report/failed": len(failed),
        "report/missing": len(missing),
        "report/groups": len(rows),
        "report/plots": len(plots),
    }


def arms_plot(root: Path, a: dict) -> Path:
    """Accuracy vs n_per_class, one line per arm, 95% CI error bars (or bars per arm when
    nothing else is swept)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xfergan.evaluation.plots import _save

    m = a["metrics"][0]
    npc = next((k for k in a["keys"] if k.endswith("n_per_class")), None)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, arm in enumerate(a["arms"]):
        pts = []
        for j, g in enumerate(a["groups"]):
            v = g["arms"][m].get(arm)
            if not v:
                continue
            try:
                x = float(g["group"][npc]) if npc else j
            except ValueError:  # n_per_class=null (all images) has no place on this axis
                continue
            err = 0.0 if math.isnan(v["low"]) else v["mean"] - v["low"]
            pts.append((x, v["mean"], err))
        if not pts:
            continue
        pts.sort()
        off = (i - len(a["arms"]) / 2) * 0.02  # small dodge so error bars do not overlap
        xs = [p[0] * (1 + off) if npc else p[0] + off * 5 for p in pts]
        ax.errorbar(
            xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=arm
        )
    if npc:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("real images per class (n_per_class)")
    else:
        ax.set_xticks(
            range(len(a["groups"])), [" ".join(g["group"].values()) or "all" for g in a["groups"]]
        )
    ax.set_ylabel(f"{m} (real test set)")
    ax.set_title(f"{m} by arm: mean and 95% CI over seeds")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, root / "plot_arms.png")


def make_plots(root: Path, rows: list[dict], keys: list[str], present: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xfergan.evaluation.plots import _save, bar_chart_png

    out = []
    if not rows or not present:
        return out
    metric = next((m for m in present if m.startswith("test/")), present[0])
    npc = next((k for k in keys if k.endswith("n_per_class")), None)
    if npc:  # accuracy vs n_per_class, one line per other setting (e.g. real / synthetic / mixed)
        others = [k for k in keys if k != npc]
        lines: dict[str, list] = defaultdict(list)
        for row in rows:
            v = row["metrics"].get(metric)
            try:
                x = float(row["group"][npc])
            except ValueError:
                continue
            if v:
                lines[", ".join(f"{k}={row['group'][k]}" for k in others) or metric].append(
                    (x, v[0], v[1])
                )
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for label, pts in lines.items():
            pts.sort()
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                label=label,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("images per class (n_per_class)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        ax.set_title(f"{metric} vs n_per_class")
        out.append(_save(fig, root / "plot_vs_n_per_class.png"))
    for m in [m for m in present if m.startswith("test/study_kappa") or m == metric][:2]:
        values = {
            " ".join(str(v) for v in row["group"].values()) or "all": row["metrics"][m][0]
            for row in rows
            if m in row["metrics"]
        }
        errors = {
            " ".join(str(v) for v in row["group"].values()) or "all": row["metrics"][m][1]
            for row in rows
            if m in row["metrics"]
        }
        refs = {}
        base = "test/study_majority_acc" if "study" in m else "test/majority_acc"
        if "acc" in m and any(base in row["metrics"] for row in rows):
            have = [row["metrics"][base][0] for row in rows if base in row["metrics"]]
            refs["majority class (mean)"] = sum(have) / len(have)
        safe = m.replace("/", "_")
        out.append(
            bar_chart_png(
                values,
                root / f"plot_{safe}.png",
                title=f"{m} by setting",
                ylabel=m,
                errors=errors,
                refs=refs,
            )
        )
    return out
