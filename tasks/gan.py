"""task=gan: train the conditional GAN on exactly the few-shot subset the classifier sees (same
datamodule, same sampling code, same seed), save checkpoints, log a fixed-noise sample grid (one
row per class) every N steps, and measure quality offline (FID/KID/precision/recall/memorization)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from torchvision.utils import save_image

from lightning_modules.gan import GANDivergedError
from xfergan.devices import job_device
from xfergan.errors import UserError
from xfergan.runtime import output_dir, world_size
from xfergan.schema import GAN_LOOP_KEYS
from xfergan.tracking.wandb_backend import artifact_name, log_image, record_lineage
from xfergan.training import (
    batch_limit,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_trainer,
    fit_time,
    load_data,
    plan_steps,
    resume_checkpoint,
    trained_steps,
)

log = logging.getLogger(__name__)


def gan_datamodule(cfg: DictConfig):
    """The classifier's datamodule (same few-shot subset), at the GAN's size, scaled to [-1, 1],
    real images only, the data's own channels (1 for X-rays and MNIST, 3 for colour images)."""
    g = cfg.gan
    return build_datamodule(
        cfg,
        image_size=g.image_size,
        channels=None,
        normalize="half",
        augment={"enabled": False},
        batch_size=g.batch_size,
        source="real",
        balanced_sampler=False,
    )


