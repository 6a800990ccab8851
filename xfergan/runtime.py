"""The job lifecycle every stage runs inside (`run_job`): seeding, the selection rule (no test
number picks anything), a device slot for parallel sweep jobs, the run dir's metrics.json (ok or
failed, with error.txt), nesting (a pipeline's stages are complete run dirs), and the trackers a
job opened finished. Also the run's identity: its metadata, its config digest (what resume
compares), and how a finished run's checkpoint is found. Below the stages; imports no stage."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from xfergan import tracking
from xfergan.devices import device_slot, jobs_per_gpu, sharing, visible_gpus
from xfergan.errors import SelectionError, UserError
from xfergan.io import atomic_write_json, atomic_write_text
from xfergan.ranks import is_global_zero
from xfergan.schema import check_values, enum_name
from xfergan.tracking import resolved_config

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def world_size(cfg: DictConfig) -> int:
    """Processes a DDP run will have (1 otherwise), known before the Trainer exists."""
    tc = cfg.trainer
    if "ddp" not in str(tc.strategy):
        return 1
    devices = tc.devices
    if isinstance(devices, int) and devices > 0:
        n = devices
    elif isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        n = len(devices)
    elif str(devices).isdigit() and int(devices) > 0:
        n = int(devices)
    else:  # "auto" / -1: every visible GPU (Lightning: 1 process on a CPU)
        from xfergan.devices import visible_gpus

        n = max(1, visible_gpus())
    return n * int(tc.num_nodes)


# ----------------------------------------------------------------------------- metrics.json
# keys that change where or how visibly a job runs, never what it computes
VOLATILE_KEYS = {
    "resume": None,
    "paths": None,
    "logger": None,
    "device_pool": None,
    "name": None,  # the experiment's name: a W&B group
    "evaluate": None,
    "dir": None,
    "trainer": ("enable_progress_bar", "enable_model_summary", "default_root_dir", "devices"),
    "callbacks": ("progress_bar", "sample_grid"),
    "dataset": ("cache_dir", "num_workers"),
}


# keys whose value names another stage's output (a file or a run dir): a stage's identity
# covers what they hold now, not only their paths
INPUT_KEYS = (
    "dataset.synthetic_path",
    "model.init",
    "distill.teacher",
    "gan.guidance.teacher",
    "gan.feature_ckpt",
    "synthesize.checkpoint",
)
_DIGESTS: dict[tuple, str] = {}  # a manifest (file, size, mtime) -> the sha256 of what it holds


# what a synthetic set's manifest says about where it came from, not what it holds: its GAN's
# checkpoint bytes (they carry wall time), quality numbers measured afterwards, teacher files
MANIFEST_ORIGIN_KEYS = ("checkpoint", "checkpoint_sha256", "gan_quality", "teachers")


def _file_digest(p: Path) -> str:
    """sha256 of a file's bytes; of a synthetic set's manifest, of what it says the set holds
    (its data file's sha256, counts, the real images behind it ...), not of where it came from."""
    import hashlib
    import json

    from xfergan.io import file_key, sha256_file_once

    if p.name != "manifest.json":
        return sha256_file_once(p)
    key = file_key(p)
    if key not in _DIGESTS:
        try:
            m = json.loads(p.read_text())
        except ValueError:
            m = None
        if not isinstance(m, dict):
            return sha256_file_once(p)
        held = {k: v for k, v in m.items() if k not in MANIFEST_ORIGIN_KEYS}
        _DIGESTS[key] = hashlib.sha256(
            json.dumps(held, sort_keys=True, default=str).encode()
        ).hexdigest()
    return _DIGESTS[key]


def input_file(spec: str) -> Path | None:
    """The file a stage reads for an input path: a synthetic set's manifest.json (it holds its
    data file's sha256), a run dir's tested checkpoint (a GAN run: checkpoints/last.ckpt), or the
    file itself. None when there is nothing there (the stage then says so itself)."""
    p = Path(spec)
    if p.is_file() and (p.parent / "manifest.json").is_file() and p.suffix == ".pt":
        p = p.parent
    if not p.is_dir():
        return p if p.is_file() else None
    if (p / "manifest.json").is_file():
        return p / "manifest.json"
    try:  # a classify run: the checkpoint teachers and inits read (find_checkpoint)
        return find_checkpoint(p, "tested")[0]
    except UserError:  # a GAN run (no tested checkpoint), or one not finished
        last = p / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None


def datamodule_spec(cfg: DictConfig, **overrides: Any) -> dict[str, Any]:
    """The configured datamodule's constructor spec (a user datamodule's `args` merged in);
    `overrides` replace dataset keys (e.g. the GAN's image size)."""
    ds = OmegaConf.to_container(cfg.dataset, resolve=True, enum_to_str=True)
    ds.update(ds.pop("args", None) or {})
    ds.update(overrides)
    return ds


_DATA: dict[str, str | None] = {}  # dataset spec -> data_digest, within one job (run_job clears)


def data_digest(cfg: DictConfig) -> str | None:
    """The content digest of the real images and labels the configured dataset reads (its
    datamodule's content_digest(), computed without decoding); None when it is not known.
    Listed once per job and dataset (a MURA tree's listing takes about a second), again in the
    next job or stage."""
    import json

    from xfergan.errors import instantiate

    spec = datamodule_spec(cfg)
    key = json.dumps([spec, int(cfg.seed)], sort_keys=True, default=str)
    if key not in _DATA:
        try:
            dm = instantiate(spec, seed=cfg.seed, _convert_="all")
        except UserError:  # the stage itself says why, in one line
            return None
        digest = getattr(dm, "content_digest", None)
        _DATA[key] = digest() if callable(digest) else None
    return _DATA[key]


# the real data's key in input_digests; records written before 2026-12-05 do not have it
DATA_KEY = "dataset"


def input_digests(cfg: DictConfig, skip: tuple[str, ...] = (), data: bool = True) -> dict[str, Any]:
    """INPUT_KEYS that are set -> the sha256 of what each names now (a list for an ensemble;
    "missing" where nothing is there), and the real data's content (DATA_KEY; `data` False: left
    out, as records before 2026-12-05 were made): what resume compares besides the settings, so
    a stage whose real images, teacher, synthetic set, init, guide, feature net or GAN changed is
    never reused or continued."""
    out: dict[str, Any] = {}
    if data and (d := data_digest(cfg)) is not None:
        out[DATA_KEY] = d
    for key in INPUT_KEYS:
        if key in skip:
            continue
        v = OmegaConf.select(cfg, key, default=None)
        if v is None or v == "" or (key == "model.init" and str(v) in ("imagenet", "scratch")):
            continue
        many = OmegaConf.is_list(v) or isinstance(v, (list, tuple))
        got = [
            _file_digest(f) if (f := input_file(str(spec))) is not None else "missing"
            for spec in (v if many else [v])
        ]
        out[key] = got if many else got[0]
    return out


def changed_inputs(before: dict | None, now: dict) -> list[str]:
    """The input keys whose content differs between two input_digests records."""
    before = before or {}
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


# inputs that only measure a stage's model (the GAN's feature net): a new one makes the stage
# run again (its numbers change) but its checkpoint is continued, since they shaped no weight
MEASURING_INPUTS = ("gan.feature_ckpt",)
# and the settings that only say how a GAN is measured or how often it is saved: changing one
# re-runs the stage for its numbers, continuing its checkpoint (at its budget: nothing retrains)
MEASURING_KEYS = MEASURING_INPUTS + (
    "gan.eval_n_per_class",
    "gan.eval_split",
    "gan.knn_k",
    "gan.sample_every_n_steps",
    "gan.checkpoint_every_n_steps",
)


# settings added to the schema after records were stamped: left out of the digest while they
# hold the default they were added with, so a record made before is still the same stage
ADDED_KEYS: dict[str, Any] = {"semi.fixmatch.ema_decay": None}  # 2026-12-05
_ANY = object()


def config_digest(
    cfg: DictConfig, skip: tuple[str, ...] = (), legacy: bool = False, data: bool = True
) -> str:
    """sha256 of the resolved config without VOLATILE_KEYS (and, for a stage, without the
    pipeline section no stage reads), with the number of processes in place of the device
    list, and with the content digests of its inputs (input_digests): two runs with the same
    digest computed the same thing from the same bytes. What a resumed pipeline compares before
    it reuses a stage, and (with `skip`=MEASURING_INPUTS) a checkpoint before it is continued:
    then neither the skipped inputs' content nor their paths count (`legacy`: their paths count,
    as checkpoints written before 2026-12-05 were stamped; `data` False: without the real data's
    content, as records before it were stamped: see same_record)."""
    import hashlib
    import json

    c = resolved_config(cfg)

    def pop(key: str, only_if: Any = _ANY) -> None:
        *parents, last = key.split(".")
        node = c
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and (only_if is _ANY or node.get(last, _ANY) == only_if):
            node.pop(last, None)

    for key in () if legacy else skip:  # a new feature net at a new path: still continued
        pop(key)
    for key, default in ADDED_KEYS.items():  # at its default: the digest records made before had
        pop(key, default)
    inputs = input_digests(cfg, skip, data=data and not legacy)
    if inputs:  # (a stage that reads no other stage keeps the digest it had before inputs)
        c["inputs_sha256"] = inputs
    for key, sub in VOLATILE_KEYS.items():
        if sub is None:
            c.pop(key, None)
        elif isinstance(c.get(key), dict):
            for k in sub:
                c[key].pop(k, None)
    if c.get("task") != "pipeline":
        c.pop("pipeline", None)
    c["world_size"] = world_size(cfg)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()


def same_record(
    stamp: str | None, inputs: dict | None, cfg: DictConfig, skip: tuple[str, ...] = ()
) -> bool:
    """Whether a record's config digest (a finished stage's metrics.json, a checkpoint's stamp;
    `inputs` its input digests) is the one asked for now. A record stamped by an earlier form of
    the digest is compared as it was made, and one log line says so: before the real data's
    content joined it (no DATA_KEY among its inputs: the data by its path), a checkpoint before
    the measuring settings were left out of its stamp (only MEASURING_INPUTS were), and one from
    before 2026-12-05 with every path (`legacy`)."""
    if stamp is None:
        return False
    if stamp == config_digest(cfg, skip):
        return True
    has_data = DATA_KEY in (inputs or {})
    older = [] if has_data else [(skip, False)]
    if skip:
        older.append((tuple(k for k in skip if k in MEASURING_INPUTS), has_data))
        if not has_data:
            older.append((None, False))  # legacy
    for sk, data in older:
        made = (
            config_digest(cfg, skip, legacy=True)
            if sk is None
            else config_digest(cfg, sk, data=data)
        )
        if stamp == made:
            log.info(
                "resume: a record stamped by an earlier form of the stage identity is taken as "
                "it was made%s",
                "" if has_data else " (the real data by its path: before its content counted)",
            )
            return True
    return False


def run_meta(cfg: DictConfig) -> dict[str, Any]:
    """Flat keys every metrics.json carries, so reports can group runs without reading configs."""
    meta: dict[str, Any] = {
        "task": enum_name(cfg.task),
        "seed": int(cfg.seed),
        "name": cfg.name,
        "dataset": cfg.dataset.name,
        "source": cfg.dataset.source,
        "n_per_class": cfg.dataset.n_per_class,
        "body_part": enum_name(cfg.body_part),
        "model": cfg.model.backbone,
        "arm": cfg.get("arm"),
        "config_sha256": config_digest(cfg),
        "inputs_sha256": input_digests(cfg),
    }
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        meta["overrides"] = ",".join(hc.overrides.task)
        meta["job_num"] = hc.job.num if hc.mode.name == "MULTIRUN" else None
    except ValueError:  # not under Hydra (tests calling a task directly)
        meta["overrides"] = ""
    return meta


def write_metrics(out: Path, metrics: dict[str, Any], cfg: DictConfig, **extra: Any) -> dict:
    payload = {**run_meta(cfg), **extra, **metrics}
    if is_global_zero():
        atomic_write_json(out / METRICS_FILE, payload)
    return payload


def write_problems(out: Path, problems: list[dict]) -> None:
    """List every skipped input (path, reason) in the run dir, so nothing is lost silently."""
    if not problems or not is_global_zero():
        return
    import csv
    import io

    from xfergan.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["split", "path", "reason"])
    w.writeheader()
    w.writerows(problems)
    atomic_write_text(out / "skipped_images.csv", buf.getvalue())


