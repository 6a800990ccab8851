"""What users run, timed against its plain-PyTorch equivalent in the same process: the project
side is built with the very functions the tasks use (build_datamodule, build_classifier,
build_gan, build_trainer from a composed Hydra config); the plain side is a hand-written loop over
the same tensors and the same model math. Prints ratios (ours / plain) and writes JSON.

    python benchmarks/bench.py                          # CPU sizes
    python benchmarks/bench.py --preset gpu             # real sizes (ResNet50 224 px bf16, ...)
    python benchmarks/bench.py --save                   # also benchmarks/results/<date>_<device>.json
    python benchmarks/bench.py --cases gan --steps 200  # one case

Cases: classifier training step (MobileNetV2, ResNet50) on real MNIST; the conditional GAN's
G+D step on real MNIST (experiment=paper_table3's GAN); MURA input on a generated MURA-layout
tree through MURADataModule: the first epoch (decoding every PNG into the cache) vs a PIL
DataLoader that decodes, and later epochs (read from the cache) vs the same PIL DataLoader.
"""

from __future__ import annotations

import argparse
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

from tasks.classify import build_classifier  # noqa: E402
from tasks.gan import build_gan, gan_datamodule  # noqa: E402
from xfergan.machine import commit, machine  # noqa: E402
from xfergan.training import build_datamodule, build_trainer  # noqa: E402


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compose(overrides: list[str], out: Path):
    """The config run.py would build (same conf/, same schemas)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from xfergan.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hcompose(
            config_name="config",
            overrides=overrides
            + [f"paths.output_dir={out}", "logger=none", "trainer.enable_progress_bar=false"],
        )


class StepTimer(pl.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.t0 is None and trainer.fit_loop.epoch_loop.total_batch_idx >= self.warmup:
            sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.n += 1
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
    # ours: exactly the task's path
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_classifier(cfg, dm)
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, tmp, [], [timer], **_fit_overrides(steps + warmup))
    trainer.fit(model, datamodule=dm)
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
def bench_gan(batch, steps, warmup, width, gpu, tmp: Path) -> dict:
    over = [
        "experiment=paper_table3",
        "task=gan",
        f"gan.batch_size={batch}",
        f"gan.generator.width={width}",
        f"gan.discriminator.width={width}",
        "dataset.n_per_class=32",
        f"gan.steps={steps + warmup}",
    ]
    over += ["trainer=gpu", "trainer.precision=32-true"] if gpu else ["trainer.accelerator=cpu"]
    cfg = compose(over, tmp / "gan")
    torch.set_flush_denormal(True)  # as run_task does
    dm = gan_datamodule(cfg)
    dm.setup()
    model = build_gan(cfg, dm)
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, tmp, [], [timer], **_fit_overrides(2 * (steps + warmup)))
    trainer.fit(model, datamodule=dm)
    ours = timer.n / (timer.t1 - timer.t0)
    dev = device()
    plain_model = build_gan(cfg, dm).to(dev)
    opt_g, opt_d = plain_model.configure_optimizers()
    x_all = dm.preprocess(dm.splits.train.x.to(dev))  # [-1, 1], as the loop sees it
    y_all = dm.splits.train.y.to(dev)
    n = len(y_all)

    def step():
        idx = torch.randint(0, n, (batch,), device=dev)
        plain_model.gan_step(x_all[idx], y_all[idx], opt_g, opt_d, lambda loss: loss.backward())

    plain = steps / timed(step, steps, warmup)
    return {
        "case": f"GAN step (D+G, EMA) 28px bs{batch} width{width}",
        "unit": "steps/s",
        "plain": plain,
        "ours": ours,
        "ratio": ours / plain,
    }


def _gan_speed_one(name: str, steps: int, warmup: int, gpu: bool, tmp: Path) -> dict:
    """One option, e.g. eager_bs64, cudagraphs_bs256_bf16 or eager_bs64_projected (the
    discriminator on frozen ImageNet MobileNetV2 features): real images per second."""
    kind, bs, *rest = name.split("_")
    mode = {"eager": None, "compile": "default", "cudagraphs": "reduce-overhead"}[kind]
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

    def step():
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        idx = torch.randint(0, len(y_all), (batch,), device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            model.gan_step(x_all[idx], y_all[idx], opt_g, opt_d, lambda loss: loss.backward())

    step()  # the first call compiles
    first = time.perf_counter() - t0
    return {"rate": batch * steps / timed(step, steps, warmup), "first_step_s": first}


def bench_gan_speed(steps, warmup, gpu, tmp: Path, variants: str) -> list[dict]:
    """The speed options for the paper's GAN step (experiment=paper_table3_full's G and D, plain
    loop around the module's own gan_step): a larger batch (the same passes over the real images
    in fewer steps), bf16 autocast (what trainer=gpu runs), torch.compile with and without CUDA
    graphs. Figure: real images per second (batch x steps/s), against the first variant."""
    base, out = None, []
    for name in variants.split(","):
        row = {"case": f"GAN speed {name} (paper_table3_full G/D, plain loop)", "unit": "img/s"}
        try:
            got = _gan_speed_one(name, steps, warmup, gpu, tmp)
        except Exception as e:  # an option that does not run here is a finding, not a crash
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            out.append(
                {
                    **row,
                    "error": f"{type(e).__name__}: {msg}",
                    "plain": base or 0.0,
                    "ours": 0.0,
                    "ratio": 0.0,
                }
            )
            continue
        base = base or got["rate"]
        out.append(
            {
                **row,
                "plain": base,
                "ours": got["rate"],
                "ratio": got["rate"] / base,
                "first_step_s": got["first_step_s"],
            }
        )
    return out


# ----------------------------------------------------------------------------- MURA input
def _mura_tree(root: Path, n: int) -> None:
    """n generated radiograph-sized PNGs in the MURA-v1.1 layout, with its CSVs."""
    import numpy as np
    from PIL import Image

    base = root / "MURA-v1.1"
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("valid", max(8, n // 10))):
        rows, st = [], []
        for i in range(count):
            study = f"MURA-v1.1/{split}/XR_WRIST/patient{i:05d}/study1_{'positive' if i % 2 else 'negative'}/"
            p = study + "image1.png"
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            a = rng.integers(0, 255, (512, 420), dtype=np.uint8)
            Image.fromarray(a, "L").save(root / p, compress_level=1)
            rows.append(p)
            st.append((study, i % 2))
        (base / f"{split}_image_paths.csv").write_text("\n".join(rows) + "\n")
        (base / f"{split}_labeled_studies.csv").write_text(
            "\n".join(f"{s},{lab}" for s, lab in st) + "\n"
        )


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


def bench_mura(n_images: int, size: int, batch: int, tmp: Path) -> list[dict]:
    data = tmp.parent / f"mura_data_{n_images}"  # one tree for every round; a cache per round
    if not data.exists():
        _mura_tree(data / "mura", n_images)
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

    first, dm = ours_epoch()  # decodes every PNG into the cache
    later, dm = ours_epoch()  # a later run or epoch: read from the cache
    plain = plain_epoch(dm)
    return [
        {
            "case": f"MURA input {size}px, first epoch (decode into the cache), {workers} workers",
            "unit": "img/s",
            "plain": plain,
            "ours": first,
            "ratio": first / plain,
        },
        {
            "case": f"MURA input {size}px, later epochs (from the cache) vs PIL decode",
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
        "--cases", default="classifier,gan,mura", help="also: gan_speed (the GAN step's options)"
    )
    ap.add_argument(
        "--gan-variants",
        default="eager_bs64,eager_bs64_bf16,eager_bs256_bf16,cudagraphs_bs64_bf16",
        help="gan_speed: <eager|compile|cudagraphs>_bs<batch>[_bf16][_projected], comma-separated",
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
                    add(bench_classifier(b, size, batch, steps, 5, gpu, tmp))
            if "gan" in cases:
                gan_batch, gan_width = (64, 64) if gpu else (32, 16)
                add(bench_gan(gan_batch, steps * (10 if gpu else 8), 5, gan_width, gpu, tmp))
            if "mura" in cases:
                n_mura = a.mura_images or (2000 if gpu else 600)
                add(*bench_mura(n_mura, 224, 256 if gpu else 32, tmp))
            if "gan_speed" in cases:
                add(*bench_gan_speed(steps * (10 if gpu else 2), 5, gpu, tmp, a.gan_variants))
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
