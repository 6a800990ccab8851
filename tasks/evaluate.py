"""task=evaluate run=<finished run dir>: re-test the checkpoint that run tested (its
`tested_checkpoint`; `evaluate.checkpoint=best|last|<path>` picks another) with its own saved
config; any other overrides on the command line change the test set, e.g.

    python run.py task=evaluate run=outputs/runs/mura/... body_part=all
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules.classifier import ClassifierModule
from xfergan.errors import UserError
from xfergan.evaluation import outputs as evaluation
from xfergan.io import read_json
from xfergan.runtime import find_checkpoint, output_dir
from xfergan.training import build_datamodule, build_trainer, load_data, scalar_metrics

log = logging.getLogger(__name__)


def _cli_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        items = list(HydraConfig.get().overrides.task)
    except ValueError:
        return []
    return [
        o
        for o in items
        if o.split("=", 1)[0].lstrip("+~") not in ("task", "run")
        and not o.split("=", 1)[0].lstrip("+~").startswith(("hydra.", "evaluate."))
    ]


def saved_threshold(model: ClassifierModule, run_dir: Path, ckpt: Path) -> float | None:
    """The decision rule the run was tested with: the checkpoint's own (`xfergan_decision`), or
    for runs from before it was saved there, the run's decision_threshold when this is the
    checkpoint it tested. None: argmax."""
    d = getattr(model, "decision", None)
    if d:
        return d.get("threshold")
    mf = run_dir / "metrics.json"
    m = read_json(mf) if mf.is_file() else {}
    if m.get("decision_threshold") is not None and str(ckpt) == str(m.get("tested_checkpoint")):
        return float(m["decision_threshold"])
    return None


def check_inputs(model: ClassifierModule, dm, ckpt: Path) -> None:
    """The test images reach the model as it was trained on them (size, channels,
    normalization) and its classes are theirs, by name: a mismatch measured another thing
    (imagenet normalization on a model trained on [-1, 1] ran and scored 0.24 for 0.14), or
    ended in a tensor traceback. One line naming the difference."""
    spec = model.hparams.get("input_spec") or {}
    have = {"image_size": dm.image_size, "channels": dm.channels, "normalize": dm.normalize}
    for k, v in spec.items():
        if k in have and str(have[k]) != str(v):
            raise UserError(
                f"{ckpt} was trained on dataset.{k}={v}, but this test set has {have[k]}; "
                f"evaluate with dataset.{k}={v}"
            )
    names = model.hparams.get("class_names")
    if names and list(names) != list(dm.class_names):
        raise UserError(
            f"{ckpt} predicts classes {list(names)}, but the test set's are {list(dm.class_names)}"
        )


def run(cfg: DictConfig) -> dict:
    if not cfg.run:
        raise UserError("task=evaluate needs run=<a finished task=classify run dir>")
    run_dir = Path(cfg.run)
    ckpt, kind = find_checkpoint(run_dir, str(cfg.evaluate.checkpoint))  # a finished run?
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{run_dir} has no .hydra/config.yaml: pass a run dir written by run.py")
    base = OmegaConf.load(saved)
    overrides = _cli_overrides()
    with open_dict(base):
        for o in overrides:  # key=value overrides of the saved config (test set, body part, ...)
            key, _, value = o.lstrip("+").partition("=")
            if "=" not in o or key.split("/")[0].split(".")[0] in ("logger", "trainer", "debug"):
                continue
            if OmegaConf.is_config(OmegaConf.select(base, key.replace("/", "."), default=None)):
                raise UserError(
                    f"task=evaluate: {o} picks a config group; it takes key=value settings of "
                    f"the run's saved config (e.g. {key}.body_part=..., {key}.root=...)"
                )
            OmegaConf.update(base, key, yaml.safe_load(value), merge=False)
        # the run's own data paths, this run's output dir
        base.paths.output_dir = cfg.paths.output_dir
        base.task = "evaluate"
        base.logger = cfg.logger
        base.trainer = cfg.trainer
        if "body_part" in base.dataset:
            base.dataset.body_part = base.body_part
    eval_cfg = base
    out = output_dir(cfg)
    model = ClassifierModule.load_safely(str(ckpt))
    dm = build_datamodule(eval_cfg)
    load_data(dm, out)
    if dm.num_classes != model.hparams.num_classes:
        raise UserError(
            f"{ckpt} predicts {model.hparams.num_classes} classes but the test set has "
            f"{dm.num_classes}"
        )
    check_inputs(model, dm, ckpt)
    threshold = saved_threshold(model, run_dir, ckpt)
    trainer = build_trainer(eval_cfg, out, [], [])
    trainer.test(model, datamodule=dm)
    metrics = scalar_metrics(trainer, "test/")
    metrics.update(evaluation.evaluate_test_outputs(model, dm, out, [], threshold))
    metrics.update(evaluation.decided_test_metrics(model, threshold))
    metrics.update(
        {
            "evaluated_run": str(run_dir),
            "evaluated_checkpoint": str(ckpt),
            "evaluated_checkpoint_kind": kind,
            "eval_overrides": ",".join(overrides),
            **dm.sizes(),
        }
    )
    metrics.update(evaluation.tested_sizes(model, metrics["n_test"]))
    return metrics
