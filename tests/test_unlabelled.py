"""The unlabelled pool and the semi-supervised arms (issue 29): the pool is the training split
outside the labelled subset and val, never a val/test image, its labels never read (a run is
the same when they are permuted), its ids recorded; FixMatch (`semi`) and the semi-supervised GAN
(`semi_gan`) train from it in a pipeline beside `real`; a model whose pool held this run's val
images is refused like a foreign synthetic set."""

import json
import math

import numpy as np
import pytest
import torch

from tasks import run_task
from tests.conftest import FAST, compose
from tests.mura_tree import build_tree
from xfergan.errors import UserError
from xfergan.training import build_datamodule

MNIST = FAST + ["dataset=mnist", "dataset.n_per_class=4", "dataset.val_per_class=3", "logger=none"]


def _dm(overrides, tmp_path, name="dm"):
    dm = build_datamodule(compose(overrides, tmp_path / name), use_unlabelled=True)
    dm.setup()
    return dm


def _disjoint(dm) -> None:
    pool = dm.unlabelled.uid
    for split in ("train", "val", "test"):
        assert not torch.isin(pool, getattr(dm.splits, split).uid).any(), split


def test_the_pool_is_the_rest_of_the_training_split_and_nothing_else(tmp_path):
    dm = _dm(MNIST, tmp_path)
    _disjoint(dm)
    assert len(dm.unlabelled) == 60_000 - 40 - 30  # every other training image, once
    assert len(torch.unique(dm.unlabelled.uid)) == len(dm.unlabelled)
    rec = dm.provenance()
    assert rec["n_unlabelled"] == 59_930 and len(rec["unlabelled_ids_sha256"]) == 64
    assert dm.sizes()["n_unlabelled"] == 59_930
    # the cap: a seeded draw of the pool, another seed another draw
    a = _dm(MNIST + ["dataset.unlabelled_cap=100"], tmp_path, "a")
    b = _dm(MNIST + ["dataset.unlabelled_cap=100", "seed=1"], tmp_path, "b")
    assert len(a.unlabelled) == 100 and torch.isin(a.unlabelled.uid, dm.unlabelled.uid).all()
    assert a.provenance()["unlabelled_ids_sha256"] != b.provenance()["unlabelled_ids_sha256"]
    _disjoint(b)
    # a run without a semi-supervised arm loads no pool and records none
    plain = build_datamodule(compose(MNIST, tmp_path / "plain"))
    plain.setup()
    assert plain.unlabelled is None and "unlabelled_ids_sha256" not in plain.provenance()


def test_pneumoniamnist_and_mura_trees_give_a_pool_too(tmp_path):
    pn = _dm(FAST + ["dataset=pneumoniamnist", "dataset.n_per_class=5", "logger=none"], tmp_path)
    _disjoint(pn)
    # the shared copy: 3,882 training images, 10 of them pixel for pixel a labelled, val or
    # test image (left out of the pool: PneumoniaMNIST's official splits share a few images)
    assert pn.pool_copies == 10 and len(pn.unlabelled) == 3882 - 10 - 10
    build_tree(tmp_path / "data" / "mura")
    mura = [
        "dataset=mura",
        "dataset.image_size=32",
        "dataset.decode_workers=1",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.n_per_class=2",
        "logger=none",
    ]
    dm = _dm(mura, tmp_path, "mura")
    _disjoint(dm)
    full = build_datamodule(compose(mura[:-2] + ["logger=none"], tmp_path / "full"))
    full.setup()
    assert len(dm.unlabelled) == len(full.splits.train) - 4


def test_a_semi_run_needs_images_outside_its_labelled_subset(tmp_path):
    cfg = compose(FAST + ["dataset=pneumoniamnist", "semi.method=fixmatch"], tmp_path / "r")
    with pytest.raises(UserError, match="no unlabelled images"):
        run_task(cfg)
    with pytest.raises(UserError, match="semi.method='bogus'"):
        run_task(compose(MNIST + ["semi.method=bogus"], tmp_path / "s"))


