import pytest
import torch

from datamodules.mnist import MNISTDataModule, load_mnist_arrays
from datamodules.sampling import few_shot_split, stratified_sample
from tests.conftest import DATA_DIR, FAST, compose
from xfergan.errors import UserError


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_arrays(str(DATA_DIR / "mnist"))


def test_real_mnist_sizes(mnist):
    assert mnist["train"][0].shape == (60000, 1, 28, 28)
    assert mnist["test"][0].shape == (10000, 1, 28, 28)
    assert mnist["train"][0].dtype == torch.uint8


def test_exact_counts_per_class(mnist):
    y = mnist["train"][1]
    train, val = few_shot_split(y, 32, 10, seed=0, num_classes=10)
    assert torch.bincount(y[train], minlength=10).tolist() == [32] * 10
    assert torch.bincount(y[val], minlength=10).tolist() == [10] * 10
    assert not set(train.tolist()) & set(val.tolist()), "val must not overlap train"


def test_same_seed_same_images_other_seed_other_images(mnist):
    y = mnist["train"][1]
    a, _ = few_shot_split(y, 32, 10, seed=3, num_classes=10)
    b, _ = few_shot_split(y, 32, 10, seed=3, num_classes=10)
    c, _ = few_shot_split(y, 32, 10, seed=4, num_classes=10)
    assert torch.equal(a, b)
    assert len(set(a.tolist()) & set(c.tolist())) < len(a) // 2


def test_full_data_uses_everything_but_val(mnist):
    y = mnist["train"][1]
    train, val = few_shot_split(y, None, 100, seed=0, num_classes=10)
    assert len(train) == 60000 - 1000 and len(val) == 1000


@pytest.mark.parametrize("n", [0, -3, 7000])
def test_impossible_n_per_class_is_a_clear_error(mnist, n):
    y = mnist["train"][1]
    with pytest.raises(UserError, match="n_per_class"):
        stratified_sample(y, n, 0, 10)


def test_datamodule_test_set_is_official_10k():
    dm = MNISTDataModule(
        name="mnist",
        root=str(DATA_DIR / "mnist"),
        n_per_class=5,
        val_per_class=2,
        image_size=32,
        channels=3,
    )
    dm.setup()
    assert dm.sizes()["n_train"] == 50 and dm.sizes()["n_test"] == 10000
    x, y, *_ = next(iter(dm.test_dataloader()))
    x = dm.preprocess(x)
    assert x.shape == (500, 3, 32, 32) and x.dtype == torch.float32
    # ImageNet normalization: black background maps to about -mean/std
    assert x.min().item() < -1.5 and x.max().item() > 1.5


def test_batches_are_sliced_on_the_splits_device_without_a_host_index(monkeypatch):
    """The training loader yields index tensors cut from one per-epoch copy of the order on the
    split's device (no list -> tensor per batch), and they are the batches a plain DataLoader of
    the same epoch sampler makes, ragged last batch included."""
    from datamodules.loaders import EpochSampler, IndexedTensors, _identity

    dm = MNISTDataModule(
        name="mnist", root=str(DATA_DIR / "mnist"), n_per_class=5, val_per_class=2, seed=3
    )
    dm.batch_size = 16
    dm.setup()
    loader = dm.train_dataloader()
    split = dm.splits.train
    plain = torch.utils.data.DataLoader(
        IndexedTensors(split),
        batch_size=16,
        sampler=EpochSampler(len(split), 3, None, 0, 1, dm.epoch_samples(1)),
        collate_fn=_identity,
    )
    calls, real = [], torch.as_tensor

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)

    for epoch in (0, 1):
        for ld in (loader, plain):
            ld.sampler.set_epoch(epoch)
        want = [b.y for b in plain]
        calls.clear()
        monkeypatch.setattr(torch, "as_tensor", counted)
        got = [b.y for b in loader]
        monkeypatch.setattr(torch, "as_tensor", real)
        assert not calls  # no host index built per batch
        assert [len(b) for b in got] == [len(b) for b in want] == [16, 16, 16, 2]
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert all(b.device == split.y.device for b in got)


def test_a_budget_without_a_divisor_near_the_epoch_target_says_so(tmp_path, caplog):
    """601 steps (a prime) run as one epoch of 601: val, checkpoints, resume points and
    warmup_epochs then come once. It still runs exactly 601 steps; now it says so and names a
    budget that divides."""
    from xfergan.training import build_datamodule

    dm = build_datamodule(compose(FAST + ["dataset.n_per_class=2"], tmp_path))
    with caplog.at_level("WARNING"):
        assert dm.plan_epochs(600) == 12 and "no divisor" not in caplog.text
        assert dm.plan_epochs(601) == 1
    assert (
        "a budget of 601 steps has no divisor near 50: it runs as 1 epoch(s) of 601" in caplog.text
    )


def test_mnist_is_read_once_per_process_until_its_files_change(tmp_path, monkeypatch):
    """Every stage of a pipeline loads MNIST: the same files are parsed once, a changed file is
    read again, and the ids of a stage's images are those of their names."""
    import os
    import shutil

    import datamodules.mnist as mn
    from datamodules.base import uids_of

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in mn.MNIST_FILES:
        shutil.copy(DATA_DIR / "mnist" / "MNIST" / "raw" / f"{f}-ubyte", raw)
    reads = []
    real = mn.MNIST
    monkeypatch.setattr(mn, "MNIST", lambda **kw: reads.append(kw) or real(**kw))
    a = load_mnist_arrays(str(tmp_path))
    assert load_mnist_arrays(str(tmp_path)) is a and len(reads) == 2  # train + test, once
    labels = raw / "t10k-labels-idx1-ubyte"
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # rewritten, say
    assert load_mnist_arrays(str(tmp_path)) is not a and len(reads) == 4
    dm = MNISTDataModule(name="mnist", root=str(tmp_path), n_per_class=3, val_per_class=2)
    dm.setup()
    idx = dm.splits.info["train_indices"].tolist()
    assert dm.splits.train.uid.tolist() == uids_of([f"mnist/train/{i}" for i in idx]).tolist()
    assert (
        dm.splits.test.uid.tolist()[:3]
        == uids_of(["mnist/test/0", "mnist/test/1", "mnist/test/2"]).tolist()
    )
