"""Copy a finished run's report files into results/<name>/ with run.json: the exact command,
the commit, the machine and the wall time that produced them (every figure in README comes from
such a folder).

    python results/record.py <name> <run or sweep dir> --command "<the command>" \
        --wall-s <seconds> [--files report.md plot_arms.png ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from xfergan.machine import commit, machine  # noqa: E402


def clear_earlier(dst: Path) -> None:
    """What an earlier recording into `dst` wrote (its run.json's files, jobs/, predictions/):
    removed, so nothing of another run stays beside this one's run.json. Files written by hand
    (README.md, notes) stay."""
    old = dst / "run.json"
    if not old.is_file():
        return
    try:
        files = json.loads(old.read_text()).get("files") or []
    except ValueError:
        files = []
    for f in [*files, "run.json", "metrics.json"]:
        (dst / f).unlink(missing_ok=True)
    for d in ("jobs", "predictions"):
        shutil.rmtree(dst / d, ignore_errors=True)


def dirty(repo: Path) -> bool | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("name")
    ap.add_argument("run_dir")
    ap.add_argument("--command", required=True)
    ap.add_argument("--commit", default=None, help="default: the checkout's HEAD")
    ap.add_argument("--wall-s", type=float, default=None)
    ap.add_argument("--files", nargs="*", default=["report.md", "report.json", "report.csv"])
    ap.add_argument("--glob", nargs="*", default=["plot_*.png"])
    ap.add_argument("--note", default=None)
    ap.add_argument("--dest", default=None, help="default: results/<name>")
    a = ap.parse_args()
    src, dst = Path(a.run_dir).resolve(), Path(a.dest) if a.dest else HERE / a.name
    dst.mkdir(parents=True, exist_ok=True)
    clear_earlier(dst)
    copied = []

    def flat(f: Path) -> str:  # a/b/c.json -> a__b__c.json: nested files never collide
        f = f.resolve()
        return f.relative_to(src).as_posix().replace("/", "__") if f.is_relative_to(src) else f.name

    named = [src / f for f in a.files if (src / f).is_file()]
    absent = [f for f in a.files if not (src / f).is_file()]
    if absent:  # said, and kept in run.json: a record never claims a file it lacks
        print(f"record: not in {src}: {', '.join(absent)}", file=sys.stderr)
    for f in named + [f for pattern in a.glob for f in sorted(src.glob(pattern))]:
        copied.append(flat(f))
        shutil.copy(f, dst / copied[-1])
    # every job's (or pipeline stage's) own numbers, per seed, at any depth (a sweep nested in
    # the sweep dir, e.g. seeds added later, is part of its report)
    jobs = sorted(f for f in src.rglob("metrics.json") if f.parent != src)
    for f in jobs:
        (dst / "jobs").mkdir(exist_ok=True)
        shutil.copy(f, dst / "jobs" / f"{flat(f.parent)}.json")
    # every stage's per-image test predictions (what the report's bootstrap resamples), so the
    # intervals can be recomputed from the committed files
    predictions = sorted(src.rglob("test_predictions.npz"))
    for f in predictions:
        (dst / "predictions").mkdir(exist_ok=True)
        name = flat(f.parent) if f.parent != src else "run"
        shutil.copy(f, dst / "predictions" / f"{name}.npz")
    if (src / "metrics.json").is_file() and "metrics.json" not in copied:  # a single run
        shutil.copy(src / "metrics.json", dst)
        copied.append("metrics.json")
    run = {
        "command": a.command,
        "commit": a.commit or commit(HERE),
        # --commit names the commit that ran; without it, the recording checkout's HEAD, and
        # whether that checkout had changes not committed
        **({} if a.commit else {"checkout_dirty": dirty(HERE)}),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "wall_s": a.wall_s,
        "source_dir": str(src),
        "files": copied,
        "jobs": len(jobs),  # jobs/: every job's and stage's metrics.json
        "predictions": len(predictions),  # predictions/: every test_predictions.npz
    }
    if absent:
        run["files_not_found"] = absent
    if a.note:
        run["note"] = a.note
    (dst / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {dst} ({len(copied)} files)")


if __name__ == "__main__":
    main()
