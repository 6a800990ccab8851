"""task=gan_fused: the GANs of K seeds (one dataset, n_per_class and `gan` config: the grid
points of a seed sweep) trained as one stacked model (lightning_modules/fused_gan.py), written
as K complete GAN run dirs `seed_<s>/`, each as task=gan writes one: checkpoints/last.ckpt
(its class and the provenance of its own seed's real subset, read by the same datamodule code
as task=gan), metrics.json, samples/. `task=synthesize synthesize.checkpoint=<dir>/seed_<s>`
and every provenance check take them like any GAN.

Each GAN's batches come from its own datamodule's sampler, in equal epochs of full batches (the
step budget as task=gan plans it); its random draws (noise, label shuffles, DiffAugment) come
from its own generator seeded by its own seed, so a GAN is the same whichever seeds it is
trained with. trainer.precision applies as in task=gan (bf16-mixed autocasts the forward passes).

Each GAN's run dir gets its own tracker runs as task=gan's (CSV, W&B, MLflow as configured;
job_type gan, tag fused): its losses every trainer.log_every_n_steps G+D steps (kept on the
device while training, written after it), its sample grid, its checkpoint's lineage and its
metrics.json as the run summary."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torchvision.utils import save_image

from lightning_modules.fused_gan import FusedGANs
from lightning_modules.gan import Divergence
from tasks.gan import build_gan, check_precision, evaluate_quality, gan_datamodule
from xfergan.devices import job_device
from xfergan.errors import UserError
from xfergan.io import atomic_torch_save
from xfergan.runtime import output_dir, write_metrics
from xfergan.training import batch_limit, build_loggers, load_data, plan_steps

log = logging.getLogger(__name__)


def seed_config(cfg: DictConfig, seed: int, over: dict[str, Any] | None = None) -> DictConfig:
    """The task=gan config of one grid point: this seed, its own run dir (and `over`: this
    seed's own inputs, e.g. the gan.feature_ckpt its pipeline measures GANs with)."""
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.task = "gan"
        c.seed = int(seed)
        c.paths.output_dir = str(output_dir(cfg) / f"seed_{seed}")
        for k, v in (over or {}).items():
            OmegaConf.update(c, k, v, merge=False)
    return c


# what a GAN run may differ in from the GAN a pipeline asks for: how its quality is measured
# and how fast it ran, never what it learned from or how long
NOT_IDENTITY = (
    "feature_ckpt",
    "compile",
    "eval_n_per_class",
    "eval_split",
    "sample_every_n_steps",
    "checkpoint_every_n_steps",
)


def gan_identity(cfg: DictConfig) -> dict[str, Any]:
    """What decides a GAN: its seed, the real data it reads and its `gan` settings."""
    data = OmegaConf.to_container(cfg.dataset, resolve=True)
    for k in ("cache_dir", "num_workers", "eval_batch_size"):
        data.pop(k, None)
    gan = OmegaConf.to_container(cfg.gan, resolve=True)
    for k in NOT_IDENTITY:
        gan.pop(k, None)
    return {
        "seed": int(cfg.seed),
        "body_part": str(cfg.body_part),
        "dataset": data,
        "gan": gan,
        "precision": str(cfg.trainer.get("precision") or "32-true"),  # bf16-mixed: another GAN
    }


def autocast(cfg: DictConfig, device: torch.device):
    """trainer.precision for the fused loop, as Lightning runs task=gan: bf16-mixed autocasts
    the forward passes (weights, Adam and the EMA stay fp32), 32-true runs as is; 16-mixed
    (which needs a loss scaler) is refused in one line (bf16-true and 16-true: check_precision)."""
    import contextlib

    precision = str(cfg.trainer.get("precision") or "32-true")
    if precision in ("bf16-mixed",):  # Lightning's own context (no cast cache: a cached bf16
        # weight would outlive its optimizer step inside the one context of an update)
        from pytorch_lightning.plugins.precision import MixedPrecision

        return MixedPrecision("bf16-mixed", device.type).autocast_context_manager()
    if precision in ("32-true", "32", "64-true", "64"):
        return contextlib.nullcontext()
    raise UserError(
        f"trainer.precision={precision} is not available with task=gan_fused (no loss scaler); "
        "use bf16-mixed or 32-true"
    )


def reads(key: str) -> bool:
    """Is a setting part of gan_identity (a sweep over it gives other GANs)?"""
    return key == "body_part" or key.split(".")[0] in ("dataset", "gan")


def _differs(a: Any, b: Any, at: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for k in sorted(set(a) | set(b)) for d in _differs(a.get(k), b.get(k), f"{at}{k}.")
        ]
    return [] if a == b else [f"{at.rstrip('.')}={b!r} (asked: {a!r})"]


def find_gan_run(cfg: DictConfig, where: str | Path) -> Path:
    """The finished GAN run dir at or below `where` (a task=gan run dir, a task=gan_fused dir, a
    sweep's fused_gans/ folder) whose seed, real data and gan settings are the ones `cfg` asks
    for; a one-line error naming what is there otherwise. Its provenance is checked downstream
    like any GAN's (the synthetic set's manifest against each reader's real subset)."""
    from xfergan.io import read_json

    root = Path(where)
    if not root.exists():
        raise UserError(
            f"pipeline.gan_from: {root} does not exist (a GAN run dir, or a task=gan_fused dir)"
        )
    files = sorted(root.rglob("metrics.json"))  # the dir itself first, then what is below
    want, near = gan_identity(cfg), []
    hits = []
    for f in files:
        try:
            m = read_json(f)
            if m.get("task") != "gan" or m.get("status") != "ok":
                continue
            have = gan_identity(OmegaConf.load(f.parent / ".hydra" / "config.yaml"))
        except (UserError, OSError, ValueError):
            continue
        diff = _differs(want, have)
        if not diff:
            hits.append(f.parent)
        elif have["seed"] == want["seed"]:
            near.append(f"{f.parent.name}: {diff[0]}")
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UserError(
            f"pipeline.gan_from: {len(hits)} GAN runs under {root} fit seed {want['seed']}: {[str(h) for h in hits]}; point at one"
        )
    why = f" (same seed, other settings: {'; '.join(near[:3])})" if near else ""
    raise UserError(
        f"pipeline.gan_from: no finished GAN run under {root} for seed {want['seed']} with this "
        f"run's real data and gan settings{why}; train it there (task=gan_fused) or drop gan_from"
    )


def reusable(cfg: DictConfig, seeds: list[int], per_seed: dict[int, dict]) -> dict | None:
    """resume=true: the stage's metrics when every seed's run finished with the settings and
    inputs asked for now (their config_sha256), else None (train all K again)."""
    from xfergan.io import read_json
    from xfergan.runtime import same_record

    done = {}
    for s in seeds:
        c = seed_config(cfg, s, per_seed.get(s))
        f = output_dir(c) / "metrics.json"
        try:
            m = read_json(f) if f.is_file() else {}
        except UserError:
            m = {}
        if m.get("status") != "ok" or not same_record(
            m.get("config_sha256"), m.get("inputs_sha256"), c
        ):
            return None
        done[s] = m
    first = done[seeds[0]]
    out = {"gan/steps": first["gan/steps"], "gan/fused_k": len(seeds), "gan/reused": True}
    out.update({f"gan/checkpoint_seed{s}": m["gan/checkpoint"] for s, m in done.items()})
    return out


def check(cfg: DictConfig) -> list[int]:
    seeds = [int(s) for s in cfg.gan_fused.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"gan_fused.seeds={seeds}: give one or more different seeds")
    if cfg.gan.guidance.teacher and float(cfg.gan.guidance.weight):
        raise UserError("gan.guidance is not available with task=gan_fused; use task=gan")
    if cfg.gan.compile:
        raise UserError("gan.compile does not apply to task=gan_fused (its GANs are one network)")
    return seeds


def save_gan(model, out, steps: int, epochs: int, streak=0) -> None:
    """A checkpoint load_gan (task=synthesize) and a resumed task=gan read: state,
    hyper-parameters, class, provenance, and `streak`, its steps with a collapsed D so far."""
    model._div.set_streak(int(streak))
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    ckpt.update(epoch=epochs, global_step=2 * steps)  # as Lightning counts: G and D steps
    model.on_save_checkpoint(ckpt)  # xfergan_class, xfergan_provenance
    atomic_torch_save(ckpt, out / "checkpoints" / "last.ckpt")


def track_gan(cfg: DictConfig, out: Path, dm, metrics: dict, history: list) -> dict:
    """GAN `out`'s metrics.json and its own tracker runs, as task=gan's: `history` (step, loss_d,
    loss_g; plain numbers) on Lightning's step axis (2 per G+D step), the sample grid, the
    checkpoint's lineage, metrics.json as the summary. Returns the payload written."""
    from xfergan import tracking
    from xfergan.tracking.wandb_backend import artifact_name, log_image, record_lineage

    payload = write_metrics(out, metrics, cfg, status="ok")  # first: a tracker never costs it
    tracking.start_job()
    loggers, failed = [], True
    try:
        loggers = build_loggers(cfg, out, job_type="gan", tags=["gan", "fused"], sizes=dm.sizes())
        for t, d, g in history:
            for lg in loggers:
                lg.log_metrics({"gan/loss_d": d, "gan/loss_g": g}, step=2 * t)
        log_image(loggers, "gan/samples", out / "samples" / "final.png", caption="final")
        last = Path(metrics["gan/checkpoint"])
        record_lineage(loggers, {}, (artifact_name("gan", last), "model", str(last)))
        failed = False
    except Exception as e:  # noqa: BLE001 - the GAN trained and its metrics.json is written
        log.warning("%s: could not write its tracker runs (%s)", out, e)
    finally:
        for lg in loggers:
            lg.save()
        tracking.finish_job(payload, failed, out)
    return payload


def run(cfg: DictConfig, per_seed: dict[int, dict] | None = None) -> dict:
    check_precision(cfg)  # as task=gan: the EMA generator needs more than bf16's bits
    out = output_dir(cfg)
    seeds = check(cfg)
    autocast(cfg, torch.device("cpu"))  # an unusable precision: one line before anything loads
    per_seed = per_seed or {}
    if cfg.resume and (done := reusable(cfg, seeds, per_seed)) is not None:
        log.info(
            "resume: the %d GANs in %s finished with these settings: reusing them", len(seeds), out
        )
        return done
    dev = job_device(cfg)
    cfgs, dms, gans = [], [], []
    for s in seeds:
        c = seed_config(cfg, s, per_seed.get(s))
        d = output_dir(c)
        (d / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(c, d / ".hydra" / "config.yaml")
        dm = gan_datamodule(c)
        load_data(dm, d)
        torch.manual_seed(s)  # each GAN's initial weights from its own seed
        model = build_gan(c, dm)
        model.provenance = {**dm.provenance(), "train_uids": dm.real_train.uid}
        if hasattr(model.D, "provenance_record"):  # outside knowledge: a pretrained D backbone
            model.provenance["discriminator_backbone"] = model.D.provenance_record
        cfgs.append(c), dms.append(dm), gans.append(model)
    if len({len(dm.real_train) for dm in dms}) != 1:
        raise UserError(
            "task=gan_fused needs real subsets of one size for every seed (full batches of one "
            f"shape): got {[len(dm.real_train) for dm in dms]}"
        )
    steps = int(cfg.gan.steps or 0) or int(cfg.gan.epochs) * dms[0].batches_per_epoch()
    epochs = {plan_steps(c, dm, steps) for c, dm in zip(cfgs, dms)}.pop()  # one plan for all
    limit = batch_limit(cfg, "train")  # debug=smoke: 2 batches per epoch
    bpe = min(dms[0].batches_per_epoch(), limit) if limit else dms[0].batches_per_epoch()
    fused = FusedGANs(gans).to(dev)
    precision = autocast(cfg, torch.device(dev))
    opt_g, opt_d = fused.configure_optimizers()
    # each GAN's draws from its own seed's stream: the same GAN whichever seeds it is fused with
    noise = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
    loaders = [dm.train_dataloader() for dm in dms]
    every = max(1, int(cfg.trainer.get("log_every_n_steps") or 50))
    history: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss_d [K], loss_g [K])
    div = Divergence(gans[0].hparams, (len(seeds),))  # task=gan's checks, per member
    t0 = time.time()
    for epoch in range(epochs):
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        for _, *batches in zip(range(bpe), *loaders):
            x = torch.stack([dm.preprocess(b.x.to(dev), train=True) for dm, b in zip(dms, batches)])
            y = torch.stack([b.y.to(dev) for b in batches])
            draws = fused.draw(y.shape[-1], tuple(x.shape[-3:]), noise)
            with precision:
                loss_d, loss_g = fused.fused_step(x, y, opt_g, opt_d, noise=draws)
            if fused.steps % every == 0:  # no host read: written to the trackers after training
                history.append((fused.steps, loss_d.detach(), loss_g.detach()))
            div.update(loss_d.detach(), loss_g.detach())  # on the device, every step
        check_divergence(div, seeds, fused.steps)  # once an epoch: one host read
    train_s = round(time.time() - t0, 3)
    metrics = {"gan/steps": fused.steps, "gan/fused_k": len(seeds), "gan/train_s": train_s}
    logged = [t for t, _, _ in history]  # every GAN's losses in one host read: [T, 2, K]
    losses = torch.stack([torch.stack([d, g]) for _, d, g in history]).tolist() if history else []
    for i, (s, c, dm) in enumerate(zip(seeds, cfgs, dms)):
        d = output_dir(c)
        model = fused.gan(i)
        save_gan(model, d, fused.steps, epochs, streak=div.bad[i])  # streak: as task=gan's
        grid = model.sample_grid_images()
        (d / "samples").mkdir(exist_ok=True)
        save_image(grid, d / "samples" / "final.png", nrow=len(grid) // dm.num_classes, padding=2)
        (d / "samples_final.png").write_bytes((d / "samples" / "final.png").read_bytes())
        last = d / "checkpoints" / "last.ckpt"
        own = {
            "gan/steps": fused.steps,
            "gan/epochs": epochs,
            "gan/checkpoint": str(last),
            "gan/train_s": train_s,  # the fused run's time: all K GANs trained in it
            "gan/fused_k": len(seeds),
            "gan/fused_run": str(out),
            "gan/train_ids_sha256": dm.provenance().get("train_ids_sha256"),
            "gan/seen_ids_sha256": model.provenance.get("train_ids_sha256"),
            "gan/loss_d": float(loss_d[i].detach()),
            "gan/loss_g": float(loss_g[i].detach()),
            **dm.sizes(),
        }
        own.update(evaluate_quality(c, model, dm))
        track_gan(c, d, dm, own, [(t, dg[0][i], dg[1][i]) for t, dg in zip(logged, losses)])
        metrics[f"gan/checkpoint_seed{s}"] = str(last)
    log.info("trained %d GANs as one in %.1f s: %s", len(seeds), train_s, out)
    return metrics


def check_divergence(div: Divergence, seeds: list[int], step: int) -> None:
    """task=gan's divergence checks for each of the K GANs (NaN/Inf losses; D's loss at ~0 for
    gan.divergence_patience steps in a row): one line naming the seeds that diverged."""
    nonfinite, worst = div.read()
    bad = [s for s, b in zip(seeds, nonfinite) if b]
    if bad:
        raise UserError(f"GAN diverged (NaN/Inf losses) at step {step}, seeds {bad}")
    bad = [s for s, w in zip(seeds, worst) if w >= div.patience]
    if bad:
        raise UserError(
            f"GAN diverged at step {step}, seeds {bad}: the discriminator loss stayed at ~0 for "
            f"{max(worst)} steps (D wins, G gets no signal); try DiffAugment, spectral norm or a "
            "lower gan.lr_d"
        )
