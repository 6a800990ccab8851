"""Read an offline W&B run (`wandb/offline-run-*/run-*.wandb`) back without the network: run
name, group, job_type, tags, final config, final summary and the history keys. The file is a
LevelDB-style log: a 7-byte header, 32 KiB blocks, records with 7-byte headers (crc32, length,
type FULL/FIRST/MIDDLE/LAST) holding wandb_internal_pb2.Record protobufs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def records(path: Path):
    data, pos, block, buf = Path(path).read_bytes(), 7, 32768, b""
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def _set(d: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = value


def _config(config: dict, items) -> None:
    for item in items:
        _set(config, [item.key] if item.key else list(item.nested_key), json.loads(item.value_json))


def read_offline_run(path: Path, settle_s: float = 30.0) -> dict[str, Any]:
    """The run as written so far. W&B's service writes the file after `wandb.finish` returns, and
    a finished run's last record is `exit`: a file without it that was written to within
    `settle_s` is read again (every 0.2 s, at most `settle_s`) until the exit record is there. A
    killed run's old file is read at once, as it is."""
    path = Path(path)
    deadline = time.monotonic() + settle_s
    while True:
        fresh = time.time() - path.stat().st_mtime < settle_s
        try:
            out = _read_once(path)
        except Exception:  # noqa: BLE001 - a record still being written: read again
            if not fresh or time.monotonic() > deadline:
                raise
            out = {}
        if "exit_code" in out or not fresh or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_once(path: Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2

    out: dict[str, Any] = {
        "file": str(path),
        "config": {},
        "summary": {},
        "history_keys": set(),
    }
    for data in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.update(
                name=r.display_name,
                group=r.run_group,
                job_type=r.job_type,
                tags=list(r.tags),
            )
            _config(out["config"], r.config.update)
        elif kind == "config":
            _config(out["config"], rec.config.update)
        elif kind == "summary":
            for item in rec.summary.update:
                keys = [item.key] if item.key else list(item.nested_key)
                value = json.loads(item.value_json)
                if (
                    len(keys) == 1
                    and isinstance(value, dict)
                    and isinstance(out["summary"].get(keys[0]), dict)
                ):
                    out["summary"][keys[0]].update(value)
                else:
                    _set(out["summary"], keys, value)
        elif kind == "history":
            for item in rec.history.item:
                out["history_keys"].add(item.key or item.nested_key[0])  # an image: [key, field]
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    # W&B stores each config value as {"value": v}
    out["config"] = {
        k: (v["value"] if isinstance(v, dict) and set(v) == {"value"} else v)
        for k, v in out["config"].items()
    }
    return out
