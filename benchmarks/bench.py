"""What users run, timed against its plain-PyTorch equivalent in the same process: the project
side is built with the very functions the tasks use (build_datamodule, build_classifier,
build_gan, build_trainer from a composed Hydra config); the plain side is a hand-written loop over
the same tensors and the same model math. Prints ratios (ours / plain) and writes JSON.

    python benchmarks/bench.py                          # CPU sizes
    python benchmarks/bench.py --preset gpu             # real sizes (ResNet50 224 px bf16, ...)
    python benchmarks/bench.py --save                   # also benchmarks/results/<date>_<device>.json
    python benchmarks/bench.py --cases gan --steps 200  # one case

Cases: classifier training step (MobileNetV2, ResNet50) on real MNIST; the conditional GAN's
G+D step on real MNIST as users run it (experiment=paper_table3_full's GAN: width 32, batch 64,
50-step epochs, bf16-mixed on a GPU, CSV logger and progress bar on) against an independent
plain loop (the same nets, losses, DiffAugment, Adam and EMA written out by hand); jobs_per_gpu:
K plain GAN jobs at once on one device (separate processes), aggregate steps/s against one;
MURA input on a MURA-layout tree of real MURA radiographs (shifted copies) through
MURADataModule: the first epoch (decoding every PNG into the cache) vs a PIL DataLoader that
decodes, and later epochs (read from the cache) vs the same PIL DataLoader, the order of the two
sides alternating by round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.plugins.precision import MixedPrecision  # noqa: E402

from tasks.classify import build_classifier  # noqa: E402
from tasks.gan import build_gan, gan_datamodule  # noqa: E402
from xfergan.errors import first_line  # noqa: E402
from xfergan.machine import commit, machine  # noqa: E402
from xfergan.training import (  # noqa: E402
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_trainer,
    plan_steps,
)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compose(overrides: list[str], out: Path, as_users_run: bool = False):
    """The config run.py would build (same conf/, same schemas)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from xfergan.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        quiet = [] if as_users_run else ["logger=none", "trainer.enable_progress_bar=false"]
        return hcompose(
            config_name="config", overrides=overrides + [f"paths.output_dir={out}"] + quiet
        )


class StepTimer(pl.Callback):
    """Wall time from the start of batch `warmup` to the end of training, synced the way
    timed() syncs the plain loop: once before the first timed step, once after the last."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.t0 is None and trainer.fit_loop.epoch_loop.total_batch_idx >= self.warmup:
            sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.n += 1

    def on_train_end(self, trainer, module):
        sync()
        self.t1 = time.perf_counter()


def timed(step, steps: int, warmup: int) -> float:
    """Seconds for `steps` calls of step(), after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0


def _fit_overrides(steps: int) -> dict:
    return dict(
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        logger=False,
    )


# ----------------------------------------------------------------------------- classifier
def _task_fit(cfg, tmp: Path, steps: int, warmup: int):
    """The classifier trained through the task's own datamodule, module and Trainer for
    warmup + steps: (datamodule, its StepTimer, the fit's seconds)."""
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_classifier(cfg, dm)
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, tmp, [], [timer], **_fit_overrides(steps + warmup))
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return dm, timer, time.perf_counter() - t0


