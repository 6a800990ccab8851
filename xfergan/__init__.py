"""Shared, dependency-free utilities for xfergan: config schemas, atomic file I/O, user errors.

Every other package (datamodules, lightning_modules, tasks) may import from here; this package
imports none of them.
"""

from xfergan.errors import UserError

__all__ = ["UserError"]