# ----------------------------------------------------------------------------- finished runs
def find_checkpoint(run_dir: Path, which: str = "tested") -> tuple[Path, str]:
    """(checkpoint, kind) of a finished task=classify run dir (a pipeline stage dir too): the one
    it tested, or best / last / a path. The one resolver evaluate, predict and pseudolabel use;
    a relative recorded path is relative to the run's checkpoints/."""
    from xfergan.errors import UserError

    if which not in ("tested", "best", "last"):
        p = Path(which)
        if not p.is_file():
            raise UserError(f"evaluate.checkpoint={which}: no such file (use tested, best, last)")
        return p, "path"
    from xfergan.io import read_json

    mf = run_dir / "metrics.json"
    if not mf.is_file():
        raise UserError(f"{run_dir} has no metrics.json: is it a finished task=classify run?")
    m = read_json(mf)
    if m.get("status") != "ok":
        raise UserError(f"{run_dir} did not finish ({m.get('error') or m.get('status')})")
    key = {"tested": "tested_checkpoint", "best": "best_checkpoint", "last": "last_checkpoint"}
    p = m.get(key[which])
    if p and not Path(p).is_absolute() and not Path(p).is_file():  # a file name (older runs)
        p = str(run_dir / "checkpoints" / Path(p).name)
    if not p or not Path(p).is_file():
        raise UserError(
            f"{run_dir}: its {which} checkpoint ({p or 'none recorded'}) does not exist; pass "
            "evaluate.checkpoint=best|last|<path>"
        )
    kind = m.get("tested_checkpoint_kind", which) if which == "tested" else which
    return Path(p), kind


