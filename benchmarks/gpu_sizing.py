"""Sizing for benchmarks/gpu_check.sh: which compile mode its end-to-end runs use and how many
GAN steps fit a step's time cap, from what this very check (or an earlier one) measured.

    python benchmarks/gpu_sizing.py fastest gan <gan-speed.json> [batch]  # -> "graph 301.2"
    python benchmarks/gpu_sizing.py fastest clf <clf-speed.json>          # -> "graph 160.4"
    python benchmarks/gpu_sizing.py sized <name> <want> <cap s> <other s> [jobs] [steps/s]

`fastest` prints the setting value (gan.compile / model.compile) of the fastest variant that ran
without an error and its speed in steps/s ("null 0" / "false 0" when the file has none);
`sized` prints the G+D steps that fit 90% of (cap - other) at that speed, never more than asked
(as asked when no speed is known), and says why on stderr (gpu_check appends it to sized.log).
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
    gan_speed (`kind` "gan": img/s rows) or clf_speed ("clf": steps/s rows) case."""
    prefix, modes = ("GAN speed ", GAN_MODES) if kind == "gan" else ("classifier speed ", CLF_MODES)
    best = (modes["eager"], 0.0)
    for r in _rows(path):
        case = r.get("case", "")
        if not case.startswith(prefix) or r.get("error") or not r.get("ours"):
            continue
        name = case[len(prefix) :].split(" ")[0]  # e.g. graph_bs64_bf16
        mode, bs, *_ = name.split("_")
        if mode not in modes or bs != f"bs{batch}":
            continue
        rate = float(r["ours"]) / (batch if kind == "gan" else 1)
        if rate > best[1]:
            best = (modes[mode], rate)
    return best


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


def main(argv: list[str]) -> None:
    if argv[:1] == ["fastest"]:
        setting, rate = fastest(argv[1], argv[2], *(int(a) for a in argv[3:4]))
        print(setting, f"{rate:.1f}")
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
