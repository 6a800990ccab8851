"""Framework overhead, measured as ratios: in ONE process on ONE device, the same work timed twice
-- a plain PyTorch loop written here, and the project's path (Trainer + our LightningModule + our
DataModule). Prints a table and writes JSON.

    python benchmarks/bench.py                      # CPU, small sizes
    python benchmarks/bench.py --preset gpu         # real sizes (ResNet50 224 px bf16, ...)
    python benchmarks/bench.py --cases classifier --backbones mobilenet_v2 --size 64 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402

from datamodules.base import ImageDataModule, Split, Splits  # noqa: E402
from lightning_modules.classifier import ClassifierModule  # noqa: E402
from lightning_modules.gan import ConditionalGAN  # noqa: E402


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class RandomImages(ImageDataModule):
    """Our datamodule over random uint8 images (the same code path as MNIST/MURA)."""

    def __init__(self, n: int, size: int, channels: int, num_classes: int, **kw):
        super().__init__(name="random", root="", image_size=size, channels=channels, **kw)
        g = torch.Generator().manual_seed(0)
        self._x = torch.randint(0, 255, (n, channels, size, size), dtype=torch.uint8, generator=g)
        self._y = torch.randint(0, num_classes, (n,), generator=g)
        self._k = num_classes

    def load(self) -> Splits:
        s = Split(self._x, self._y)
        e = Split(self._x[:0], self._y[:0])
        return Splits(s, e, e, [str(i) for i in range(self._k)])


class StepTimer(pl.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.t0 is None and self._count(trainer) >= self.warmup:
            sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.n += 1
            sync()
            self.t1 = time.perf_counter()

    @staticmethod
    def _count(trainer):
        return trainer.fit_loop.epoch_loop.total_batch_idx


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


def trainer(max_steps: int, precision: str, callbacks) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accelerator="auto",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        benchmark=torch.cuda.is_available(),
    )


def bench_classifier(
    backbone: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    precision: str,
    channels_last: bool,
    compile_: bool,
) -> dict:
    dev = device()
    n = batch * (steps + warmup)
    kw = dict(
        backbone=backbone,
        num_classes=10,
        init="scratch",
        channels_last=channels_last,
        compile=compile_,
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3},
        scheduler={"name": "none"},
    )
    # plain loop: same model, same uint8 tensors, same preprocessing, hand-written step
    dm = RandomImages(n, size, 3, 10, batch_size=batch, normalize="imagenet")
    dm.setup()
    x_all, y_all = dm.splits.train.x.to(dev), dm.splits.train.y.to(dev)
    model = ClassifierModule(**kw).to(dev)
    net = model.net
    if compile_:
        net.compile()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    amp = precision.startswith("bf16")
    mf = torch.channels_last if channels_last else torch.contiguous_format

    def step():
        idx = torch.randint(0, n, (batch,), device=dev)
        x = dm.preprocess(x_all[idx]).contiguous(memory_format=mf)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(net(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    plain = batch * steps / timed(step, steps, warmup)
    # our path
    dm2 = RandomImages(n, size, 3, 10, batch_size=batch, normalize="imagenet")
    model = ClassifierModule(**kw)
    timer = StepTimer(warmup)
    trainer(steps + warmup, precision, [timer]).fit(model, datamodule=dm2)
    ours = batch * timer.n / (timer.t1 - timer.t0)
    return {
        "case": f"classifier {backbone} {size}px bs{batch}",
        "unit": "img/s",
        "plain": plain,
        "ours": ours,
        "ratio": ours / plain,
    }


def bench_gan(size: int, batch: int, steps: int, warmup: int, width: int) -> dict:
    dev = device()
    n = batch * 10
    kw = dict(
        num_classes=10, image_size=size, channels=1, z_dim=64, g_channels=width, d_channels=width
    )
    model = ConditionalGAN(**kw).to(dev)
    opt_g, opt_d = model.configure_optimizers()
    x_all = torch.rand(n, 1, size, size, device=dev) * 2 - 1
    y_all = torch.randint(0, 10, (n,), device=dev)

    def step():
        idx = torch.randint(0, n, (batch,), device=dev)
        x, y = x_all[idx], y_all[idx]
        with torch.no_grad():
            fake = model.G(model._z(batch), y)
        ld = model._d_loss(model.D(model._aug(x), y), model.D(model._aug(fake), y))
        opt_d.zero_grad(set_to_none=True)
        ld.backward()
        opt_d.step()
        yg = y[torch.randperm(batch, device=dev)]
        lg = model._g_loss(model.D(model._aug(model.G(model._z(batch), yg)), yg))
        opt_g.zero_grad(set_to_none=True)
        lg.backward()
        opt_g.step()
        model.ema.update_parameters(model.G)
        float(ld)  # the Lightning path checks losses for divergence every step too

    plain = steps / timed(step, steps, warmup)
    dm = RandomImages(n, size, 1, 10, batch_size=batch, normalize="half")
    model = ConditionalGAN(**kw)
    timer = StepTimer(warmup)
    trainer((steps + warmup) * 2, "32-true", [timer]).fit(model, datamodule=dm)
    ours = timer.n / (timer.t1 - timer.t0)
    return {
        "case": f"GAN step (G+D) {size}px bs{batch} width{width}",
        "unit": "steps/s",
        "plain": plain,
        "ours": ours,
        "ratio": ours / plain,
    }


def bench_mura(n_images: int, size: int, batch: int) -> dict:
    """Reading MURA from our decoded cache vs decoding PNGs with PIL on the fly (one core)."""
    import numpy as np
    from PIL import Image

    from datamodules.mura import Row, decode_image, load_or_build_cache

    tmp = Path(tempfile.mkdtemp(prefix="xfergan-bench-"))
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n_images):
        p = f"MURA-v1.1/train/XR_WRIST/patient{i:05d}/study1_negative/image1.png"
        (tmp / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (512, 420), dtype=np.uint8), "L").save(tmp / p)
        rows.append(Row(p, "train", "wrist", f"patient{i:05d}", p.rsplit("/", 1)[0] + "/", 0))
    t0 = time.perf_counter()
    for r in rows:
        decode_image(str(tmp / r.path), size)
    pil = n_images / (time.perf_counter() - t0)
    load_or_build_cache(tmp, rows, size, tmp / "cache", 0, "bench")  # build once
    x, _ = load_or_build_cache(tmp, rows, size, tmp / "cache", 0, "bench")
    dm = RandomImages(1, size, 1, 2, batch_size=batch)  # only for its preprocess
    dm.augment = {"enabled": True, "rotation": 30, "hflip": True}
    dev = device()
    xd = x.to(dev)
    t0 = time.perf_counter()
    seen = 0
    for _ in range(3):
        for i in range(0, len(xd), batch):
            dm.preprocess(xd[i : i + batch], train=True)
            seen += len(xd[i : i + batch])
    sync()
    cache = seen / (time.perf_counter() - t0)
    return {
        "case": f"MURA input {size}px ({n_images} PNGs): cache+augment vs PIL decode (1 core)",
        "unit": "img/s",
        "plain": pil,
        "ours": cache,
        "ratio": cache / pil,
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--preset", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument("--cases", default="classifier,gan,mura")
    ap.add_argument("--backbones", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    a = ap.parse_args()
    gpu = a.preset == "gpu"
    backbones = (a.backbones or "resnet50,mobilenet_v2").split(",")
    size = a.size or (224 if gpu else 64)
    batch = a.batch or (256 if gpu else 32)
    steps = a.steps or (50 if gpu else 12)
    precision = "bf16-mixed" if gpu else "32-true"
    torch.backends.cudnn.benchmark = gpu
    results = []
    cases = a.cases.split(",")
    if "classifier" in cases:
        for b in backbones:
            results.append(bench_classifier(b, size, batch, steps, 3, precision, gpu, False))
    if "gan" in cases:
        results.append(bench_gan(28, 64, steps * (10 if gpu else 4), 5, 64 if gpu else 32))
    if "mura" in cases:
        results.append(bench_mura(2000 if gpu else 200, 224, 256 if gpu else 64))
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    print(f"\ndevice: {dev}, torch {torch.__version__}, preset {a.preset}")
    print(f"{'case':70s} {'plain':>10s} {'ours':>10s} {'ratio':>7s}")
    for r in results:
        print(
            f"{r['case']:70s} {r['plain']:10.1f} {r['ours']:10.1f} {r['ratio']:7.2f}  {r['unit']}"
        )
    payload = {"device": dev, "torch": torch.__version__, "preset": a.preset, "results": results}
    if a.out:
        Path(a.out).write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