@pytest.mark.parametrize("method", ["fixmatch", "semi_gan"])
def test_the_pools_labels_are_never_read(method, tmp_path, monkeypatch):
    """The same run twice, the second with the pool's labels permuted inside the datamodule:
    the same weights after training, the same test predictions."""
    from datamodules.base import ImageDataModule

    args = MNIST + [
        f"semi.method={method}",
        "dataset.unlabelled_cap=500",
        "trainer.max_steps=3",
        "dataset.batch_size=8",
        "trainer.deterministic=true",
    ]
    first = run_task(compose(args, tmp_path / "a"))
    orig = ImageDataModule._unlabelled_pool

    def permuted(self, pool, splits):
        out = orig(self, pool, splits)
        out.y = out.y[torch.randperm(len(out.y), generator=torch.Generator().manual_seed(1))]
        assert (out.y != orig(self, pool, splits).y).any()
        return out

    monkeypatch.setattr(ImageDataModule, "_unlabelled_pool", permuted)
    second = run_task(compose(args, tmp_path / "b"))
    assert first["n_unlabelled"] == second["n_unlabelled"] == 500
    assert first["global_step"] == second["global_step"] == 3
    wa = torch.load(first["last_checkpoint"], weights_only=False)["state_dict"]
    wb = torch.load(second["last_checkpoint"], weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert first["test/acc"] == second["test/acc"]


def test_a_model_that_saw_another_seeds_pool_is_refused(tmp_path):
    """A seed-0 FixMatch model's pool holds seed 1's val images: as seed 1's model.init it is
    refused like a foreign synthetic set (and flagged with model_provenance=ignore)."""
    m = run_task(
        compose(
            MNIST + ["semi.method=fixmatch", "trainer.max_steps=2", "dataset.unlabelled_cap=30000"],
            tmp_path / "s0",
        )
    )
    assert m["data/unlabelled_ids_sha256"] and m["n_unlabelled"] == 30_000
    ckpt = m["last_checkpoint"]
    rec = torch.load(ckpt, weights_only=False)["xfergan_provenance"]
    assert rec["unlabelled_ids_sha256"] == m["data/unlabelled_ids_sha256"]
    assert len(rec["seen_uids"]) == 40 + 30_000  # labelled + pool: both seen
    other = MNIST + ["seed=1", f"model.init={ckpt}", "trainer.max_steps=1"]
    with pytest.raises(UserError, match="images of this run's val split"):
        run_task(compose(other, tmp_path / "s1"))
    flagged = run_task(compose(other + ["dataset.model_provenance=ignore"], tmp_path / "s1i"))
    assert flagged["init_foreign"] is True


def test_a_pipeline_with_both_semi_arms_writes_their_stages_and_report_rows(tmp_path):
    # an FID feature net of this seed and val split (it saw only its labelled images)
    feat = run_task(compose(MNIST + ["trainer.max_steps=2"], tmp_path / "feat"))
    args = MNIST + [
        f"gan.feature_ckpt={feat['last_checkpoint']}",
        "gan.eval_n_per_class=10",
        "task=pipeline",
        "pipeline.arms=[real,semi,semi_gan]",
        "pipeline.primary=[[semi_gan,real],[semi_gan,semi],[semi,real]]",
        "pipeline.feature_net=false",
        "dataset.unlabelled_cap=200",
        "trainer.max_steps=4",
        "dataset.batch_size=8",
        "logger=csv",  # the val curve per stage (csv/metrics.csv)
        "trainer.check_val_every_n_epoch=1",
    ]
    out = tmp_path / "p"
    m = run_task(compose(args, out))
    semi_m = json.loads((out / "classify_semi" / "metrics.json").read_text())
    for arm, method in (("semi", "fixmatch"), ("semi_gan", "semi_gan")):
        st = json.loads((out / f"classify_{arm}" / "metrics.json").read_text())
        assert st["status"] == "ok" and st["semi/method"] == method and st["n_unlabelled"] == 200
        assert st["global_step"] == st["step_budget"] == 4  # classifier steps, G's not counted
        real_ids = json.loads((out / "classify_real" / "metrics.json").read_text())
        assert st["data/train_ids_sha256"] == real_ids["data/train_ids_sha256"]  # one subset
        assert (out / f"classify_{arm}" / "checkpoints" / "last.ckpt").is_file()
        assert m[f"steps_{arm}"] == 4
    assert (out / "classify_semi_gan" / "samples_final.png").stat().st_size > 500
    # the semi-supervised GAN's G gets a GAN-quality row (its tested checkpoint's G, on the 30
    # val images, class-blind: as many fakes as real images for precision/recall)
    sg = json.loads((out / "classify_semi_gan" / "metrics.json").read_text())
    assert sg["val/gan_n_real"] == 30 and sg["val/gan_n_precision_recall"] == 30
    assert sg["val/gan_n_fake"] == 100 and sg["feature_net_foreign"] is False
    assert 0 <= sg["val/gan_precision"] <= 1 and sg["val/gan_fid"] > 0
    assert not [k for k in sg if "_per_class_" in k]
    assert not [k for k in semi_m if "/gan_" in k]  # FixMatch has no G
    assert m["gans"] == {"classify_semi_gan": "_semi_gan"}
    assert m["val/gan_fid_semi_gan"] == sg["val/gan_fid"] and m["gan/steps_semi_gan"] == 4
    real = json.loads((out / "classify_real" / "metrics.json").read_text())
    semi = json.loads((out / "classify_semi" / "metrics.json").read_text())
    assert semi["data/train_ids_sha256"] == real["data/train_ids_sha256"]  # one labelled subset
    assert "data/unlabelled_ids_sha256" not in real
    rep = run_task(compose(["task=report", f"dir={out}"], tmp_path / "rep"))
    assert rep["report/runs"] == 1
    md = (out / "report.md").read_text()
    assert "plus 200 unlabelled images (semi, semi_gan: labels never read)" in md
    # the steps table counts classifier steps and says what else a semi step does
    assert "A step of `semi`, `semi_gan` also draws unlabelled images" in md
    for a, b in (("semi_gan", "real"), ("semi_gan", "semi"), ("semi", "real")):
        assert f"{a} − {b}" in md
    gan_rows = md.split("## GAN quality")[1].split("\n## ")[0]
    assert "| classify_semi_gan |" in gan_rows
    fid = json.loads((out / "report.json").read_text())
    assert "classify_semi_gan" in json.dumps(fid)
    # where each method is heading: val accuracy against the classifier's steps (the semi GAN's
    # generator steps not counted), every arm, in a file and a plot
    import csv

    rows = list(csv.DictReader((out / "report_curves.csv").open()))
    by_arm = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(int(r["step"]))
    assert set(by_arm) == {"real", "semi", "semi_gan"}
    assert max(by_arm["semi_gan"]) == max(by_arm["real"]) == 4
    assert (out / "plot_val_curves.png").stat().st_size > 1000


def test_your_own_folder_gives_its_unlabelled_folder_to_the_pool(tmp_path):
    """root/unlabelled/ (images without a label) joins the rest of the training split in the
    pool; it is no class, and a run without a semi-supervised arm does not read it."""
    root = tmp_path / "own"
    _own(root)
    args = FAST + ["dataset=folder", f"dataset.root={root}", "dataset.n_per_class=2"]
    dm = _dm(args + ["logger=none"], tmp_path)
    assert dm.class_names == ["cat", "dog"] and len(dm.splits.train) == 4
    assert len(dm.unlabelled) == (12 - 4) + 5
    _disjoint(dm)
    plain = build_datamodule(compose(args + ["logger=none"], tmp_path / "plain"))
    plain.setup()
    assert plain.unlabelled is None and plain.class_names == ["cat", "dog"]
    assert plain.sizes()["n_train"] == 4 and not plain.problems
    # one folder per class, no splits: unlabelled/ is still no class
    flat, rng = tmp_path / "flat", np.random.default_rng(1)
    for c in ("cat", "dog"):
        for i in range(8):
            _noise_png(rng, flat / c / f"{i}.png")
    for i in range(3):
        _noise_png(rng, flat / "unlabelled" / f"u{i}.png")
    dm = _dm(FAST + ["dataset=folder", f"dataset.root={flat}", "logger=none"], tmp_path, "flat")
    assert dm.class_names == ["cat", "dog"]
    assert len(dm.unlabelled) == 3  # every labelled image is used (no n_per_class): the folder


def test_a_class_blind_generator_is_checked_for_memorizing_the_pool_it_was_fitted_to(tmp_path):
    """The semi-supervised GAN's G learns the unlabelled pool: its memorization row measures
    against the labelled images and the pool (a G that copies pool images is at distance 0;
    it looked clean when only the few labelled images were the reference)."""
    from tasks.gan import evaluate_quality

    feat = run_task(compose(MNIST + ["trainer.max_steps=2"], tmp_path / "feat"))
    over = [f"gan.feature_ckpt={feat['last_checkpoint']}", "gan.eval_n_per_class=3"]
    cfg = compose(MNIST + over + ["dataset.unlabelled_cap=50"], tmp_path / "q")
    dm = _dm(MNIST + ["dataset.unlabelled_cap=50"], tmp_path)
    pool = dm.unlabelled_images()

    class CopiesThePool(torch.nn.Module):
        conditional, image_side = False, 28

        def sample(self, labels, generator=None):
            return pool[: len(labels)].float() / 255.0

    q = evaluate_quality(cfg, CopiesThePool(), dm)
    assert q["val/gan_n_fake"] == 30 and q["val/gan_n_real"] == 30
    assert q["val/gan_nn_dist_fake_to_train"] < 0.01  # cdist's rounding; a real gap is ~5+
    assert q["val/gan_frac_fake_closer_than_any_real"] == 1.0


def test_the_semi_gans_generated_images_never_enter_the_statistics_it_is_tested_with(
    tmp_path, monkeypatch
):
    """The semi-supervised GAN's classifier is tested in eval mode, where BatchNorm uses its
    running statistics: those must come from real images only. Its generator's images (made
    unmistakable here: every pixel 30, real ones lie in [-1, 1]) pass through the classifier in
    train mode for its real-vs-fake loss and for feature matching, and must leave them alone
    (they moved them: the tuning seed's val accuracy rose from 0.8875 to 0.9375 when its
    statistics were recomputed from pool images). The real images move them once a step, in the
    D pass over labelled + pool images; feature matching's target pass over the pool images did
    too (twice the momentum, the pool counted twice), and no longer does."""
    import tasks.classify as classify
    from lightning_modules.semi_gan import SemiGAN

    passes = []  # (the batch held generated images, a running statistic moved)

    def stats(net):
        return torch.cat(
            [
                torch.cat([m.running_mean, m.running_var, m.num_batches_tracked.view(1).float()])
                for m in net.modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            ]
        ).clone()

    build = classify.build_classifier

    def build_and_watch(cfg, dm):
        model = build(cfg, dm)
        body = model.net.body
        body.register_forward_pre_hook(lambda m, a: setattr(m, "_before", stats(m)))

        def after(m, a, out):
            if m.training:
                fake = bool((a[0].flatten(1).amin(1) > 20).any())
                passes.append((fake, not torch.equal(m._before, stats(m))))

        body.register_forward_hook(after)
        return model

    generate = SemiGAN.generate
    monkeypatch.setattr(classify, "build_classifier", build_and_watch)
    monkeypatch.setattr(SemiGAN, "generate", lambda self, n: generate(self, n) * 1e-3 + 30.0)
    args = MNIST + ["semi.method=semi_gan", "trainer.max_steps=6", "dataset.unlabelled_cap=100"]
    run_task(compose(args + ["dataset.batch_size=8"], tmp_path / "s"))
    with_fakes = [moved for fake, moved in passes if fake]
    assert len(with_fakes) == 12  # a D pass and a G pass per classifier step
    assert not any(with_fakes)
    real_moves = [moved for fake, moved in passes if not fake]
    assert sum(real_moves) == 6, real_moves  # one real pass a step updates them (it was 12)


def test_what_the_semi_gan_cannot_do_is_one_line_before_anything_trains(tmp_path):
    """semi_gan steps its own optimizers: gradient clipping (here set for its arm only) was a
    Lightning traceback after `real` had trained; now one line, and no stage ran. A pool side its
    generator cannot draw names dataset.image_size (it named gan.image_size, in a traceback)."""
    from lightning_modules.semi_gan import check_settings

    args = MNIST + [
        "task=pipeline",
        "pipeline.arms=[real,semi_gan]",
        "pipeline.primary=[]",
        "pipeline.feature_net=false",
        "+pipeline.arm_overrides.semi_gan={trainer.gradient_clip_val:1.0}",
    ]
    out = tmp_path / "p"
    with pytest.raises(UserError, match="trainer.gradient_clip_val=null") as e:
        run_task(compose(args, out))
    assert "\n" not in str(e.value) and not (out / "classify_real").exists()
    with pytest.raises(UserError, match="accumulate_grad_batches=1"):
        check_settings({"accumulate_grad_batches": 4})
    with pytest.raises(UserError, match=r"100 px.*dataset.image_size"):
        check_settings({}, pool_side=100)
    check_settings({"gradient_clip_val": None}, pool_side=28)  # MNIST's side: fine
    # DDP: Lightning's "parameters that were not used" traceback after the stages before it
    for ddp in ({"strategy": "ddp", "devices": 2}, {"devices": [0, 1]}):
        with pytest.raises(UserError, match="trains on one device"):
            check_settings(ddp)
    check_settings({"strategy": "auto", "devices": 1})
    check_settings({"devices": "auto"})  # decided at fit time: SemiGAN.setup checks it there


def test_a_resumed_semi_run_continues_its_pool_draws(tmp_path):
    """The pool's draws are in the checkpoint: a module loaded from it draws what the saved one
    would have drawn next (before, a resumed run re-seeded and replayed its first draws)."""
    from lightning_modules.semi import FixMatch

    pool = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 28, 28)

    def module():
        m = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, init="scratch", width=8)
        m.attach_unlabelled(pool.clone(), lambda x, train: x.float(), seed=7)
        return m

    a = module()
    first = a.unlabelled_batch(16)[:, 0, 0, 0]
    ckpt: dict = {}
    a.on_save_checkpoint(ckpt)
    after = a.unlabelled_batch(16)[:, 0, 0, 0]
    b = module()
    b.on_load_checkpoint(ckpt)
    assert torch.equal(b.unlabelled_batch(16)[:, 0, 0, 0], after)
    assert torch.equal(module().unlabelled_batch(16)[:, 0, 0, 0], first)  # a fresh one: seeded