class SampleGrid(pl.Callback):
    """Every N G+D steps (and at the end): EMA samples, one row per class, same noise every
    time; written to samples/ and logged to every logger that takes images."""

    def __init__(self, out: str | Path, every_n_steps: int):
        self.dir = Path(out) / "samples"
        self.every = max(1, int(every_n_steps))

    def write(self, trainer, module, name: str) -> Path:
        grid = module.sample_grid_images().cpu()
        path = self.dir / f"{name}.png"
        self.dir.mkdir(parents=True, exist_ok=True)
        save_image(grid, path, nrow=len(grid) // module.hparams.num_classes, padding=2)
        log_image(trainer.loggers, "gan/samples", path, caption=name)
        return path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.is_global_zero and module.steps_done % self.every == 0:
            self.write(trainer, module, f"step_{module.steps_done:06d}")

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            p = self.write(trainer, module, "final")
            (self.dir.parent / "samples_final.png").write_bytes(p.read_bytes())


def set_guidance(cfg: DictConfig, dm, model) -> dict:
    """gan.guidance.teacher: a frozen classifier of this run's own real subset steers G (its
    provenance is checked like any teacher's). What the guide saw becomes part of what the GAN
    saw (model.provenance's train_uids, so its images carry it: a guide of another subset,
    allowed by dataset.model_provenance=ignore, makes the GAN's set foreign to this subset
    too). Returns the metrics.json keys that record it."""
    from datamodules.provenance import foreign_reasons
    from lightning_modules.teachers import load_teachers, teacher_seen

    g = cfg.gan.guidance
    weight = float(g.weight)
    if weight < 0:
        raise UserError(f"gan.guidance.weight={weight}: use a weight >= 0 (0 turns guidance off)")
    if not g.teacher or weight == 0:
        return {}
    ((teacher, path),) = load_teachers(str(g.teacher), dm.num_classes, "gan.guidance.teacher")
    out: dict = {}
    (seen,) = teacher_seen(
        cfg, dm, [(teacher, path)], out, prefix="guidance/teacher", label="gan.guidance.teacher"
    )
    model.set_guidance(teacher, weight)
    add_seen(model, seen)
    model.provenance["guidance_teacher"] = str(path)
    if foreign := foreign_reasons(out):  # its images carry it on (datamodules.provenance)
        model.provenance["foreign"] = foreign
    return {**out, "guidance/teacher": str(path), "guidance/weight": weight}


def eval_split(cfg: DictConfig) -> str:
    """gan.eval_split: the real images GAN quality is measured against."""
    split = str(cfg.gan.eval_split)
    if split not in ("val", "test"):
        raise UserError(f"gan.eval_split={split!r}: use val (choosable) or test (reported only)")
    return split


def check_feature_net(cfg: DictConfig, dm) -> dict:
    """gan.feature_ckpt measures the GAN against gan.eval_split's images: it must not have seen
    them, nor the test images (datamodules.provenance.check_instrument). Returns the
    metrics.json keys that record it (its checkpoint's sha256 too)."""
    from datamodules.provenance import check_instrument
    from xfergan.io import safe_torch_load
    from xfergan.runtime import input_digests

    path = cfg.gan.feature_ckpt
    if not path:
        return {}
    split = eval_split(cfg)
    rec = (safe_torch_load(path, "gan.feature_ckpt") or {}).get("xfergan_provenance") or {}
    res = check_instrument(
        rec.get("seen_uids"),
        dm,
        split,
        f"gan.feature_ckpt {path}",
        str(cfg.dataset.model_provenance),
        "dataset.model_provenance",
    )
    out = {
        "feature_net_foreign": res["foreign"],
        "feature_net_sha256": input_digests(cfg).get("gan.feature_ckpt"),
    }
    if res["foreign"]:
        out["feature_net_foreign_reason"] = res["reason"]
    return out


def add_seen(model, seen) -> None:
    """Another model that shapes G (a guide) saw `seen`: the GAN's record covers them (unknown
    when they are unknown), as a pseudolabelled set's record covers its teachers'."""
    from datamodules.provenance import uids_digest, union

    p = model.provenance
    both = (
        union(p["train_uids"], seen) if p["train_uids"] is not None and seen is not None else None
    )
    p["train_uids"] = both
    p["train_ids_sha256"] = uids_digest(both) if both is not None else None
    p["n_images"] = len(both) if both is not None else None


def build_gan(cfg: DictConfig, dm):
    """The configured GAN module (`gan._target_`) for this datamodule's classes and channels."""
    from omegaconf import OmegaConf

    from xfergan.errors import instantiate

    g = OmegaConf.to_container(cfg.gan, resolve=True)
    args = {k: v for k, v in g.items() if k not in GAN_LOOP_KEYS}
    return instantiate(  # a bad gan.* value: the module's own one-line error
        {"_target_": g["_target_"], **args},
        num_classes=dm.num_classes,
        channels=dm.channels,
        class_names=dm.class_names,
        _convert_="all",
        _recursive_=False,
    )


def check_precision(cfg: DictConfig) -> None:
    """The GAN's EMA generator moves by (1 - 0.999) of a step: below half a unit of bf16's
    precision, so under trainer.precision=bf16-true (or 16-true) most of its weights never
    move. Refused in one line (bf16-mixed keeps the weights in fp32)."""
    precision = str(cfg.trainer.get("precision") or "32-true")
    if precision in ("bf16-true", "16-true", "bf16", "16", "half"):
        raise UserError(
            f"trainer.precision={precision} for a GAN: its EMA generator's updates are below "
            "the format's precision (most weights never move); use bf16-mixed or 32-true"
        )


def run(cfg: DictConfig) -> dict:
    check_precision(cfg)
    out = output_dir(cfg)
    dm = gan_datamodule(cfg)
    load_data(dm, out)
    model = build_gan(cfg, dm)
    model.provenance = {**dm.provenance(), "train_uids": dm.real_train.uid}
    if hasattr(model.D, "provenance_record"):  # outside knowledge: the pretrained D backbone
        model.provenance["discriminator_backbone"] = model.D.provenance_record
    guidance = set_guidance(cfg, dm, model)
    guidance.update(check_feature_net(cfg, dm))  # before anything trains
    loggers = build_loggers(cfg, out, job_type="gan", tags=["gan"], sizes=dm.sizes())
    # A step budget runs as whole epochs of full batches that end at exactly gan.steps
    # (dm.plan_epochs), and checkpoints are taken at epoch ends: a resumed run then continues
    # exactly as the uninterrupted one (Lightning's mid-epoch restore replays batches wrongly).
    limit = batch_limit(cfg, "train")  # debug=smoke: 2 batches per epoch
    if cfg.gan.steps:
        epochs = plan_steps(cfg, dm, int(cfg.gan.steps))
    else:
        epochs = int(cfg.gan.epochs)
    bpe = dm.batches_per_epoch(world_size(cfg))
    bpe = min(bpe, limit) if limit else bpe
    ckpt = ModelCheckpoint(
        dirpath=str(out / "checkpoints"),
        filename="gan-{epoch:05d}",
        every_n_epochs=max(1, round(int(cfg.gan.checkpoint_every_n_steps) / bpe)),
        save_top_k=-1,
        save_last=True,
        monitor=None,
    )
    trainer = build_trainer(
        cfg,
        out,
        loggers,
        [ckpt, *build_callbacks(cfg, "gan", loggers)],
        max_epochs=epochs,
        max_steps=-1,
        limit_val_batches=0,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        limit_train_batches=limit,
        gradient_clip_val=None,
    )
    last = out / "checkpoints" / "last.ckpt"
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=resume_checkpoint(cfg, out))
    except GANDivergedError as e:
        good = ckpt.last_model_path or "none yet"
        raise UserError(f"{e}; last good checkpoint: {good}") from None
    clock = fit_time(trainer, "gan/")  # fit seconds of all its steps, over every resume
    if trained_steps(trainer) or not last.is_file():  # the final state, whatever the cadence;
        trainer.save_checkpoint(str(last))  # a resume at its budget rewrites nothing
    record_lineage(loggers, {}, (artifact_name("gan", last), "model", str(last)))
    metrics = {
        "gan/steps": int(model.steps),
        "gan/epochs": trainer.current_epoch,
        "gan/checkpoint": str(last),
        **clock,
        # the real images it was fitted on (a pipeline's GAN variants share them), and every
        # real image behind it (its guide's too): what its synthetic set carries
        "gan/train_ids_sha256": dm.provenance().get("train_ids_sha256"),
        "gan/seen_ids_sha256": model.provenance.get("train_ids_sha256"),
        **dm.sizes(),
    }
    metrics.update(evaluate_quality(cfg, model, dm))
    metrics.update(guidance)
    return metrics


