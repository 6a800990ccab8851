"""task=classify: train a transfer classifier on real, synthetic or mixed data; test on real data."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_modules.classifier import ClassifierModule
from lightning_modules.nets.backbones import MIN_IMAGE_SIZE
from lightning_modules.semi import FixMatch
from lightning_modules.semi_gan import SemiGAN
from lightning_modules.semi_gan import check_settings as check_semi_gan
from xfergan.errors import UserError
from xfergan.evaluation import outputs as evaluation
from xfergan.ranks import is_global_zero
from xfergan.runtime import output_dir
from xfergan.training import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_trainer,
    fit_time,
    load_data,
    plan_steps,
    resume_checkpoint,
    scalar_metrics,
    smoke_cap,
)

log = logging.getLogger(__name__)

# semi.method -> the module that learns from the unlabelled pool (a new method: its class, its
# settings in xfergan/schema.py's SemiConfig, an entry here)
SEMI_METHODS: dict[str, type[ClassifierModule]] = {"fixmatch": FixMatch, "semi_gan": SemiGAN}


def build_classifier(cfg: DictConfig, dm) -> ClassifierModule:
    mc = cfg.model
    min_size = MIN_IMAGE_SIZE.get(mc.backbone, 32)
    if dm.image_size < min_size:
        raise UserError(
            f"dataset.image_size={dm.image_size} is too small for {mc.backbone} (needs >= "
            f"{min_size}); raise dataset.image_size"
        )
    method = cfg.semi.method
    if method and mc.compile == "graph":
        raise UserError(f"semi.method={method} has no model.compile=graph; use true or false")
    class_weights = None
    if mc.class_weighted_loss:
        counts = dm.class_counts("train")
        total = sum(counts)
        class_weights = [total / (len(counts) * max(1, c)) for c in counts]
    extra = dict(cfg.semi[method]) if method else {}
    if method == "semi_gan":  # its generator draws images like the pool's (before resizing)
        pool = dm.unlabelled_images()
        check_semi_gan(cfg.trainer, int(pool.shape[-1]))
        extra["pool_shape"] = (int(pool.shape[1]), int(pool.shape[-1]))
    return SEMI_METHODS.get(method, ClassifierModule)(
        **extra,
        backbone=mc.backbone,
        num_classes=dm.num_classes,
        in_channels=dm.channels,
        init=mc.init,
        weights=mc.weights,
        finetune=mc.finetune,
        finetune_last_n=mc.finetune_last_n,
        dropout=mc.dropout,
        width=mc.width,
        optimizer=dict(mc.optimizer),
        scheduler=dict(mc.scheduler),
        label_smoothing=mc.label_smoothing,
        class_weights=class_weights,
        channels_last=mc.channels_last,
        compile=mc.compile,
        class_names=dm.class_names,
        input_spec={
            "image_size": dm.image_size,
            "channels": dm.channels,
            "normalize": dm.normalize,
        },
    )


def checkpoint_callbacks(
    cfg: DictConfig, out: Path, has_val: bool
) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """(best, last): the best checkpoint by checkpoint.monitor on val (no val: the latest
    epoch's), and checkpoints/last.ckpt, the weights at the end of every training epoch -- what
    checkpoint.test=last tests and resume=true continues. Lightning's own save_last writes
    last.ckpt only when a top-k checkpoint was saved at that step, so with a monitor it held the
    last improvement on val, not the last weights: a callback of its own saves it every epoch."""
    cc = cfg.checkpoint  # monitor: a val/ or train/ metric (tasks.check_selection)
    monitor = cc.monitor if has_val else None
    best = ModelCheckpoint(
        dirpath=str(out / "checkpoints"),
        filename="best-{epoch:03d}" if monitor else "epoch-{epoch:03d}",
        monitor=monitor,
        mode=cc.mode,
        save_top_k=1,
        every_n_epochs=cc.every_n_epochs,
        auto_insert_metric_name=False,
    )
    last = ModelCheckpoint(
        dirpath=str(out / "checkpoints"),
        filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
        save_top_k=1,  # no monitor: the latest epoch's, overwritten in place
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    return best, last


def step_budget(cfg: DictConfig, dm) -> dict:
    """trainer.max_steps > 0: a budget that does not depend on the training set's size (arms on
    80 or 10,000 images get exactly the same number of steps), run as equal epochs of full
    batches that end at exactly the budget (dm.plan_epochs): checkpoints fall on epoch ends and
    resumed runs continue exactly. `steps`: the budget this run has (for metrics.json)."""
    steps = cfg.trainer.max_steps
    if not steps or steps <= 0:
        return {"steps": None}
    accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    if accumulate > 1:  # the plan counts batches: each arm would make steps / N optimizer steps
        raise UserError(
            f"trainer.accumulate_grad_batches={accumulate} with a step budget "
            f"(trainer.max_steps={steps}): the budget counts batches, so every arm would make "
            f"{steps // accumulate} optimizer steps; use a larger dataset.batch_size, or drop "
            "the budget (trainer.max_steps=-1) and train by epochs"
        )
    steps = smoke_cap(cfg, int(steps))
    epochs = plan_steps(cfg, dm, steps)
    return {"max_epochs": epochs, "max_steps": -1, "min_epochs": None, "steps": int(steps)}


def check_decision(cfg: DictConfig, num_classes: int, n_val: int) -> None:
    """model.decision=val_balanced_acc needs two classes and a val split: refused before
    training (the schema refuses an unknown rule)."""
    if cfg.model.decision == "val_balanced_acc" and (num_classes != 2 or n_val == 0):
        raise UserError(
            f"model.decision=val_balanced_acc needs two classes and a val split (this data has "
            f"{num_classes} classes and {n_val} val images); use model.decision=argmax"
        )


def choose_threshold(cfg: DictConfig, model: ClassifierModule) -> float | None:
    """model.decision=val_balanced_acc: the P(class 1) threshold that maximizes balanced
    accuracy on val (the tested checkpoint's val pass); argmax: None."""
    if cfg.model.decision == "argmax":
        return None
    from xfergan.evaluation.metrics import balanced_acc_threshold

    val = model.collected_outputs("val")
    check_decision(cfg, model.hparams.num_classes, len(val.get("labels", ())))
    return balanced_acc_threshold(val["probs"][:, 1], val["labels"])


def save_decision(ckpt_path: str | None, threshold: float | None) -> None:
    """The decision rule goes into the tested checkpoint (`xfergan_decision`): evaluate and
    predict apply the same threshold the run was tested at."""
    if not ckpt_path or not is_global_zero():
        return
    from xfergan.io import atomic_torch_save, safe_torch_load

    blob = safe_torch_load(ckpt_path, "checkpoint")
    rule = "argmax" if threshold is None else "val_balanced_acc"
    blob["xfergan_decision"] = {"rule": rule, "threshold": threshold}
    atomic_torch_save(blob, ckpt_path)


def init_provenance(cfg: DictConfig, dm) -> tuple[torch.Tensor | None, dict]:
    """model.init=<checkpoint>: it must have seen exactly this run's real images (the synthetic
    arm's model, before fine-tuning), checked like a synthetic set; returns its seen ids."""
    init = str(cfg.model.init)
    if init in ("imagenet", "scratch"):
        return None, {}
    from datamodules.provenance import check_seen
    from xfergan.io import safe_torch_load

    rec = (safe_torch_load(init, "init checkpoint") or {}).get("xfergan_provenance") or {}
    res = check_seen(
        rec.get("seen_uids"),
        rec or None,
        dm,
        dm.splits,
        f"model.init checkpoint {init}",
        str(cfg.dataset.model_provenance),
        "dataset.model_provenance",
    )
    info = {"init_foreign": res["foreign"]}
    if res["foreign"]:
        info["init_foreign_reason"] = res["reason"]
    return rec.get("seen_uids"), info


def write_test_predictions(out: Path, model: ClassifierModule, dm, threshold) -> None:
    """test_predictions.npz: every test image's label and decided class (and P(class 1) for two
    classes), in test-split order, with the split's id digest: what task=report resamples for
    intervals that include the test sample's variance."""
    import io

    import numpy as np

    from datamodules.base import uids_digest
    from xfergan.evaluation.arms import PREDICTIONS
    from xfergan.io import atomic_write_bytes

    o = model.collected_outputs("test")
    if "probs" not in o:
        return
    probs, labels = o["probs"].float(), o["labels"]
    if threshold is not None:
        pred = (probs[:, 1] >= float(threshold)).long()
    else:
        pred = probs.argmax(1)
    blob = {"label": labels.numpy().astype(np.int16), "pred": pred.numpy().astype(np.int16)}
    if probs.shape[1] == 2:
        blob["score"] = probs[:, 1].numpy().astype(np.float32)
    uid = dm.splits.test.uid  # of the images tested (a debug cap tests the first batches)
    uid = uid[: len(labels)] if uid is not None else None
    blob["test_ids_sha256"] = np.array(uids_digest(uid) if uid is not None else "")
    buf = io.BytesIO()
    np.savez_compressed(buf, **blob)
    atomic_write_bytes(out / PREDICTIONS, buf.getvalue())


def run(cfg: DictConfig) -> dict:
    from datamodules.provenance import flat, foreign_reasons, model_record, union
    from xfergan.tracking import update_axes

    out = output_dir(cfg)
    dm = build_datamodule(cfg, use_unlabelled=bool(cfg.semi.method))
    loggers = build_loggers(cfg, out)  # before the data loads: its failures reach the trackers
    load_data(dm, out)
    sizes = dm.sizes()
    check_decision(cfg, dm.num_classes, sizes["n_val"])
    if dm.problems:
        sizes["n_skipped"] = len(dm.problems)
    update_axes(loggers, cfg, sizes)
    model = build_classifier(cfg, dm)  # a checkpoint that does not fit is named first
    if cfg.semi.method:  # the pool's images only: their labels stay in the datamodule
        model.attach_unlabelled(dm.unlabelled_images(), dm.preprocess, int(cfg.seed))
    init_seen, init_info = init_provenance(cfg, dm)
    if getattr(model, "conditional", True) is False:  # its own G: a GAN-quality row
        from tasks.gan import check_feature_net

        init_info.update(check_feature_net(cfg, dm))  # before anything trains
    seen = dm.seen_uids()
    if str(cfg.model.init) not in ("imagenet", "scratch") and init_seen is None:
        seen = None  # an init that recorded no ids (taken with model_provenance=ignore): what
        # this model saw is unknown too, never just this run's images
    model.provenance = model_record(dm, union(seen, init_seen) if seen is not None else None)
    if foreign := foreign_reasons({**dm.synthetic_info, **init_info}):
        model.provenance["foreign"] = foreign  # a teacher or init made from it is foreign too
    if model.init_report:
        log.info("init from %s: %s", cfg.model.init, model.init_report)
    ckpt, last_ckpt = checkpoint_callbacks(cfg, out, has_val=sizes["n_val"] > 0)
    callbacks = [ckpt, last_ckpt, *build_callbacks(cfg, "classify", loggers)]
    if cfg.dataset.source != "real":
        from xfergan.tracking.wandb_backend import artifact_name, record_lineage

        syn = str(cfg.dataset.synthetic_path)
        record_lineage(loggers, {artifact_name("synthetic", syn): syn})
    plan = step_budget(cfg, dm)
    budget = plan.pop("steps")
    trainer = build_trainer(cfg, out, loggers, callbacks, **plan)
    trainer.fit(model, datamodule=dm, ckpt_path=resume_checkpoint(cfg, out))
    metrics: dict = fit_time(trainer)  # fit seconds over every resume (before test restores)
    best, last = ckpt.best_model_path, last_ckpt.best_model_path  # test() restores their state
    which = cfg.checkpoint.test if best else "last"
    ckpt_path = (best if which == "best" else last) or None  # chosen on val only
    if sizes["n_val"] > 0:  # the val numbers of exactly the model that is tested
        trainer.validate(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        metrics.update(scalar_metrics(trainer, "val/"))
    trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    metrics.update(scalar_metrics(trainer, "test/"))
    threshold = choose_threshold(cfg, model)
    metrics.update(evaluation.evaluate_test_outputs(model, dm, out, loggers, threshold))
    if getattr(model, "conditional", True) is False:  # the tested checkpoint's G, on val
        from tasks.gan import evaluate_quality

        metrics.update(evaluate_quality(cfg, model, dm))
    metrics.update(evaluation.decided_test_metrics(model, threshold))
    save_decision(ckpt_path, threshold)
    if is_global_zero():
        write_test_predictions(out, model, dm, threshold)
    metrics.update(flat(model.provenance))
    metrics.update(init_info)
    metrics["tested_checkpoint"] = ckpt_path or "final-weights"
    metrics["tested_checkpoint_kind"] = which if ckpt_path else "final-weights"
    metrics["best_checkpoint"] = best or None
    metrics["last_checkpoint"] = last or None
    metrics["class_names"] = list(dm.class_names)
    metrics["epochs"] = trainer.current_epoch
    metrics["global_step"] = model.classifier_steps(trainer)
    if cfg.semi.method:
        metrics["semi/method"] = str(cfg.semi.method)
    metrics["step_budget"] = budget
    metrics.update(sizes)
    metrics["val_class_counts"] = dm.class_counts("val")  # the labelled budget's val part
    metrics.update(evaluation.tested_sizes(model, sizes["n_test"]))
    return metrics
