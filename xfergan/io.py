"""Atomic writes (temp file + rename) and checked reads for every file another stage reads."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from xfergan.errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and hasattr(value, "name") and not isinstance(value, (int, str)):
        return value.name  # Enum
    return value


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n"
    return atomic_write_bytes(path, text.encode())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); delete it and re-run its stage") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_SHA256: dict[tuple, str] = {}  # (file, size, mtime) -> sha256


def file_key(path: str | os.PathLike) -> tuple:
    """(resolved path, size, mtime): what a per-process cache of a file's content is keyed by
    (the file is read again once it changes). Raises OSError when the file is not there."""
    p = Path(path)
    st = p.stat()
    return str(p.resolve()), st.st_size, st.st_mtime_ns


def sha256_file_once(path: str | os.PathLike) -> str:
    """sha256_file, hashed once per process while the file's size and mtime stay the same (an
    input's identity is asked for several times a stage)."""
    key = file_key(path)
    if key not in _SHA256:
        _SHA256[key] = sha256_file(path)
    return _SHA256[key]


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a file from a user path with `weights_only=True` (no arbitrary code execution)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; pass the path of an existing file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unreadable/untrusted file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot load {what} {path} safely (weights_only=True): {first[:200]}"
        ) from None


def earlier_logs(run_dir: str | os.PathLike) -> list[Path]:
    """csv/metrics.<k>.csv, k = 1, 2, ...: the CSV logs of the earlier attempts a resumed run
    continues (xfergan/training.keep_earlier_log), in attempt order; csv/metrics.csv is the
    latest."""
    found = {f.name.split(".")[1]: f for f in (Path(run_dir) / "csv").glob("metrics.*.csv")}
    return [found[k] for k in sorted((k for k in found if k.isdigit()), key=int)]
