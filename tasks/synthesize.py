"""task=synthesize: load a GAN checkpoint (EMA generator), generate `n_per_class` labelled images
per class in batches (progress bar), write synthetic.pt + manifest.json atomically."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision.utils import save_image
from tqdm.auto import tqdm

from datamodules.synthetic import write_synthetic
from xfergan.devices import job_device
from xfergan.errors import UserError
from xfergan.io import safe_torch_load, sha256_file
from xfergan.runtime import output_dir
from xfergan.tracking.wandb_backend import artifact_name, log_image, record_lineage
from xfergan.training import build_loggers

log = logging.getLogger(__name__)


def resolve_gan_checkpoint(path: str | None) -> Path:
    if not path:
        raise UserError("task=synthesize needs synthesize.checkpoint=<GAN run dir or .ckpt>")
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise UserError(f"GAN checkpoint {p} does not exist; train one with task=gan")
    return p


def load_gan(path: Path):
    """The GAN module a checkpoint was written by (its class path is in the checkpoint), with its
    weights and the provenance of its real training images."""
    import hydra

    blob = safe_torch_load(path, "GAN checkpoint")
    hp = blob.get("hyper_parameters") if isinstance(blob, dict) else None
    cls_path = blob.get("xfergan_class") if isinstance(blob, dict) else None
    if not hp or not cls_path or "state_dict" not in blob:
        raise UserError(
            f"{path} is not a GAN checkpoint written by task=gan of this version (no class path "
            "or provenance); re-run task=gan"
        )
    try:
        cls = hydra.utils.get_class(cls_path)
    except Exception as e:  # noqa: BLE001 - an import failure of the user's module
        raise UserError(
            f"GAN checkpoint {path} needs {cls_path}, which does not import ({e}); put its "
            "module on PYTHONPATH"
        ) from None
    model = cls(**hp)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise UserError(f"GAN checkpoint {path} does not fit its model: {str(e)[:200]}") from None
    model.on_load_checkpoint(blob)  # what the module reads back (its collapsed-D streak)
    model.provenance = blob.get("xfergan_provenance")
    return model.eval()


def gan_quality(ckpt: Path) -> dict:
    """The GAN run's quality numbers (FID/KID/precision/recall/memorization), when its
    metrics.json is beside the checkpoint: classifiers trained on these images report them."""
    from xfergan.io import read_json

    m = ckpt.parent.parent / "metrics.json"
    if not m.is_file():
        return {}
    return {
        k: v
        for k, v in read_json(m).items()
        if k.split("/", 1)[-1].startswith("gan_") and isinstance(v, float)
    }


def run(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    sc = cfg.synthesize
    ckpt = resolve_gan_checkpoint(sc.checkpoint)
    model = load_gan(ckpt).to(job_device(cfg))  # the job's slot GPU, or the CPU
    k = model.hparams.num_classes
    classes = list(sc.classes) if sc.classes is not None else list(range(k))
    if any(c < 0 or c >= k for c in classes):
        raise UserError(f"synthesize.classes={classes}: the GAN has classes 0..{k - 1}")
    if sc.n_per_class <= 0:
        raise UserError(f"synthesize.n_per_class={sc.n_per_class} must be positive")
    labels = torch.tensor(classes).repeat_interleave(int(sc.n_per_class))
    gen = torch.Generator(device=model.device).manual_seed(int(cfg.seed))
    chunks = []
    bs = int(sc.batch_size)
    for i in tqdm(
        range(0, len(labels), bs), desc=f"synthesizing {len(labels)} images", unit="batch"
    ):
        x = model.sample(labels[i : i + bs], generator=gen, truncation=sc.truncation)
        chunks.append((x.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    images = torch.cat(chunks)
    prov = dict(model.provenance or {})
    real_uids = prov.pop("train_uids", None)
    backbone = prov.pop("discriminator_backbone", None)  # outside knowledge, not real images
    meta = {
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_sha256": sha256_file(ckpt),
        "seed": int(cfg.seed),
        "num_classes": k,
        "class_names": list(model.hparams.class_names or [str(i) for i in range(k)]),
        "classes": classes,
        "generator": "ema",
        "truncation": sc.truncation,
        "real_data": prov or None,  # the identity of the real images the GAN was trained on
        "discriminator_backbone": backbone,
        "gan_quality": gan_quality(ckpt),
    }
    path = write_synthetic(out, images, labels, meta, real_uids=real_uids)
    preview = torch.cat([images[labels == c][:10] for c in classes]).float() / 255
    save_image(preview, out / "synthetic_preview.png", nrow=10)
    loggers = build_loggers(cfg, out, job_type="synthesize", tags=["synthetic"])
    log_image(loggers, "synthetic/preview", out / "synthetic_preview.png")
    record_lineage(
        loggers,
        {artifact_name("gan", ckpt): str(ckpt)},
        (artifact_name("synthetic", out), "dataset", str(out)),
    )
    log.info("wrote %s (%d images)", path, len(labels))
    return {
        "synthetic_path": str(path),
        "n_synthetic": len(labels),
        "synthetic/n_per_class": int(sc.n_per_class),
    }
