"""Your own images and models: dataset=folder (class folders or a CSV) on real chest X-rays, any
torchvision backbone by name, task=predict, and a dataset + GAN networks added from a folder
outside the repository."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from tasks import run_task
from tests.conftest import DATA_DIR, FAST, ROOT, compose, run_py
from xfergan.errors import UserError

NPZ = DATA_DIR / "pneumoniamnist" / "pneumoniamnist.npz"
NAMES = ["normal", "pneumonia"]
TRAIN = FAST + [
    "dataset.n_per_class=null",
    "dataset.batch_size=64",
    "dataset.augment.enabled=false",
    "trainer.max_epochs=3",
    "checkpoint.test=last",
    "logger=none",
    "seed=3",
]


@pytest.fixture(scope="module")
def xray_files(tmp_path_factory):
    """The real PneumoniaMNIST images as PNG files: class folders per split, and a CSV with
    made-up patient ids (in the npz's order)."""
    root = tmp_path_factory.mktemp("xrays")
    z = np.load(NPZ)
    rows = []
    for split, key in (("train", "train"), ("val", "val"), ("test", "test")):
        for i, (img, lab) in enumerate(zip(z[f"{key}_images"], z[f"{key}_labels"][:, 0])):
            rel = f"{split}/{NAMES[lab]}/{split}_{i:05d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(root / rel, compress_level=1)
            rows.append([rel, NAMES[lab], f"patient{i // 3:05d}-{split}", split])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "split"])
        w.writerows(rows)
    return root


def test_folder_and_csv_match_the_medmnist_loader(xray_files, tmp_path):
    """Same images, same seed, same settings: the same accuracy as the .npz loader. Training
    order is part of "the same settings" (on PneumoniaMNIST a reshuffle alone moves test/acc by
    up to 6 pp), so the CSV (written in the npz's order) is compared with the official npz, and
    the class-folder layout (listed class by class) with the same npz stored class by class."""
    z = dict(np.load(NPZ))
    for split in ("train", "val", "test"):
        order = np.argsort(z[f"{split}_labels"][:, 0], kind="stable")
        z[f"{split}_images"], z[f"{split}_labels"] = (
            z[f"{split}_images"][order],
            z[f"{split}_labels"][order],
        )
    np.savez(tmp_path / "by_class.npz", **z)
    runs = {
        "npz": ["dataset=pneumoniamnist"],
        "npz_by_class": ["dataset=pneumoniamnist", f"dataset.npz_path={tmp_path / 'by_class.npz'}"],
        "folder": ["dataset=folder", f"dataset.root={xray_files}", "dataset.image_size=28"],
        "csv": [
            "dataset=folder",
            f"dataset.csv={xray_files / 'labels.csv'}",
            "dataset.image_size=28",
        ],
    }
    two = ["trainer.max_epochs=2"]  # the same pixels: equal after any number of epochs
    m = {k: run_task(compose(TRAIN + o + two, tmp_path / k)) for k, o in runs.items()}
    for mine, ref in (("csv", "npz"), ("folder", "npz_by_class")):
        a, b = m[mine], m[ref]
        assert (a["n_train"], a["n_val"], a["n_test"]) == (b["n_train"], b["n_val"], b["n_test"])
        assert a["class_names"] == NAMES == b["class_names"]
        assert abs(a["test/acc"] - b["test/acc"]) <= 0.01, (mine, a["test/acc"], b["test/acc"])
        assert a["test/auroc"] == pytest.approx(b["test/auroc"], abs=0.01)
    assert m["csv"]["test/acc"] == pytest.approx(m["npz"]["test/acc"], abs=1e-9)  # same run
    assert "test/study_kappa" in m["csv"] and m["csv"]["test/n_studies"] < m["csv"]["n_test"]
    assert "test/study_majority_acc" in m["csv"]