def _pool_size(cfg: DictConfig) -> int:
    """GPUs to share out, one per job: only for jobs of a multirun asking for one device."""
    if not cfg.get("device_pool", True) or str(cfg.trainer.accelerator) not in (
        "auto",
        "gpu",
        "cuda",
    ):
        return 0
    if str(cfg.trainer.devices) not in ("1", "auto") or "ddp" in str(cfg.trainer.strategy):
        return 0
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.get().mode.name != "MULTIRUN":
            return 0
    except ValueError:
        return 0
    return visible_gpus()


CHOOSABLE = ("val/", "train/")  # what may pick a checkpoint, a threshold or a setting


def choosable(key: str) -> bool:
    """An allow-list, not a deny-prefix: a val/ or train/ number, and no part of its name a
    test one (val/x_test, train/test/acc are refused too)."""
    key = str(key)
    return key.startswith(CHOOSABLE) and not any(
        part.startswith("test") for part in key.replace("_", "/").split("/")
    )


def check_selection(cfg: DictConfig) -> None:
    """No test label in any choice: what picks a checkpoint, a threshold or a hyper-parameter
    (sweep.objective, checkpoint.monitor, every callback's monitor) is a val/ or train/ number."""
    checks = [
        ("sweep.objective", cfg.sweep.objective),
        ("checkpoint.monitor", cfg.checkpoint.monitor),
    ]
    for name, cb in (cfg.get("callbacks") or {}).items():
        if cb and cb.get("monitor"):  # early stopping, checkpoints, ...
            checks.append((f"callbacks.{name}.monitor", cb.monitor))
    for key, value in checks:
        if not choosable(value):
            raise SelectionError(
                f"{key}={value}: choices (checkpoints, sweeps, early stopping) may only use a "
                "val/ or train/ metric -- test numbers are reported, never chosen on; use e.g. "
                "val/acc"
            )