def bench_classifier(backbone, size, batch, steps, warmup, gpu, tmp: Path) -> dict:
    # whole batches only (10 classes x n_per_class = batch x m): a last, smaller batch would give
    # the framework side a new input shape (slow first calls) that the plain loop never sees
    m = 5 * -(-(steps + warmup + 2) // 5)
    n_per_class = batch * m // 10
    over = [
        f"model.backbone={backbone}",
        "model.init=scratch",
        f"dataset.n_per_class={n_per_class}",
        "dataset.val_per_class=1",
        f"dataset.image_size={size}",
        f"dataset.batch_size={batch}",
        "dataset.augment.enabled=true",
        "dataset.augment.rotation=10",
        "model.scheduler.name=none",
    ]
    if gpu:
        over += ["trainer=gpu", "model.channels_last=true"]
    else:
        over += ["trainer.accelerator=cpu"]
    cfg = compose(over, tmp / f"clf_{backbone}")
    dm, timer, _ = _task_fit(cfg, tmp, steps, warmup)  # ours: exactly the task's path
    ours = batch * timer.n / (timer.t1 - timer.t0)
    # plain: the same tensors on the device, the same model and preprocessing, a hand loop
    dev = device()
    x_all, y_all = dm.splits.train.x.to(dev), dm.splits.train.y.to(dev)
    net = build_classifier(cfg, dm).net.to(dev)
    mf = torch.channels_last if gpu else torch.contiguous_format
    net = net.to(memory_format=mf)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    n = len(y_all)

    def step():
        idx = torch.randint(0, n, (batch,), device=dev)
        x = dm.preprocess(x_all[idx], train=True).contiguous(memory_format=mf)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=gpu):
            loss = torch.nn.functional.cross_entropy(net(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    plain = batch * steps / timed(step, steps, warmup)
    return {
        "case": f"classifier step {backbone} {size}px bs{batch}"
        + (" bf16 channels_last" if gpu else ""),
        "unit": "img/s",
        "plain": plain,
        "ours": ours,
        "ratio": ours / plain,
    }


# ----------------------------------------------------------------------------- GAN
def _gan_cfg(steps: int, gpu: bool, tmp: Path, as_users_run: bool):
    """experiment=paper_table3_full's GAN (width 32, batch 64, its 50-step epochs), bf16-mixed
    on a GPU, with the CSV logger and the progress bar on as a user runs it."""
    over = ["experiment=paper_table3_full", "task=gan", f"gan.steps={steps}"]
    over += ["logger=csv", "trainer.enable_progress_bar=true"] if as_users_run else []
    over += ["trainer.precision=bf16-mixed"] if gpu else ["trainer=cpu"]
    return compose(over, tmp / "gan", as_users_run=as_users_run)


class PlainGAN:
    """The same G and D (built from the same config), losses, DiffAugment, Adam and EMA, written
    as a hand loop: nothing from the project's GAN module or its training step."""

    def __init__(self, cfg, dm, dev):
        from lightning_modules.diffaugment import diff_augment, parse_policy
        from lightning_modules.gan import build_net

        g = cfg.gan
        size = {"num_classes": dm.num_classes, "image_size": g.image_size, "channels": dm.channels}
        self.G = build_net(dict(g.generator), "gan.generator", **size, z_dim=g.z_dim).to(dev)
        self.D = build_net(dict(g.discriminator), "gan.discriminator", **size).to(dev)
        self.ema = [p.detach().clone() for p in self.G.parameters()]
        betas = (g.beta1, g.beta2)
        fused = {"fused": True} if dev.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=g.lr_g, betas=betas, **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=g.lr_d, betas=betas, **fused)
        self.policy, self.aug = parse_policy(g.diffaugment), diff_augment
        self.z_dim, self.decay, self.ms, self.n_ema = g.z_dim, g.ema_decay, g.mode_seeking, 0
        self.hinge, self.dev = g.loss == "hinge", dev

    def _a(self, x):
        return self.aug(x, self.policy) if self.policy else x

    def step(self, x, y, bf16: bool):
        F = torch.nn.functional
        n, dev = len(y), self.dev
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                fake = self.G(torch.randn(n, self.z_dim, device=dev), y)
            r, f = self.D(self._a(x), y), self.D(self._a(fake), y)
            if self.hinge:
                loss_d = F.relu(1 - r).mean() + F.relu(1 + f).mean()
            else:
                loss_d = F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                loss_d = loss_d + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        self.D.requires_grad_(False)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            y_g = y[torch.randperm(n, device=dev)]
            half = n // 2
            y_g = torch.cat([y_g[:half], y_g[:half]])
            z = torch.randn(2 * half, self.z_dim, device=dev)
            fake = self.G(z, y_g)
            logits = self.D(self._a(fake), y_g)
            if self.hinge:
                loss_g = -logits.mean()
            else:
                loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            if self.ms > 0:  # mode seeking, as the paper's GAN config has it
                d_img = (fake[:half] - fake[half:]).abs().mean(dim=(1, 2, 3))
                d_z = (z[:half] - z[half:]).abs().mean(dim=1)
                loss_g = loss_g + self.ms / ((d_img / d_z).mean() + 1e-5)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        d = min(self.decay, (1.0 + self.n_ema) / (10.0 + self.n_ema))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.G.parameters()], 1.0 - d)
        self.n_ema += 1