def test_folder_few_shot_and_bad_files(xray_files, tmp_path):
    bad = xray_files / "train" / "normal" / "zz_broken.png"
    good = sorted((xray_files / "train" / "normal").glob("*.png"))[0]
    bad.write_bytes(good.read_bytes()[:40])  # a truncated PNG
    (xray_files / "train" / "normal" / "notes.txt").write_text("not an image")
    try:
        cfg = compose(
            FAST + ["dataset=folder", f"dataset.root={xray_files}", "dataset.n_per_class=5"],
            tmp_path,
        )
        from xfergan.training import build_datamodule

        dm = build_datamodule(cfg)
        dm.setup()
        assert dm.class_counts("train") == [5, 5]
        assert [p["path"] for p in dm.problems] == ["train/normal/zz_broken.png"]
        with pytest.raises(UserError, match="on_bad_image=skip"):
            build_datamodule(
                compose(
                    FAST
                    + [
                        "dataset=folder",
                        f"dataset.root={xray_files}",
                        "dataset.on_bad_image=error",
                    ],
                    tmp_path / "b",
                )
            ).setup()
    finally:
        bad.unlink()
        (xray_files / "train" / "normal" / "notes.txt").unlink()


def test_csv_paths_that_leave_its_folder_are_refused(tmp_path, xray_files):
    f = tmp_path / "escape.csv"
    f.write_text(
        "path,label,split\n"
        f"{xray_files}/train/normal/train_00000.png,normal,train\n"
        "../../etc/passwd,normal,train\n"
    )
    cfg = compose(FAST + ["dataset=folder", f"dataset.csv={f}"], tmp_path / "o")
    from xfergan.training import build_datamodule

    dm = build_datamodule(cfg)
    with pytest.raises(UserError):  # nothing readable is left
        dm.setup()
    assert {p["reason"] for p in dm.problems} == {"path outside the dataset root"}


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_any_torchvision_backbone_trains(backbone, tmp_path):
    m = run_task(
        compose(
            FAST
            + [
                "debug=smoke",
                "logger=none",
                f"model.backbone={backbone}",
                "model.init=scratch",
                "dataset.image_size=32",
                "dataset.n_per_class=2",
            ],
            tmp_path,
        )
    )
    assert m["status"] == "ok" and m["model"] == backbone and 0 <= m["test/acc"] <= 1


def test_missing_imagenet_weights_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(UserError) as e:
        run_task(
            compose(
                FAST
                + [
                    "model.backbone=efficientnet_b0",
                    "model.init=imagenet",
                    "model.weights=DEFAULT",
                    "dataset.image_size=32",
                ],
                tmp_path,
            )
        )
    msg = str(e.value)
    assert "\n" not in msg and "efficientnet_b0_rwightman-7f5810bc.pth" in msg
    assert "hub/checkpoints" in msg