def _where_job() -> None:
    """[job k/N] in every progress line of a multirun job."""
    from xfergan import progress

    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode.name == "MULTIRUN":
            progress.where.job, progress.where.jobs = int(hc.job.num) + 1, progress.sweep_size()
    except ValueError:
        pass


_depth = 0  # nesting of run_job calls (a pipeline runs its stages through run_job)


def run_job(cfg: DictConfig, stage: Callable[[DictConfig], dict]) -> dict[str, Any]:
    """One job (or a pipeline's stage) of `stage`: seed, selection check, device slot, its
    metrics.json (ok or failed, with error.txt), and every tracker it opened finished."""
    global _depth
    out = output_dir(cfg)
    # CPU: flush denormal floats to zero. Tiny GAN weights and gradients otherwise turn into
    # denormals that make CPU arithmetic ~100x slower mid-training (no effect on GPUs).
    torch.set_flush_denormal(True)
    t0 = time.time()
    failed = True
    payload: dict[str, Any] | None = None
    _DATA.clear()  # the real data is listed again for each job and stage
    tracking.start_job()
    zero = is_global_zero()  # only rank zero writes files (DDP children write none)
    pid_file = out / "job.pid"  # which process runs this job (to inspect or stop it)
    if zero:
        pid_file.write_text(f"{os.getpid()}\n")
        if _depth:  # a pipeline's stage: a complete run dir (evaluate, predict, teacher= read it)
            from omegaconf import OmegaConf

            (out / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    if not _depth:
        _where_job()
    try:
        check_selection(cfg)
        check_values(cfg)
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)  # a checked seed
        # a pipeline's stages run inside their job's slot: only the outermost run_job takes one
        with device_slot(_pool_size(cfg) if not _depth else 0) as slot:
            if slot is not None:  # a parallel sweep job: a seat on one GPU (queued when all taken)
                with open_dict(cfg):
                    cfg.trainer.devices = [slot]
                torch.cuda.set_device(slot)  # every stage's own tensors land there too
                k = jobs_per_gpu()
                log.info(
                    "sweep job pinned to GPU %d (%d job%s per GPU%s)",
                    slot,
                    k,
                    "s" if k > 1 else "",
                    f", shared by {sharing()}" if k > 1 else "",
                )
            _depth += 1
            try:
                metrics = stage(cfg)
            finally:
                _depth -= 1
        failed = False
        payload = write_metrics(out, metrics, cfg, status="ok", wall_s=round(time.time() - t0, 2))
        return payload
    except BaseException as e:
        kind = "error" if isinstance(e, UserError) else type(e).__name__
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        try:
            if zero:
                atomic_write_text(out / "error.txt", traceback.format_exc())
            payload = write_metrics(
                out,
                {},
                cfg,
                status="failed",
                error=f"{kind}: {msg}",
                wall_s=round(time.time() - t0, 2),
            )
        except Exception:  # noqa: BLE001 - never hide the original error
            log.exception("could not record the failure in %s", out)
        raise
    finally:
        tracking.finish_job(payload, failed, out)
        if zero:
            pid_file.unlink(missing_ok=True)