def _plain_gan_rate(cfg, dm, steps: int, warmup: int, gpu: bool) -> float:
    dev = device()
    plain = PlainGAN(cfg, dm, dev)
    x_all = dm.preprocess(dm.splits.train.x.to(dev))  # [-1, 1], as the loop sees it
    y_all = dm.splits.train.y.to(dev)
    batch, n = int(cfg.gan.batch_size), len(y_all)
    order = torch.randperm(n, device=dev)
    pos = [0]

    def step():  # whole batches from a permutation on the device, as the datamodule gives
        if pos[0] + batch > n:
            order.copy_(torch.randperm(n, device=dev))
            pos[0] = 0
        idx = order[pos[0] : pos[0] + batch]
        pos[0] += batch
        plain.step(x_all[idx], y_all[idx], bf16=gpu)

    return steps / timed(step, steps, warmup)


def bench_gan(steps, warmup, gpu, tmp: Path) -> dict:
    cfg = _gan_cfg(steps + warmup, gpu, tmp, as_users_run=True)
    torch.set_flush_denormal(True)  # as run_task does
    dm = gan_datamodule(cfg)
    dm.setup()
    model = build_gan(cfg, dm)
    timer = StepTimer(warmup)
    loggers = build_loggers(cfg, tmp / "gan", job_type="gan", tags=["bench"], sizes=dm.sizes())
    trainer = build_trainer(  # as tasks/gan.py builds it (its bar and logger; no checkpoints)
        cfg,
        tmp / "gan",
        loggers,
        [timer, *build_callbacks(cfg, "gan", loggers)],
        max_epochs=plan_steps(cfg, dm, steps + warmup),
        max_steps=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        gradient_clip_val=None,
    )
    trainer.fit(model, datamodule=dm)
    ours = timer.n / (timer.t1 - timer.t0)
    plain = _plain_gan_rate(cfg, dm, steps, warmup, gpu)
    w = cfg.gan.generator.width
    return {
        "case": f"GAN step (D+G, EMA) 28px bs{cfg.gan.batch_size} width{w}"
        + (" bf16" if gpu else "")
        + ", CSV logger + bar vs a plain loop",
        "unit": "steps/s",
        "plain": plain,
        "ours": ours,
        "ratio": ours / plain,
    }


def _one_gan_job(args) -> tuple[float, float, int]:
    """A process of the jobs_per_gpu case: the plain GAN loop, (start, end, steps) timed."""
    steps, warmup, gpu, tmp, threads = args
    torch.set_num_threads(threads)  # K jobs share the cores, as K sweep jobs would
    cfg = _gan_cfg(steps + warmup, gpu, Path(tmp), as_users_run=False)
    dm = gan_datamodule(cfg)
    dm.setup()
    rate = _plain_gan_rate(cfg, dm, steps, warmup, gpu)
    t1 = time.time()
    return t1 - steps / rate, t1, steps  # the timed part's own start (after warm-up)


