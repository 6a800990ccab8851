"""MLflow (a tracker you host yourself) through Lightning's MLFlowLogger, with the logging
contract of xfergan/tracking/__init__.py: experiment = `logger.group` (the experiment name), run name from
the comparison axes, every config key as a flattened param (the axes as top-level params:
`params.source`, `params.n_per_class`, ...), tags for group / job_type / arm, and at the end every
scalar of metrics.json as a metric (strings as tags), metrics.json and the PNGs as artifacts, and
the run's status (FINISHED / FAILED). Optional: pip install -e ".[mlflow]".

A server that does not answer within `logger.init_timeout` costs one warning line, not the run."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xfergan.tracking import on_finish, reason

log = logging.getLogger(__name__)


def tracking_uri(cfg: DictConfig) -> str:
    uri = cfg.logger.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return str(uri)
    return (Path(cfg.paths.log_dir) / "mlruns").resolve().as_uri()


def unreachable(uri: str, timeout: float) -> str | None:
    """Why an http(s) tracking server cannot be used now (None: it answers)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status == 200:
                return None
            return f"HTTP {r.status} from {uri}/health"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"{uri} does not answer ({getattr(e, 'reason', e)})"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    out[prefix.rstrip("/")] = d
    return out


def make_mlflow_logger(
    cfg: DictConfig,
    out: Path,
    job_type: str | None = None,
    tags: list[str] | None = None,
    sizes: dict | None = None,
):
    from xfergan.ranks import is_global_zero
    from xfergan.tracking import axes, register, resolved_config, run_name

    if not is_global_zero():  # a DDP child: rank zero logs
        return None
    try:
        from pytorch_lightning.loggers import MLFlowLogger
    except ImportError:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        log.warning("logger.mlflow=true but mlflow is not installed: pip install -e '.[mlflow]'")
        return None
    lc = cfg.logger
    uri = tracking_uri(cfg)
    why = unreachable(uri, float(lc.init_timeout))
    if why:
        log.warning("MLflow: %s; this run goes on without MLflow (metrics.json has it all)", why)
        return None
    # a server that stops answering later must not stall the run in retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(lc.init_timeout))))
    ax = axes(cfg, sizes)
    run_tags = {
        "group": str(lc.group),
        "job_type": str(job_type or lc.job_type),
        "task": str(cfg.task),
        **{f"axis.{k}": str(v) for k, v in ax.items()},
        **{t: "1" for t in tags or []},
    }
    try:
        lg = MLFlowLogger(
            experiment_name=str(lc.group or cfg.name),
            run_name=run_name(cfg, job_type),
            tracking_uri=uri,
            tags=run_tags,
            log_model=False,
        )
        params = {k: str(v)[:500] for k, v in _flat(resolved_config(cfg)).items()}
        params.update({k: str(v) for k, v in ax.items()})  # the axes, top level
        lg.log_hyperparams(params)
    except Exception as e:  # noqa: BLE001 - a tracker never costs the run
        log.warning("MLflow could not start (%s); this run goes on without MLflow", reason(e))
        return None
    register("mlflow", lg)
    return lg


def finish_mlflow(lg, summary: dict, failed: bool, out: Path | None) -> None:
    import time

    from mlflow.entities import Metric

    client, run_id = lg.experiment, lg.run_id
    now = int(time.time() * 1000)
    metrics = [
        Metric(k, float(v), now, 0)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500])
    for k, v in summary.items():
        if isinstance(v, (str, bool)):
            client.set_tag(run_id, k, str(v)[:4000])
    if out is not None:
        for f in [out / "metrics.json", *sorted(out.glob("*.png"))]:
            if f.is_file():
                client.log_artifact(run_id, str(f))
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


on_finish("mlflow", per_logger=finish_mlflow)
