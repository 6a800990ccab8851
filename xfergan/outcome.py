"""What a whole command ends with: the failures Hydra callbacks found after a multirun (failed
or missing jobs, a report that could not be written). run.py exits non-zero when there are any;
a callback cannot (Hydra turns a callback's exception into a warning)."""

from __future__ import annotations

failures: list[str] = []