def evaluate_quality(cfg: DictConfig, model, dm) -> dict:
    """FID/KID/precision/recall/memorization with a classifier of our own as the feature net,
    against the real images of `gan.eval_split` (val by default: what a user may choose a GAN
    by; test gives test/gan_* keys, refused as choosers). Up to gan.eval_n_per_class real
    images per class, gan.eval_n_per_class samples per class for FID/KID, and as many samples of
    each class as there are real images of it for precision/recall (gan_quality says why). On
    the job's device (job_device: where training ran; Lightning hands the module back on the
    CPU after fit), the samples drawn with a generator on that device. A model whose
    generator has no classes (`conditional = False`: the semi-supervised GAN's) is measured
    class-blind: precision/recall over as many fakes as real images, no per-class recall, and
    its memorization against every image it was fitted to (the labelled ones and the pool)."""
    from lightning_modules.classifier import ClassifierModule
    from lightning_modules.gan_metrics import FeatureNet, gan_quality

    path = cfg.gan.feature_ckpt
    if not path:
        log.warning(
            "gan.feature_ckpt not set: no FID/KID/precision/recall (pass a classifier "
            "checkpoint trained by task=classify with dataset.n_per_class=null and this run's "
            "seed and val settings: its val split is then this run's)"
        )
        return {}
    split = eval_split(cfg)
    ref = getattr(dm.splits, split)
    if len(ref) == 0:
        log.warning("gan.eval_split=%s is empty: no FID/KID/precision/recall", split)
        return {}
    clf = ClassifierModule.load_safely(path)
    spec = clf.hparams.input_spec or {}
    dev = job_device(cfg)
    feats = FeatureNet(
        clf, spec.get("image_size", 32), spec.get("channels", 3), spec.get("normalize", "imagenet")
    ).to(dev)
    k = dm.num_classes
    n = int(cfg.gan.eval_n_per_class)
    seed = int(cfg.seed) + 12345
    gen = torch.Generator().manual_seed(seed)  # which real images
    ry = ref.y.cpu()
    idx = torch.cat(
        [
            (ids := torch.nonzero(ry == c).flatten())[torch.randperm(len(ids), generator=gen)[:n]]
            for c in range(k)
        ]
    )
    size = getattr(model, "image_side", None) or cfg.gan.image_size
    real = to_gan_size(ref.x[idx.to(ref.x.device)].to(dev).float() / 255.0, size)
    real_y = ry[idx]
    # the fakes in the reference's class mix (k x n of them in all): a val split with fewer
    # images of some class (PneumoniaMNIST's 135 normal / 389 pneumonia) against balanced fakes
    # inflated FID and KID even for a perfect generator. Balanced val: n per class, as before.
    share = torch.bincount(real_y, minlength=k).double() / len(real_y)
    fake_y = torch.arange(k).repeat_interleave((share * k * n).round().long())
    conditional = getattr(model, "conditional", True)
    if not conditional:  # one "class": the sizes match overall, not per class
        real_y, fake_y = torch.zeros_like(real_y), torch.zeros_like(fake_y)
    model = model.to(dev).eval()
    noise = torch.Generator(device=dev).manual_seed(seed)
    fake = torch.cat(
        [model.sample(fake_y[i : i + 500], generator=noise) for i in range(0, len(fake_y), 500)]
    )
    seen = dm.splits.train.x
    if not conditional and dm.unlabelled is not None:  # its G was fitted to the pool
        seen = torch.cat([seen, dm.unlabelled_images()])
    out = gan_quality(  # the training images stay uint8: made float a chunk at a time
        feats,
        real,
        real_y,
        fake,
        fake_y,
        seen.to(dev),
        k=cfg.gan.knn_k,
        prefix=f"{split}/gan_",
        train_prep=lambda x: to_gan_size(x.float() / 255.0, size),
    )
    if not conditional:
        out = {k: v for k, v in out.items() if "_per_class_" not in k}
    return out


def to_gan_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float images resized (antialiased) to the GAN's resolution."""
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
