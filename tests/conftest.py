"""Shared test helpers. Tests run offline on the real data in ../shared (DATA_DIR, TORCH_HOME)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.environ.setdefault("DATA_DIR", str(SHARED / "data"))
os.environ.setdefault("TORCH_HOME", str(SHARED / "weights"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# absolute paths, so subprocesses started elsewhere find the same data
os.environ["DATA_DIR"] = str(Path(os.environ["DATA_DIR"]).resolve())
os.environ["TORCH_HOME"] = str(Path(os.environ["TORCH_HOME"]).resolve())
DATA_DIR = Path(os.environ["DATA_DIR"])
if os.environ.get("PYTEST_XDIST_WORKER"):  # -n 2: one core per worker, its subprocesses too
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# tiny, fast settings shared by tests that train
FAST = [
    "model=small_cnn",
    "model.width=8",
    "dataset.image_size=28",
    "dataset.channels=1",
    "dataset.normalize=half",
    "dataset.eval_batch_size=1000",
    "trainer.limit_test_batches=2",  # 2,000 of MNIST's 10,000 test images (n_test says so)
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


GAN_FAST = [
    "gan.generator.width=8",
    "gan.generator.embed_dim=8",
    "gan.discriminator.width=8",
    "gan.z_dim=16",
    "gan.image_size=28",
    "gan.batch_size=20",
]


def small_gan(num_classes: int = 10, image_size: int = 28, channels: int = 1, **kw):
    """The DCGAN module with tiny networks, built directly (unit tests)."""
    from lightning_modules.gan import ConditionalGAN

    return ConditionalGAN(
        num_classes=num_classes,
        channels=channels,
        image_size=image_size,
        z_dim=16,
        generator={
            "_target_": "lightning_modules.nets.gan_nets.Generator",
            "width": 8,
            "embed_dim": 8,
        },
        discriminator={
            "_target_": "lightning_modules.nets.gan_nets.Discriminator",
            "width": 8,
            "spectral_norm": True,
            "mbstd": True,
        },
        **kw,
    )


def compose(overrides: list[str], out: Path | None = None):
    """Compose the real config (as run.py would) with `paths.output_dir` in a temp dir."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from xfergan.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    extra = [f"paths.output_dir={out}", f"paths.cache_dir={out}/cache"] if out else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides + extra)


def run_py(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 600):
    """Run `python run.py ...` in a subprocess (as a user would); returns CompletedProcess."""
    e = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


# The files with the longest runs first (measured on 2 cores: the durations pytest prints).
# `-n 2 --dist loadfile` deals whole files to the two workers in collection order as they free
# up (pyproject: --no-loadscope-reorder, else xdist orders files by their number of tests):
# longest first keeps one worker from starting a long file while the other has nothing left.
LONGEST_FIRST = (
    "test_long_runs.py",
    "test_reliability.py",
    "test_own_data.py",
    "test_gpu_path.py",
    "test_ablation.py",
    "test_experiments.py",
    "test_tracking.py",
    "test_gan.py",
    "test_graph_step.py",  # ~50 s on one core (18:30 UTC, 2026-12-04)
    "test_mura.py",
    "test_integrity.py",
    "test_evidence.py",
    "test_outside_knowledge.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))  # stable: order within a file kept