def test_the_progress_log_counts_the_semi_gans_classifier_steps():
    """The semi-supervised GAN's generator takes an optimizer step of its own per classifier
    step, and Lightning counts both: its progress log said 178/100 steps (178%). It now counts
    the classifier's, as metrics.json does."""
    from types import SimpleNamespace

    from lightning_modules.semi_gan import SemiGAN
    from xfergan.progress import ProgressLog

    trainer = SimpleNamespace(global_step=200)
    module = SimpleNamespace(classifier_steps=lambda t: SemiGAN.classifier_steps(None, t))
    assert ProgressLog()._done(trainer, module) == 100
    assert ProgressLog()._done(trainer, SimpleNamespace()) == 200


def _noise_png(rng, path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(path)


def _own(root, pool_copies_of_test=0, seed=0):
    """root/train|val|test/{cat,dog}/*.png (random pixels) and root/unlabelled/batch1/ of 5 new
    images, plus copies (other names, same pixels) of the first `pool_copies_of_test` test
    images in root/unlabelled/."""
    import shutil

    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        for i in range(6):
            _noise_png(rng, root / "train" / c / f"{i}.png")
        for i in range(2):
            _noise_png(rng, root / "val" / c / f"{i}.png")
            _noise_png(rng, root / "test" / c / f"{i}.png")
    for i in range(5):
        _noise_png(rng, root / "unlabelled" / "batch1" / f"u{i}.png")
    tests = sorted((root / "test").rglob("*.png"))[:pool_copies_of_test]
    for i, f in enumerate(tests):
        shutil.copy(f, root / "unlabelled" / f"copy{i}.png")


def test_copies_of_evaluated_images_never_enter_the_pool(tmp_path):
    """The pool was checked by ids (paths): test images copied into unlabelled/ under other names
    (the classic "all my images" folder) were trained on as unlabelled images. Pool images that
    are pixel for pixel a labelled, val or test image are now left out, counted and logged."""
    root = tmp_path / "own"
    _own(root, pool_copies_of_test=3)
    args = FAST + ["dataset=folder", f"dataset.root={root}", "dataset.n_per_class=2"]
    dm = _dm(args + ["logger=none"], tmp_path)
    assert len(dm.unlabelled) == (12 - 4) + 5 and dm.pool_copies == 3
    assert dm.sizes()["n_unlabelled_copies_left_out"] == 3
    pool = dm.unlabelled.x.flatten(1)
    for part in (dm.splits.test, dm.splits.val, dm.real_train):
        same = (pool[:, None, :] == part.x.flatten(1)[None]).all(-1).any()
        assert not bool(same)
    # a pool of nothing but copies: one line (it crashed mid-training at the first draw)
    import shutil

    only = tmp_path / "only"
    _own(only)
    shutil.rmtree(only / "unlabelled")
    shutil.copytree(only / "test", only / "unlabelled")
    args = FAST + ["dataset=folder", f"dataset.root={only}", "dataset.n_per_class=null"]
    with pytest.raises(UserError, match="every one of the 4 unlabelled images is a copy"):
        _dm(args + ["logger=none"], tmp_path, "only")


def test_own_data_pools_in_the_wrong_place_or_sharing_patients_are_handled(tmp_path):
    """train/unlabelled/ was read as a third class ("unlabelled", trained on with that label and
    absent from test): refused in one line. A CSV whose patients have labelled rows without a
    split and unlabelled rows was refused ("fix the split column"), even for a run that never
    reads the pool: patients with pool images now stay on the training side of the split."""
    import csv as csvmod

    root = tmp_path / "own"
    _own(root)
    (root / "unlabelled").rename(root / "train" / "unlabelled")
    args = FAST + ["dataset=folder", f"dataset.root={root}", "dataset.n_per_class=2"]
    with pytest.raises(
        UserError, match=r"train/unlabelled/: the unlabelled pool is a folder beside"
    ):
        _dm(args + ["logger=none"], tmp_path, "misplaced")
    # a CSV: 12 patients x 3 labelled rows without a split; patients 0-5 have a pool row too
    from PIL import Image

    data = tmp_path / "csv"
    rows = []
    for p in range(12):
        for i in range(4 if p < 6 else 3):
            rel = f"img/p{p}_{i}.png"
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), 10 * p + i).save(data / rel)
            label, split = (["a", "b"][p % 2], "") if i < 3 else ("", "unlabelled")
            rows.append([rel, label, f"pat{p}", split])
    with open(data / "labels.csv", "w", newline="") as f:
        w = csvmod.writer(f)
        w.writerow(["path", "label", "group", "split"])
        w.writerows(rows)
    csv_args = FAST + ["dataset=folder", f"dataset.csv={data / 'labels.csv'}", "logger=none"]
    csv_args += ["dataset.val_fraction=0.25", "dataset.test_fraction=0.25"]
    plain = build_datamodule(compose(csv_args, tmp_path / "plain"))
    plain.setup()  # refused before, pool or not
    semi = _dm(csv_args, tmp_path, "semi")
    assert len(semi.splits.train) + len(semi.splits.val) + len(semi.splits.test) == 36
    # val and test: 2 of the 6 patients without pool images each (their 3 rows), never a
    # pooled patient (all 18 of their labelled rows in train)
    assert len(semi.unlabelled) == 6
    assert (len(semi.splits.train), len(semi.splits.val), len(semi.splits.test)) == (24, 6, 6)