def bench_jobs_per_device(
    ks: list[int], steps: int, warmup: int, gpu: bool, tmp: Path, pools: dict
) -> list[dict]:
    """K GAN jobs at once on one device (separate processes, as a sweep runs them): the
    aggregate steps/s against one job alone (ratio = aggregate / single; K is the ideal)."""
    import multiprocessing as mp

    if "pool" not in pools:  # max(K) processes, started once (each imports torch and hydra)
        pools["pool"] = mp.get_context("spawn").Pool(max(ks))
    pool = pools["pool"]
    single, out = None, []
    for k in ks:  # K tasks to K idle workers: one each (a worker taking two only lowers it)
        threads = max(1, (os.cpu_count() or 1) // k)
        jobs = [(steps, warmup, gpu, str(tmp / f"k{k}_{i}"), threads) for i in range(k)]
        got = pool.map(_one_gan_job, jobs, chunksize=1)
        start, end = min(g[0] for g in got), max(g[1] for g in got)
        rate = sum(g[2] for g in got) / (end - start)
        single = single or rate
        out.append(
            {
                "case": f"jobs_per_gpu K={k} GAN jobs at once (plain loops, aggregate)",
                "unit": "steps/s",
                "plain": single,
                "ours": rate,
                "ratio": rate / single,
            }
        )
    return out


def _gan_speed_one(name: str, steps: int, warmup: int, gpu: bool, tmp: Path) -> dict:
    """One option, e.g. eager_bs64, cudagraphs_bs256_bf16 or eager_bs64_projected (the
    discriminator on frozen ImageNet MobileNetV2 features): real images per second."""
    kind, bs, *rest = name.split("_")
    modes = {"eager": None, "compile": "default", "cudagraphs": "reduce-overhead", "step": "step"}
    mode = {**modes, "graph": "graph"}[kind]
    batch, bf16, dev = int(bs.removeprefix("bs")), "bf16" in rest, device()
    over = ["experiment=paper_table3_full", "task=gan", f"gan.batch_size={batch}"]
    over += [f"gan.compile={mode}"] if mode else []
    over += ["gan/discriminator=projected"] if "projected" in rest else []
    cfg = compose(over + ([] if gpu else ["trainer=cpu"]), tmp / f"gan_speed_{name}")
    dm = gan_datamodule(cfg)
    dm.setup()
    model = build_gan(cfg, dm).to(dev)
    opt_g, opt_d = model.configure_optimizers()
    x_all = dm.preprocess(dm.splits.train.x.to(dev))
    y_all = dm.splits.train.y.to(dev)
    t0 = time.perf_counter()
    model.setup("fit")  # gan.compile, as the Trainer would
    # bf16 as trainer.precision=bf16-mixed runs task=gan: Lightning's own autocast context (no
    # cast cache: a plain torch.autocast would reuse D's bf16 weights from before D's update)
    precision = (
        MixedPrecision("bf16-mixed", dev.type).autocast_context_manager()
        if bf16
        else contextlib.nullcontext()
    )

    def step():
        if mode in ("reduce-overhead", "graph"):
            torch.compiler.cudagraph_mark_step_begin()
        idx = torch.randint(0, len(y_all), (batch,), device=dev)
        with precision:
            model.gan_step(x_all[idx], y_all[idx], opt_g, opt_d)

    step()  # the first call compiles
    first = time.perf_counter() - t0
    return {"rate": batch * steps / timed(step, steps, warmup), "first_step_s": first}


def _compile_skips() -> int:
    """CUDA graphs that torch.compile skipped (it falls back to plain compiled code and says so
    only in a warning): a graph variant's speed is a CUDA-graph speed only where this is 0."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _clear_compile_counters() -> None:
    from torch._dynamo.utils import counters

    counters.clear()


def _variant_rows(variants: str, case, unit: str, measure):
    """One row per variant, as it is measured (the caller writes each as it comes: a run
    stopped at its time limit keeps the variants it measured), against the first that ran;
    a variant that does not run here is a row with its error, not a crash. `measure(name)`
    returns {"rate": ..., other fields of the row}."""
    base = None
    for name in variants.split(","):
        row = {"case": case(name), "unit": unit}
        _clear_compile_counters()
        try:
            got = dict(measure(name))
        except Exception as e:  # an option that does not run here is a finding, not a crash
            yield {
                **row,
                "error": f"{type(e).__name__}: {first_line(e, '')[:300]}",
                "plain": base or 0.0,
                "ours": 0.0,
                "ratio": 0.0,
            }
            continue
        rate = got.pop("rate")
        base = base or rate
        yield {
            **row,
            "plain": base,
            "ours": rate,
            "ratio": rate / base,
            **got,
            "cudagraph_skips": _compile_skips(),
        }


def bench_gan_speed(steps, warmup, gpu, tmp: Path, variants: str):
    """The speed options for the paper's GAN step (experiment=paper_table3_full's G and D, plain
    loop around the module's own gan_step): a larger batch (the same passes over the real images
    in fewer steps), bf16 autocast (what trainer=gpu runs), torch.compile with and without CUDA
    graphs. Figure: real images per second (batch x steps/s), against the first variant; one
    row per variant as it is measured."""
    return _variant_rows(
        variants,
        lambda name: f"GAN speed {name} (paper_table3_full G/D, plain loop)",
        "img/s",
        lambda name: _gan_speed_one(name, steps, warmup, gpu, tmp),
    )


def _clf_speed_one(name: str, steps: int, warmup: int, gpu: bool, tmp: Path) -> dict:
    """One model.compile variant, e.g. graph_bs64: training steps per second through the Trainer."""
    mode, bs = name.split("_")
    batch = int(bs.removeprefix("bs"))
    m = 5 * -(-(steps + warmup + 2) // 5)  # whole batches only, as bench_classifier
    over = [
        "experiment=paper_table3_full",
        "task=classify",
        "model.init=scratch",  # the speed does not depend on the starting weights
        f"model.compile={ {'eager': 'false'}.get(mode, mode) }",
        f"dataset.n_per_class={batch * m // 10}",
        "dataset.val_per_class=1",
        f"dataset.batch_size={batch}",
    ] + ([] if gpu else ["trainer=cpu"])
    _, timer, fit_s = _task_fit(compose(over, tmp / f"clf_speed_{name}"), tmp, steps, warmup)
    return {
        "rate": timer.n / (timer.t1 - timer.t0),
        "fit_s": fit_s,  # compile included
        "fit_steps": steps + warmup,  # what the fit ran (gpu_sizing: its compile time)
    }


def bench_classifier_speed(steps, warmup, gpu, tmp: Path, variants: str):
    """The classifier step as the synthetic and mixed arms of experiment=paper_table3_full run
    it (MobileNetV2 at 96 px, batch 64, bf16-mixed on a GPU: small, launch-bound steps), through
    the task's own datamodule, module and Trainer, with model.compile=<variant> (false: eager;
    graph: the whole training step one graph, on CUDA a CUDA graph). Figure: training steps per
    second, against the first variant; one row per variant as it is measured."""
    return _variant_rows(
        variants,
        lambda name: f"classifier speed {name} (paper_table3_full's MobileNetV2 96px, Trainer)",
        "steps/s",
        lambda name: _clf_speed_one(name, steps, warmup, gpu, tmp),
    )


def _fused_rates(k, cfg, dm, x_all, y_all, steps, warmup) -> tuple[float, float]:
    """(K GANs one after another, K GANs as one): aggregate GAN steps/s, each on its own batch."""
    from lightning_modules.fused_gan import FusedGANs

    dev, batch = x_all.device, int(cfg.gan.batch_size)
    gans = [build_gan(cfg, dm).to(dev) for _ in range(k)]
    opts = [g.configure_optimizers() for g in gans]
    fused = FusedGANs(gans).to(dev)
    fopt = fused.configure_optimizers()

    def batches():
        idx = torch.randint(0, len(y_all), (k, batch), device=dev)
        return x_all[idx], y_all[idx]

    def separate():
        x, y = batches()
        for i, (g, (og, od)) in enumerate(zip(gans, opts)):
            g.gan_step(x[i], y[i], og, od)

    def one():
        x, y = batches()
        fused.fused_step(x, y, *fopt)

    return k * steps / timed(separate, steps, warmup), k * steps / timed(one, steps, warmup)


def bench_gan_fused(ks: list[int], steps: int, warmup: int, gpu: bool, tmp: Path):
    """K GANs trained as one (lightning_modules/fused_gan.py) against the same K GANs stepped
    one after another (each its own gan_step), paper_table3_full's G and D at its batch, each
    GAN on its own batch: aggregate GAN steps per second (K x steps / time)."""
    over = ["experiment=paper_table3_full", "task=gan"] + ([] if gpu else ["trainer=cpu"])
    cfg = compose(over, tmp / "gan_fused")
    dm = gan_datamodule(cfg)
    dm.setup()
    x_all = dm.preprocess(dm.splits.train.x.to(device()))
    y_all = dm.splits.train.y.to(device())
    for k in ks:  # one row per K as it is measured
        plain, ours = _fused_rates(k, cfg, dm, x_all, y_all, steps, warmup)
        yield {
            "case": f"gan_fused K={k} GANs as one vs one after another (paper_table3_full "
            f"G/D, bs{cfg.gan.batch_size}; aggregate GAN steps/s)",
            "unit": "steps/s",
            "plain": plain,
            "ours": ours,
            "ratio": ours / plain,
        }


# ----------------------------------------------------------------------------- MURA input
def _mura_tree(root: Path, n: int) -> str:
    """n radiograph PNGs in the MURA-v1.1 layout, with its CSVs. Their content: the real MURA
    images under DATA_DIR (each copy shifted and mirrored, so no two files are the same bytes;
    saved at PNG's default compression, as MURA's are); smooth generated images where DATA_DIR
    has none. Returns which content it used."""
    import numpy as np
    from PIL import Image

    real = sorted(
        Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data")).glob("mura/**/*.png")
    )
    sources = []
    for f in real:
        with Image.open(f) as im:
            sources.append(np.asarray(im.convert("L")))
    rng = np.random.default_rng(0)
    if not sources:  # smooth shapes plus film grain: compresses like an X-ray, not like noise
        yy, xx = np.mgrid[0:512, 0:420]
        for k in range(4):
            blob = np.exp(-(((yy - 100 * k - 80) / 90.0) ** 2 + ((xx - 210) / 60.0) ** 2))
            sources.append(
                (200 * blob + rng.normal(0, 4, blob.shape)).clip(0, 255).astype(np.uint8)
            )
    base = root / "MURA-v1.1"
    for split, count in (("train", n), ("valid", max(8, n // 10))):
        rows, st = [], []
        for i in range(count):
            pid = i if split == "train" else n + i  # a patient is in one split, as in MURA
            study = f"MURA-v1.1/{split}/XR_WRIST/patient{pid:05d}/study1_{'positive' if i % 2 else 'negative'}/"
            p = study + "image1.png"
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            a = np.roll(sources[i % len(sources)], (i // len(sources)) % 17, axis=1)
            a = a[:, ::-1] if (i // len(sources)) % 2 else a
            Image.fromarray(np.ascontiguousarray(a), "L").save(root / p)
            rows.append(p)
            st.append((study, i % 2))
        (base / f"{split}_image_paths.csv").write_text("\n".join(rows) + "\n")
        (base / f"{split}_labeled_studies.csv").write_text(
            "\n".join(f"{s},{lab}" for s, lab in st) + "\n"
        )
    return f"{len(real)} real MURA images" if real else "generated"


class _PILImages(torch.utils.data.Dataset):
    """The plain equivalent of the decode: PIL open, grayscale, resize (aspect kept), pad."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import numpy as np
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("L")
            w, h = im.size
            s = self.size / max(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
            out = np.zeros((self.size, self.size), dtype=np.uint8)
            out[: im.size[1], : im.size[0]] = np.asarray(im)
        return torch.from_numpy(out)[None], 0


def bench_mura(n_images: int, size: int, batch: int, tmp: Path, round_: int = 0) -> list[dict]:
    data = tmp.parent / f"mura_data_{n_images}"  # one tree for every round; a cache per round
    if not data.exists():
        (data / "content.txt").parent.mkdir(parents=True, exist_ok=True)
        (data / "content.txt").write_text(_mura_tree(data / "mura", n_images))
    content = (data / "content.txt").read_text()
    workers = os.cpu_count() or 1
    over = [
        "dataset=mura",
        "body_part=wrist",
        f"dataset.image_size={size}",
        f"dataset.batch_size={batch}",
        f"dataset.decode_workers={workers}",
        "dataset.val_fraction=0.0",
        f"paths.data_dir={data}",
        f"paths.cache_dir={tmp / 'cache'}",
    ]
    dev = device()

    def epoch(dm):
        n = 0
        for b in dm.train_dataloader():
            x = dm.preprocess(b.x.to(dev), train=True)
            n += len(x)
        sync()
        return n

    def ours_epoch():
        cfg = compose(over, tmp / "mura_run")
        t0 = time.perf_counter()
        dm = build_datamodule(cfg)
        dm.setup()
        n = epoch(dm)
        return n / (time.perf_counter() - t0), dm

    def plain_epoch(dm):
        files = sorted((data / "mura" / "MURA-v1.1" / "train").rglob("*.png"))
        loader = torch.utils.data.DataLoader(
            _PILImages(files, size), batch_size=batch, shuffle=True, num_workers=workers
        )
        t0 = time.perf_counter()
        n = 0
        for x, _ in loader:
            dm.preprocess(x.to(dev), train=True)
            n += len(x)
        sync()
        return n / (time.perf_counter() - t0)

    if round_ % 2:  # the order alternates by round: neither side always reads warm files
        plain = plain_epoch(build_datamodule(compose(over, tmp / "mura_probe")))
    first, dm = ours_epoch()  # decodes every PNG into the cache
    later, dm = ours_epoch()  # a later run or epoch: read from the cache
    if not round_ % 2:
        plain = plain_epoch(dm)
    return [
        {
            "case": f"MURA input {size}px, first epoch (decode into the cache), {workers} "
            f"workers, content: {content}",
            "unit": "img/s",
            "plain": plain,
            "ours": first,
            "ratio": first / plain,
        },
        {
            "case": f"MURA input {size}px, later epochs (from the cache) vs PIL decode, "
            f"content: {content}",
            "unit": "img/s",
            "plain": plain,
            "ours": later,
            "ratio": later / plain,
        },
    ]


# ----------------------------------------------------------------------------- main
def median_of(runs: list[dict]) -> dict:
    """One case over several rounds: the median ratio (and that round's figures), every round's
    figures kept."""
    ratios = sorted(r["ratio"] for r in runs)
    mid = ratios[(len(ratios) - 1) // 2]  # the lower median: never rounds a ratio up
    chosen = next(r for r in runs if r["ratio"] == mid)
    return {**chosen, "rounds": [{k: r[k] for k in ("plain", "ours", "ratio")} for r in runs]}


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--preset", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument(
        "--cases",
        default="classifier,gan,mura,jobs_per_gpu",
        help="also: gan_speed (the GAN step's options), clf_speed (the classifier step's), "
        "gan_fused (K GANs as one)",
    )
    ap.add_argument(
        "--jobs-per-gpu",
        default=None,
        help="K values of the jobs_per_gpu case (GPU 1,2,4,8; CPU 1,2)",
    )
    ap.add_argument(
        "--gan-variants",
        default="eager_bs64,eager_bs64_bf16,eager_bs256_bf16,cudagraphs_bs64_bf16",
        help="gan_speed: <eager|compile|cudagraphs|step|graph>_bs<batch>[_bf16][_projected], "
        "comma-separated (step: gan.compile=step, the whole update compiled; graph: "
        "gan.compile=graph, the whole step one graph, on CUDA a CUDA graph)",
    )
    ap.add_argument(
        "--clf-variants",
        default="eager_bs64,graph_bs64",
        help="clf_speed: <eager|true|graph>_bs<batch> (model.compile: false, true, graph)",
    )
    ap.add_argument(
        "--fused-k", default=None, help="K values of the gan_fused case (GPU 1,5,25; CPU 4)"
    )
    ap.add_argument("--backbones", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--mura-images", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    ap.add_argument(
        "--repeats", type=int, default=3, help="rounds of every case; the median is reported"
    )
    ap.add_argument("--save", action="store_true", help="also write benchmarks/results/*.json")
    a = ap.parse_args()
    gpu = a.preset == "gpu"
    backbones = (a.backbones or "mobilenet_v2,resnet50").split(",")
    size = a.size or (224 if gpu else 64)
    batch = a.batch or (256 if gpu else 32)
    steps = a.steps or (50 if gpu else 12)
    torch.backends.cudnn.benchmark = gpu
    os.environ.setdefault("DATA_DIR", str(ROOT.parent / "shared" / "data"))
    cases = a.cases.split(",")
    payload = {
        "command": "python " + " ".join(sys.argv),
        "commit": os.environ.get("XFERGAN_COMMIT") or commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "preset": a.preset,
        "results": [],
    }

    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")

    rounds = []
    warm = min(5, steps)  # untimed steps before each timed run (first calls, compiles)
    pools: dict = {}  # the jobs_per_gpu processes: started once, reused by every round
    with tempfile.TemporaryDirectory(prefix="xfergan-bench-") as t:
        for r in range(a.repeats):  # whole rounds: a noisy machine moves single timings a lot
            tmp = Path(t) / f"round{r}"  # fresh caches: a first epoch decodes again
            tmp.mkdir()
            results = []
            rounds.append(results)

            def add(*rows, results=results):  # written after every case: a run stopped at
                results.extend(rows)  # its time limit keeps what it measured (each case's
                payload["results"] = [  # `rounds` says how many rounds it got)
                    median_of([rnd[i] for rnd in rounds if i < len(rnd)])
                    for i in range(len(results))
                ]
                if a.out:
                    write(Path(a.out))

            if "classifier" in cases:
                for b in backbones:
                    add(bench_classifier(b, size, batch, steps, warm, gpu, tmp))
            if "gan" in cases:
                add(bench_gan(steps * (10 if gpu else 4), warm, gpu, tmp))
            if "mura" in cases:
                n_mura = a.mura_images or (2000 if gpu else 600)
                add(*bench_mura(n_mura, 224, 256 if gpu else 32, tmp, round_=r))
            if "jobs_per_gpu" in cases:
                ks = [int(k) for k in (a.jobs_per_gpu or ("1,2,4,8" if gpu else "1,2")).split(",")]
                add(*bench_jobs_per_device(ks, steps * (10 if gpu else 2), warm, gpu, tmp, pools))
            if "gan_fused" in cases:
                ks = [int(k) for k in (a.fused_k or ("1,5,25" if gpu else "4")).split(",")]
                for row in bench_gan_fused(ks, steps * (10 if gpu else 1), warm, gpu, tmp):
                    add(row)
            if "gan_speed" in cases:
                for row in bench_gan_speed(
                    steps * (10 if gpu else 2), warm, gpu, tmp, a.gan_variants
                ):
                    add(row)
            if "clf_speed" in cases:
                for row in bench_classifier_speed(
                    steps * (10 if gpu else 2), warm, gpu, tmp, a.clf_variants
                ):
                    add(row)
        if "pool" in pools:
            pools["pool"].close()
            pools["pool"].join()
    results = payload["results"]
    dev = payload["machine"].get("gpu") or f"CPU x{os.cpu_count()}"
    print(
        f"\ndevice: {dev}, torch {torch.__version__}, preset {a.preset}, commit {payload['commit'][:10]}"
    )
    print(f"{'case':78s} {'plain':>9s} {'ours':>9s} {'ratio':>6s}")
    for r in results:
        print(
            f"{r['case']:78s} {r['plain']:9.1f} {r['ours']:9.1f} {r['ratio']:6.2f}  {r['unit']}"
            + (f"  [{r['error']}]" if "error" in r else "")
        )
    if a.save:
        slug = "".join(c if c.isalnum() else "-" for c in dev).strip("-").lower()
        p = ROOT / "benchmarks" / "results" / f"{payload['date'][:10]}_{slug}.json"
        write(p)
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