def test_predict_lists_unreadable_files_and_predicts_the_rest(xray_files, tmp_path):
    run_dir = tmp_path / "run"
    r = run_py(
        TRAIN
        + [
            "dataset=folder",
            f"dataset.root={xray_files}",
            "dataset.image_size=28",
            "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    inp = tmp_path / "new_images"
    inp.mkdir()
    for i in range(6):
        src = xray_files / "test" / NAMES[i % 2]
        (inp / f"x{i}.png").write_bytes(next(src.glob("*.png")).read_bytes())
    (inp / "truncated.png").write_bytes((inp / "x0.png").read_bytes()[:50])
    (inp / "readme.txt").write_text("not an image")
    m = run_task(
        compose(["task=predict", f"run={run_dir}", f"input={inp}", "logger=none"], tmp_path / "p")
    )
    assert m["n_predicted"] == 6 and m["n_skipped"] == 2
    rows = list(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    assert [r["path"] for r in rows] == [f"x{i}.png" for i in range(6)]
    assert set(rows[0]) == {"level", "path", "group", "predicted", "prob_normal", "prob_pneumonia"}
    assert all(abs(float(r["prob_normal"]) + float(r["prob_pneumonia"]) - 1) < 1e-4 for r in rows)
    skipped = (tmp_path / "p" / "skipped_images.csv").read_text()
    assert "truncated.png" in skipped and "readme.txt" in skipped


EXT_MODULE = '''
import numpy as np
import torch
from torch import nn

from datamodules.base import ImageDataModule, Split, Splits, uids_of



class ChestData(ImageDataModule):
    """A user's own datamodule: real chest X-rays from an npz, its own way."""

    def __init__(self, npz: str, **kwargs):
        super().__init__(**kwargs)
        self.npz = npz

    def load(self):
        z = np.load(self.npz)

        def split(name, n):
            x = torch.from_numpy(z[f"{name}_images"][:n]).unsqueeze(1)
            y = torch.from_numpy(z[f"{name}_labels"][:n, 0].astype("int64"))
            return Split(x, y, uid=uids_of([f"chest/{name}/{i}" for i in range(len(y))]))

        return Splits(split("train", 80), split("val", 20), split("test", 40), ["ok", "sick"])


class TinyG(nn.Module):
    def __init__(self, num_classes, image_size, channels, z_dim, hidden):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.embed = nn.Embedding(num_classes, 8)
        self.net = nn.Sequential(nn.Linear(z_dim + 8, hidden), nn.ReLU(),
                                 nn.Linear(hidden, channels * image_size * image_size), nn.Tanh())

    def forward(self, z, y):
        return self.net(torch.cat([z, self.embed(y)], 1)).view(-1, *self.shape)


class TinyD(nn.Module):
    def __init__(self, num_classes, image_size, channels, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size**2, hidden),
                                 nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(num_classes, hidden)

    def forward(self, x, y):
        h = self.net(x)
        return self.out(h).squeeze(1) + (self.embed(y) * h).sum(1)
'''


def test_a_dataset_and_gan_networks_added_from_outside_the_repo(tmp_path):
    ext = tmp_path / "ext"
    (ext / "conf" / "dataset").mkdir(parents=True)
    (ext / "conf" / "gan" / "generator").mkdir(parents=True)
    (ext / "conf" / "gan" / "discriminator").mkdir(parents=True)
    (ext / "my_project.py").write_text(EXT_MODULE)
    (ext / "conf" / "dataset" / "chest.yaml").write_text(
        "defaults: [schema_image, _self_]\n_target_: my_project.ChestData\nname: chest\n"
        f"root: {ext}\nimage_size: 28\nchannels: 1\nnormalize: half\nargs:\n  npz: {NPZ}\n"
    )
    (ext / "conf" / "gan" / "generator" / "tiny.yaml").write_text(
        "_target_: my_project.TinyG\nhidden: 32\n"
    )
    (ext / "conf" / "gan" / "discriminator" / "tiny.yaml").write_text(
        "_target_: my_project.TinyD\nhidden: 32\n"
    )
    before = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    env = {"PYTHONPATH": str(ext)}
    common = [
        f"hydra.searchpath=[file://{ext / 'conf'}]",
        "dataset=chest",
        "model=small_cnn",
        "model.width=8",
        "trainer.accelerator=cpu",
        "debug=smoke",
        "logger=none",
        "trainer.enable_progress_bar=false",
    ]
    # one pipeline: its GAN (the outside networks), the synthetic set and a classifier on real
    r = run_py(
        common
        + [
            "task=pipeline",
            "pipeline.arms=[real,synthetic]",
            "pipeline.feature_net=false",
            "gan/generator=tiny",
            "gan/discriminator=tiny",
            "gan.image_size=28",
            f"hydra.run.dir={tmp_path / 'pipe'}",
        ],
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    gan = json.loads((tmp_path / "pipe" / "gan" / "metrics.json").read_text())
    assert gan["status"] == "ok" and gan["gan/steps"] > 0
    import torch

    ckpt = torch.load(tmp_path / "pipe/gan/checkpoints/last.ckpt", weights_only=False)
    nets = [ckpt["hyper_parameters"][n]["_target_"] for n in ("generator", "discriminator")]
    assert nets == ["my_project.TinyG", "my_project.TinyD"]  # what the GAN stage was built from
    man = json.loads((tmp_path / "pipe" / "synthesize" / "manifest.json").read_text())
    assert man["real_data"]["dataset"] == "chest" and man["counts_per_class"] == [16, 16]
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.load(NPZ)["test_images"][0], "L").save(imgs / "a.png")
    r = run_py(
        [
            "task=predict",
            f"run={tmp_path / 'pipe' / 'classify_real'}",
            f"input={imgs / 'a.png'}",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'pred'}",
        ],
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    pred = (tmp_path / "pred" / "predictions.csv").read_text()
    assert "prob_ok" in pred and "a.png" in pred
    after = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert after == before, "the repository was changed"


@pytest.fixture(scope="module")
def own_data_sweep(xray_files, tmp_path_factory):
    """README's own-data commands on real PNGs (one seed, debug=smoke): the sweep and its report."""
    sweep = tmp_path_factory.mktemp("own") / "sweep"
    r = run_py(
        [
            "experiment=own_data",
            f"dataset.root={xray_files}",
            "dataset.n_per_class=8",
            "dataset.image_size=32",  # the teacher arm's MobileNetV2 needs >= 32 px
            "debug=smoke",
            "logger=none",
            "seed=0",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    return sweep, r


def test_own_data_ends_with_a_report_even_when_a_metric_is_undefined(own_data_sweep, tmp_path):
    """A smoke-trained arm may predict one class: its kappa is undefined (null). The command
    succeeds with a report; and the report of that sweep with one arm's kappa undefined (made
    so in a copy, whatever this run's arms happened to predict) counts it as missing and says
    so."""
    import shutil

    sweep, r = own_data_sweep
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 jobs -- 1 ok, 0 failed, 0 missing" in r.stdout
    assert (sweep / "report.md").is_file()
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    run = json.loads((copy / "0" / "metrics.json").read_text())
    arm = run["arms"][0]
    run[f"test/kappa_{arm}"] = None  # what a run writes for an arm that predicts one class
    (copy / "0" / "metrics.json").write_text(json.dumps(run))
    stage = copy / "0" / f"classify_{arm}" / "metrics.json"
    stage.write_text(json.dumps({**json.loads(stage.read_text()), "test/kappa": None}))
    run_task(compose(["task=report", f"dir={copy}", "logger=none"], tmp_path / "report"))
    rep = json.loads((copy / "report.json").read_text())
    kappa = rep["arms"]["groups"][0]["arms"]["test/kappa"]
    assert kappa[arm]["missing_seeds"] == [0] and kappa[arm]["n"] == 0, kappa
    assert "1 undefined" in (copy / "report.md").read_text()


def test_predict_and_evaluate_take_a_pipeline_stage_dir(own_data_sweep, xray_files, tmp_path):
    """README: `python run.py task=predict run=<sweep dir>/0/classify_distill_gan input=...`, and
    task=evaluate on the same stage dir reproduces its test numbers (its own config: the stage's
    settings, not the pipeline's)."""
    sweep, _ = own_data_sweep
    stage = sweep / "0" / "classify_distill_gan"
    inp = tmp_path / "new_images"
    inp.mkdir()
    for i in range(4):
        src = sorted((xray_files / "test" / NAMES[i % 2]).glob("*.png"))[i]
        (inp / f"x{i}.png").write_bytes(src.read_bytes())
    r = run_py(
        ["task=predict", f"run={stage}", f"input={inp}", f"hydra.run.dir={tmp_path / 'p'}"]
        + ["logger=none"]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    assert len(rows) == 4 and {r["predicted"] for r in rows} <= set(NAMES)
    m = json.loads((stage / "metrics.json").read_text())
    tested = np.load(stage / "test_predictions.npz")
    assert m["n_test"] == len(tested["label"]) < m["n_test_split"] and m["test_partial"]
    e = run_task(
        compose(["task=evaluate", f"run={stage}", "logger=none", "debug=smoke"], tmp_path / "ev")
    )  # under the stage's own cap (debug=smoke tests the first 2 batches)
    assert e["test/acc"] == pytest.approx(m["test/acc"], abs=1e-9)
    assert e["n_test"] == m["n_test"] and e["test_partial"]


def _rows(tmp_path, **where):
    """The listing a folder dataset reads (rows(): no image is decoded)."""
    from xfergan.training import build_datamodule

    ov = [f"dataset.{k}={v}" for k, v in where.items()]
    return build_datamodule(compose(FAST + ["dataset=folder", *ov], tmp_path / "cfg")).rows()


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)


def test_bad_folder_layouts_and_csvs_are_one_line(tmp_path):
    """Layouts and CSVs that lost or mixed images silently now stop in one line saying what to
    do: a class folder with no images (it vanished from the classes), split folders in another
    case (read as classes), val/test without train, an image listed twice in a CSV (train and
    test), a spreadsheet's UTF-8 CSV with a byte-order mark (its `path` column was not found),
    a Latin-1 CSV (a UnicodeDecodeError traceback)."""
    flat = tmp_path / "flat"
    _png(flat / "cat" / "a.png")
    _png(flat / "dog" / "b.png")
    (flat / "bird").mkdir()
    (flat / "bird" / "c.dcm").write_bytes(b"DICM")
    with pytest.raises(UserError, match=r"\['bird'\] have no training images"):
        _rows(tmp_path, root=flat)

    cased = tmp_path / "cased"
    for split in ("Train", "test"):
        _png(cased / split / "cat" / "a.png")
    with pytest.raises(UserError, match=r"\['Train'\]: name them in lower case"):
        _rows(tmp_path, root=cased)
    (cased / "Train").rename(cased / "Training")
    with pytest.raises(UserError, match=r"\['Training'\]: split folders are named train"):
        _rows(tmp_path, root=cased)
    (cased / "Training").rename(cased / "other")
    with pytest.raises(UserError, match=r"\['other'\] beside test/ would not be read"):
        _rows(tmp_path, root=cased)
    (cased / "other").rename(cased / ".other")
    with pytest.raises(UserError, match="has test/ but no train/"):
        _rows(tmp_path, root=cased)

    _png(tmp_path / "csv" / "cat" / "a.png")
    twice = tmp_path / "csv" / "twice.csv"
    twice.write_text("path,label,split\ncat/a.png,cat,train\ncat/a.png,cat,test\n")
    with pytest.raises(UserError, match="cat/a.png is listed on lines 2 and 3"):
        _rows(tmp_path, csv=twice)
    bom = tmp_path / "csv" / "bom.csv"
    bom.write_bytes("path,label\ncat/a.png,cat\n".encode("utf-8-sig"))
    root, rows, names, problems = _rows(tmp_path, csv=bom)
    assert [r.path for r in rows] == ["cat/a.png"] and names == ["cat"] and not problems
    latin = tmp_path / "csv" / "latin.csv"
    latin.write_bytes("path,label\ncat/a.png,chat_noir_\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text.*save it as CSV UTF-8") as e:
        _rows(tmp_path, csv=latin)
    assert "\n" not in str(e.value)


def test_an_image_too_large_to_decode_is_a_counted_skip(tmp_path):
    """Pillow's decompression-bomb error escaped the decode pool as a traceback: now the
    image's reason, like any unreadable file's."""
    from datamodules.files import decode_image

    big = tmp_path / "big.png"
    Image.new("1", (14000, 14000)).save(big)  # 196 MP: over twice Pillow's limit
    x, why = decode_image(str(big), 32)
    assert x is None and "too large" in why


def test_a_class_with_no_image_left_is_named(tmp_path):
    import torch

    from datamodules.sampling import stratified_sample

    labels = torch.tensor([0, 0, 0, 2, 2])  # class 1: none ("has only 0 images; use at most 0")
    with pytest.raises(UserError, match="class 1 has no images left to draw from"):
        stratified_sample(labels, 1, seed=0, num_classes=3)


def test_folder_layouts_that_lost_images_silently_now_say_so(tmp_path, caplog):
    """A valid/ folder beside train/ and class folders beside the split folders were not read,
    without a word; images loose in train/ vanished; an unlabeled/ folder (one l) became a
    class. Now: one line for the folders, a counted warning for the loose images, and both
    spellings are the unlabelled pool."""
    d = tmp_path / "d"
    for split in ("train", "valid"):
        for c in ("a", "b"):
            _png(d / split / c / "0.png")
    with pytest.raises(UserError, match=r"\['valid'\].*rename valid/ to val/"):
        _rows(tmp_path, root=d)
    (d / "valid").rename(d / "val")
    _png(d / "c" / "0.png")
    with pytest.raises(UserError, match=r"\['c'\] beside train/, val/ would not be read"):
        _rows(tmp_path, root=d)
    (d / "c").rename(d / "unlabeled")
    _png(d / "train" / "loose1.png")
    _png(d / "train" / "loose2.png")
    with caplog.at_level("WARNING"):
        root, rows, names, _ = _rows(tmp_path, root=d)
    assert names == ["a", "b"]
    assert [r.path for r in rows if r.split == "unlabelled"] == ["unlabeled/0.png"]
    assert "skipped 2 images that are not in a class folder" in caplog.text
    assert not any("loose" in r.path for r in rows)


def test_csv_splits_keep_files_groups_and_the_users_own_splits(tmp_path):
    """Three ways a CSV put one patient's or one file's images on both sides: ./a/0.png in test
    and a/0.png in train were two images; rows without a split were cut by test_fraction even
    though other rows had one (the schema says it applies only when no image has a split), and
    an unsplit row of a test patient could land in train; a patient listed in val and in test."""
    from xfergan.training import build_datamodule

    d = tmp_path / "csv"
    for i in range(4):
        _png(d / "a" / f"{i}.png")
        _png(d / "b" / f"{i}.png")
    twice = d / "twice.csv"
    twice.write_text("path,label,split\na/0.png,a,train\n./a/0.png,a,test\nb/0.png,b,train\n")
    with pytest.raises(UserError, match="a/0.png is listed on lines 2 and 3"):
        _rows(tmp_path, csv=twice)

    def splits(text: str, **kw):
        f = d / "s.csv"
        f.write_text(text)
        ov = [f"dataset.{k}={v}" for k, v in kw.items()]
        dm = build_datamodule(
            compose(FAST + ["dataset=folder", f"dataset.csv={f}", *ov], tmp_path / "c")
        )
        rows = dm.rows()[1]
        return {s: sorted(r.path for r in rs) for s, rs in dm._assign_splits(rows).items()}

    head = "path,label,group,split\n"
    # p9 is a test patient: its unsplit row joins test; the other unsplit rows stay train
    got = splits(
        head
        + "a/0.png,a,p9,test\na/1.png,a,p9,\nb/0.png,b,p1,\nb/1.png,b,p2,\na/2.png,a,p3,train\n",
        val_fraction=0,
    )
    assert got["test"] == ["a/0.png", "a/1.png"]
    assert got["train"] == ["a/2.png", "b/0.png", "b/1.png"] and got["val"] == []
    with pytest.raises(UserError, match="group 'p1' has images in val and in test"):
        splits(head + "a/0.png,a,p1,val\na/1.png,a,p1,test\nb/0.png,b,p2,train\n")
    # a test patient's unlabelled images would join the training pool: refused; a train
    # patient's may (both are the training side)
    with pytest.raises(UserError, match="group 'p1' has images in test and in unlabelled"):
        splits(head + "a/0.png,a,p1,test\na/1.png,,p1,unlabelled\nb/0.png,b,p2,train\n")
    got = splits(head + "a/0.png,a,p1,train\na/1.png,,p1,unlabelled\nb/0.png,b,p2,test\n")
    assert got["unlabelled"] == ["a/1.png"] and got["train"] == ["a/0.png"]


def test_another_copy_with_the_same_names_sizes_and_times_is_not_served_this_ones_pixels(
    tmp_path,
):
    """The decode cache was keyed on each file's name, size and modification time: a second
    dataset with the same names, sizes and times (cp -a of other images, an unpacked archive)
    got the first one's decoded pixels. The key now holds the root."""
    import os

    from datamodules.files import ImageRow, cache_key

    rows = [ImageRow("a/0.png", 0, "train")]
    for name, value in (("one", 10), ("two", 250)):
        f = tmp_path / name / "a" / "0.png"
        f.parent.mkdir(parents=True)
        Image.new("L", (8, 8), value).save(f)
        os.utime(f, ns=(10**18, 10**18))
    one, two = (cache_key(tmp_path / n, rows, 32, "gray") for n in ("one", "two"))
    assert (tmp_path / "one/a/0.png").stat().st_size == (tmp_path / "two/a/0.png").stat().st_size
    assert one != two
    assert one == cache_key(tmp_path / "one", rows, 32, "gray")  # the same copy: its cache