def test_a_semi_gan_pool_side_it_cannot_draw_is_refused_before_anything_trains(tmp_path):
    """With image files at dataset.image_size=72 the semi_gan arm failed on its generator's
    size only at its own stage, after `real` and `semi` had trained. The pipeline now asks the
    datamodule the side its images load at (nothing loaded) and says so first."""
    root = tmp_path / "own"
    _own(root)
    args = [a for a in FAST if "image_size" not in a] + [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.image_size=72",
        "dataset.n_per_class=2",
        "logger=none",
        "task=pipeline",
        "pipeline.arms=[real,semi,semi_gan]",
        "pipeline.primary=[]",
        "pipeline.feature_net=false",
        "trainer.max_steps=2",
    ]
    out = tmp_path / "p"
    with pytest.raises(UserError, match=r"72 px, which must be b·2\^k with b in 4..7") as e:
        run_task(compose(args, out))
    assert "\n" not in str(e.value) and not (out / "classify_real").exists()


def test_fixmatch_can_evaluate_an_ema_of_its_weights_as_sohn_et_al(tmp_path):
    """semi.fixmatch.ema_decay: val, the checkpoints' state_dict (what test, teachers and inits
    load) and test use an EMA of the weights (BatchNorm buffers too), warmed up so a short run
    is not evaluated near its random init; the trained weights stay in the checkpoint for resume.
    Off by default (what results/ used)."""
    from lightning_modules.semi import warm_ema

    args = MNIST + ["semi.method=fixmatch", "dataset.unlabelled_cap=200", "trainer.max_steps=4"]
    args += ["dataset.batch_size=8", "checkpoint.test=last"]
    ema = run_task(compose(args + ["semi.fixmatch.ema_decay=0.999"], tmp_path / "ema"))
    blob = torch.load(ema["last_checkpoint"], weights_only=False)
    avg, cur = blob["state_dict"], blob["current_model_state"]
    floats = [k for k in avg if avg[k].is_floating_point()]
    assert any(not torch.equal(avg[k], cur[k]) for k in floats)
    assert ema["global_step"] == 4 and math.isfinite(ema["test/acc"])
    # the warm-up: the 2nd update moves the average 1 - 2/11 of the way, not 0.001
    a, c = torch.zeros(3), torch.ones(3)
    assert torch.allclose(warm_ema(0.999)(a, c, torch.tensor(1)), torch.full((3,), 1 - 2 / 11))
    assert torch.allclose(warm_ema(0.999)(a, c, torch.tensor(10**6)), torch.full((3,), 0.001))
    with pytest.raises(UserError, match="ema_decay=1.5"):
        run_task(compose(args + ["semi.fixmatch.ema_decay=1.5"], tmp_path / "bad"))
