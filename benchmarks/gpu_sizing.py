"""Sizing for benchmarks/gpu_check.sh: which compile mode its end-to-end runs use and how many
GAN steps fit a step's time cap, from what this very check (or an earlier one) measured.

    python benchmarks/gpu_sizing.py fastest gan <gan-speed.json> [batch]  # -> "graph 301.2"
    python benchmarks/gpu_sizing.py fastest clf <clf-speed.json>          # -> "graph 160.4"
    python benchmarks/gpu_sizing.py sized <name> <want> <cap s> <other s> [jobs] [steps/s]
    python benchmarks/gpu_sizing.py table3 <gan-speed.json> <clf-speed.json> <cap s>

`fastest` prints the setting value (gan.compile / model.compile) of the fastest variant that ran
without an error and its speed in steps/s ("null 0" / "false 0" when the file has none);
`sized` prints the G+D steps that fit 90% of (cap - other) at that speed, never more than asked
(as asked when no speed is known), and says why on stderr (gpu_check appends it to sized.log);
`table3` prints the overrides experiment=paper_table3_full runs with (table3_plan).
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

# bench.py's variant kinds -> the setting that selects them
GAN_MODES = {
    "eager": "null",
    "compile": "default",
    "cudagraphs": "reduce-overhead",
    "step": "step",
    "graph": "graph",
}
CLF_MODES = {"eager": "false", "true": "true", "graph": "graph"}


def _rows(path: str | Path) -> list[dict]:
    try:
        return json.loads(Path(path).read_text()).get("results", [])
    except (OSError, ValueError):
        return []


def fastest(kind: str, path: str | Path, batch: int = 64) -> tuple[str, float]:
    """(setting, steps/s) of the fastest error-free variant at `batch` in a bench JSON of the
    gan_speed (`kind` "gan") or clf_speed ("clf") case; the eager setting and 0 when none ran."""
    found = _variants(kind, path, batch)
    if not found:
        return (GAN_MODES if kind == "gan" else CLF_MODES)["eager"], 0.0
    best = max(found, key=lambda m: found[m]["rate"])
    return best, found[best]["rate"]


def last_gan_rate(root: str | Path = "benchmarks/results") -> tuple[float | None, str | None]:
    """The GAN step's speed as users run it (bench's `gan` case, steps/s) in the newest GPU file
    (dated names: the last sorted is the newest); cpu-smoke files never count."""
    rate, src = None, None
    files = set(glob.glob(f"{root}/*gpu*.json")) | set(glob.glob(f"{root}/*nvidia*.json"))
    for f in sorted(files - set(glob.glob(f"{root}/*cpu-smoke*"))):
        for r in _rows(f):
            if r.get("case", "").startswith("GAN step") and r.get("ours"):
                rate, src = float(r["ours"]), f
    return rate, src


def sized(
    name: str, want: int, cap: float, other: float, jobs: int = 1, rate: float | None = None
) -> tuple[int, str]:
    """(G+D steps to run, why): what fits 90% of the cap left after `other` seconds of other
    work at `rate` steps/s (the newest measured GAN speed when None), `jobs` at once counted as
    no faster than one after another (an unmeasured speed-up is not assumed)."""
    src = "this check's fastest variant"
    if not rate:
        rate, src = last_gan_rate()
    if not rate:
        return want, f"{name}: asked {want}, runs {want} (no measured GAN speed: as asked)"
    fit = int(0.9 * max(0.0, cap - other) * rate / jobs)
    steps = max(1, min(want, fit))
    why = (
        f"{name}: asked {want}, runs {steps} ({rate:.1f} steps/s from {src}, {jobs} job(s) at "
        f"once, {cap:.0f} s cap, {other:.0f} s other work)"
    )
    return steps, why


# experiment=paper_table3_full's classifier work: real 200, synthetic 2,000, mixed 2,020 and
# finetune 200 steps of MobileNetV2 at 96 px (4 stages, each compiling its step under graph)
TABLE3_CLF_STEPS, TABLE3_CLF_STAGES, TABLE3_REST_S = 4420, 4, 45
EAGER_CLF_STEPS_S = 26.0  # the 2026-12-04 H200's eager step, when this check measured none
LIGHTNING_SHARE = 0.7  # bench times the GAN step in a plain loop; Lightning's loop around it
# (logging, the bar, epoch ends) is unmeasured at graph speeds


def _variants(kind: str, path: str | Path, batch: int = 64) -> dict[str, dict]:
    """setting -> {rate: steps/s, compile_s: the first call's extra seconds} of every variant
    at `batch` that ran without an error."""
    prefix, modes = ("GAN speed ", GAN_MODES) if kind == "gan" else ("classifier speed ", CLF_MODES)
    out = {}
    for r in _rows(path):
        case = r.get("case", "")
        if not case.startswith(prefix) or r.get("error") or not r.get("ours"):
            continue
        mode, bs, *_ = case[len(prefix) :].split(" ")[0].split("_")
        if mode not in modes or bs != f"bs{batch}":
            continue
        rate = float(r["ours"]) / (batch if kind == "gan" else 1)
        if kind == "gan":
            extra = float(r.get("first_step_s") or 0.0)
        else:  # the fit's time beyond its steps at the measured speed
            extra = float(r.get("fit_s") or 0.0) - float(r.get("fit_steps") or 0) / rate
        out[modes[mode]] = {"rate": rate, "compile_s": max(0.0, extra)}
    return out


def table3_plan(gan_json, clf_json, cap: float, want: int = 15000) -> tuple[dict, str]:
    """experiment=paper_table3_full inside `cap` seconds: the classifier setting with the least
    total time (its steps at its speed + a compile per stage), then the GAN setting that fits
    the most of the paper's steps in what is left (its compile counted); eager when nothing was
    measured. Returns ({gan.compile, model.compile, gan.steps}, why)."""
    clf = _variants("clf", clf_json) or {"false": {"rate": EAGER_CLF_STEPS_S, "compile_s": 0.0}}
    clf_s = {
        m: TABLE3_CLF_STEPS / v["rate"]
        + (TABLE3_CLF_STAGES * v["compile_s"] if m != "false" else 0)
        for m, v in clf.items()
    }
    clf_mode = min(clf_s, key=clf_s.get)
    other = clf_s[clf_mode] + TABLE3_REST_S
    gan = _variants("gan", gan_json)
    if not gan:
        rate, _ = last_gan_rate()
        gan = {"null": {"rate": (rate or 0.0) / LIGHTNING_SHARE, "compile_s": 0.0}}
    fits = {
        m: int(0.9 * max(0.0, cap - other - v["compile_s"]) * v["rate"] * LIGHTNING_SHARE)
        for m, v in gan.items()
    }
    gan_mode = max(fits, key=lambda m: (min(fits[m], want), -gan[m]["compile_s"]))
    steps = max(1, min(want, fits[gan_mode])) if gan[gan_mode]["rate"] else want
    why = (
        f"table3: classifier {clf_mode} ({', '.join(f'{m} {t:.0f} s' for m, t in clf_s.items())}), "
        f"GAN {gan_mode} runs {steps} of {want} steps (fit in {cap:.0f} s: "
        + ", ".join(f"{m} {f}" for m, f in fits.items())
        + f"; {other:.0f} s of other work)"
    )
    return {"gan.compile": gan_mode, "model.compile": clf_mode, "gan.steps": steps}, why


def main(argv: list[str]) -> None:
    if argv[:1] == ["fastest"]:
        setting, rate = fastest(argv[1], argv[2], *(int(a) for a in argv[3:4]))
        print(setting, f"{rate:.1f}")
    elif argv[:1] == ["table3"]:  # table3 <gan-speed.json> <clf-speed.json> <cap s>
        plan, why = table3_plan(argv[1], argv[2], float(argv[3]))
        print(why, file=sys.stderr)
        print(" ".join(f"{k}={v}" for k, v in plan.items()))
    elif argv[:1] == ["sized"]:
        name, want, cap, other, *rest = argv[1:]
        jobs = int(rest[0]) if rest else 1
        rate = float(rest[1]) if len(rest) > 1 else None
        steps, why = sized(name, int(want), float(cap), float(other), jobs, rate)
        print(why, file=sys.stderr)
        print(steps)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
