"""K GANs trained as one (issue 28.3): K stacked GANs step exactly as K separate ConditionalGANs
given the same batches and random draws; one fused step of 8 GANs dispatches about the ops of
one; task=gan_fused writes K GAN run dirs that synthesize and the provenance checks take; a
multirun with pipeline.fused_gans trains its pipelines' GANs as one first and each pipeline takes
its own (issue 28.3's "its pipelines take theirs from there")."""

import copy
import json
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from lightning_modules.fused_gan import FusedGANs
from tests.conftest import FAST, GAN_FAST, compose, run_py, small_gan


def _gans(k: int, **kw):
    """k tiny GANs (3 classes), each its own initial weights."""
    out = []
    for i in range(k):
        torch.manual_seed(i)
        out.append(small_gan(3, 28, **kw))
    return out


@pytest.fixture
def float64():
    """Both paths in double precision: the same arithmetic summed in another order (stacked
    convolutions) then differs by ~1e-16, not by float32's ~1e-7 that Adam's first steps would
    blow up to lr-sized steps where a gradient is zero up to rounding (a bias before BatchNorm)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("lowering", ["vmap", "loop"])
@pytest.mark.parametrize(
    "kw",
    [
        {"ema_decay": 0.5},  # hinge, mode seeking, DiffAugment, one D step
        {
            "loss": "bce",
            "label_smoothing": 0.1,
            "d_steps": 2,
            "mode_seeking": 0.0,
            "ema_start_step": 2,
            "ema_decay": 0.5,
        },
    ],
)
def test_k_fused_gans_equal_k_separate_ones(kw, lowering, float64):
    """3 GANs stacked vs the same 3 as ConditionalGANs (their own Adams), 3 updates on the same
    batches with the same draws (each GAN its slice of the fused draws): the same losses, and
    the same G, D (spectral-norm vectors too), EMA, BatchNorm statistics and counts after,
    in both lowerings of the stack (vmap: a GPU's; loop: the CPU's)."""
    k, n, steps = 3, 8, 3
    separate = _gans(k, **kw)
    fused = FusedGANs([copy.deepcopy(g) for g in separate], lowering)
    fused_opts = fused.configure_optimizers()
    opts = [g.configure_optimizers() for g in separate]
    data = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(k, n, 1, 28, 28, generator=data) * 2 - 1
        y = torch.randint(0, 3, (k, n), generator=data)
        noise = fused.draw(n, (1, 28, 28), generator=data)
        loss_d, loss_g = fused.fused_step(x, y, *fused_opts, noise=noise)
        assert loss_d.shape == loss_g.shape == (k,)
        for i, (g, (opt_g, opt_d)) in enumerate(zip(separate, opts)):
            mine = tree_map(lambda t, i=i: t[i], noise)
            d, gl = g.gan_step(x[i], y[i], opt_g, opt_d, noise=mine)
            assert torch.allclose(loss_d[i], d, rtol=1e-9, atol=1e-10)
            assert torch.allclose(loss_g[i], gl, rtol=1e-9, atol=1e-10)
    start = _gans(k, **kw)
    for i, g in enumerate(separate):
        back = fused.gan(i).state_dict()
        sd = g.state_dict()
        assert set(back) == set(sd)
        for key, v in sd.items():
            assert torch.allclose(back[key].double(), v.double(), rtol=1e-9, atol=1e-10), key
        # not vacuous: the GANs moved, and each from its own start
        moved = [key for key, v in start[i].state_dict().items() if not torch.equal(v, sd[key])]
        assert any(key.startswith("G.") for key in moved)
        assert any(key.startswith("D.") and key.endswith("_u") for key in moved)
        assert any(key.startswith("ema.module.") for key in moved)
    assert not torch.equal(separate[0].G.fc.weight, separate[1].G.fc.weight)


class _CountOps(TorchDispatchMode):
    """Every aten op dispatched (backward's and the optimizers' too)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def test_one_fused_step_of_8_gans_dispatches_about_the_ops_of_one():
    """Issue 28's target: the aten calls of one fused K=8 step <= 1.2x those of K=1 (a step
    whose ops grew with K, e.g. a vmap fallback looping over the GANs, fails). The vmap
    lowering, a GPU's; the CPU's loop lowering dispatches K networks' ops by design."""
    counts = {}
    for k in (1, 8):
        fused = FusedGANs(_gans(k), lowering="vmap")
        opts = fused.configure_optimizers()
        x, y = torch.rand(k, 8, 1, 28, 28) * 2 - 1, torch.randint(0, 3, (k, 8))
        fused.fused_step(x, y, *opts)  # the first: Adam's state made
        with _CountOps() as c:
            fused.fused_step(x, y, *opts)
        counts[k] = c.ops
    n1, n8 = sum(counts[1].values()), sum(counts[8].values())
    grew = {op: (counts[1][op], n) for op, n in counts[8].items() if n > counts[1][op]}
    assert n8 <= 1.2 * n1, (n1, n8, grew)


def test_the_stack_lowers_to_vmap_on_a_gpu_and_to_a_loop_on_the_cpu():
    """auto: one kernel per layer for all K where launches cost (CUDA), K plain kernels where
    arithmetic does (the CPU, whose grouped convolutions are slower); a bad name is refused."""
    from lightning_modules.nets.stacked import Stacked

    stack = FusedGANs(_gans(2)).D
    assert stack.lowering == "auto"
    x, y = torch.rand(2, 4, 1, 28, 28), torch.randint(0, 3, (2, 4))
    with _CountOps() as c:
        stack(x, y)
    assert c.ops["aten.convolution"] == 2 * sum(
        isinstance(m, torch.nn.Conv2d) for m in stack._base[0].modules()
    )
    with pytest.raises(ValueError, match="lowering must be one of"):
        Stacked([torch.nn.Linear(2, 2)], lowering="grouped")


def test_gan_fused_writes_k_gan_run_dirs_that_synthesize_and_provenance_take(tmp_path):
    """task=gan_fused with seeds 0 and 1: two GAN run dirs, each with its own seed's real
    subset as provenance (the ids task=gan records for that seed); task=synthesize reads one,
    and a classifier of seed 0 takes its images while one of seed 1 refuses them."""
    from tasks import run_task
    from tasks.gan import gan_datamodule
    from tasks.synthesize import load_gan
    from xfergan.errors import UserError
    from xfergan.training import build_datamodule

    base = FAST + GAN_FAST + ["dataset.n_per_class=4", "logger=none"]
    out = tmp_path / "fused"
    m = run_task(compose(base + ["task=gan_fused", "gan_fused.seeds=[0,1]", "gan.steps=2"], out))
    assert m["gan/steps"] == 2 and m["gan/fused_k"] == 2
    ids = {}
    for s in (0, 1):
        d = out / f"seed_{s}"
        meta = json.loads((d / "metrics.json").read_text())
        assert meta["status"] == "ok" and meta["task"] == "gan" and meta["seed"] == s
        assert meta["gan/steps"] == 2 and (d / "samples" / "final.png").stat().st_size > 200
        gan = load_gan(d / "checkpoints" / "last.ckpt")
        assert gan.steps_done == 2
        ckpt = torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["xfergan_collapsed_d_streak"] == int(gan._div.bad) == 0  # (a healthy D)
        dm = gan_datamodule(compose(base + [f"seed={s}"], tmp_path / f"dm{s}"))
        dm.setup()
        own = dm.provenance()["train_ids_sha256"]
        assert gan.provenance["train_ids_sha256"] == own == meta["gan/train_ids_sha256"]
        ids[s] = own
    assert ids[0] != ids[1]
    syn = tmp_path / "syn"
    args = [
        "task=synthesize",
        f"synthesize.checkpoint={out / 'seed_0'}",
        "synthesize.n_per_class=3",
    ]
    run_task(compose(FAST + args, syn))
    own_data = [
        "dataset.source=synthetic",
        f"dataset.synthetic_path={syn}",
        "dataset.n_per_class=4",
    ]
    dm = build_datamodule(compose(FAST + own_data + ["seed=0"], tmp_path / "c0"))
    dm.setup()
    assert dm.sizes()["n_train_synthetic"] == 30
    dm = build_datamodule(compose(FAST + own_data + ["seed=1"], tmp_path / "c1"))
    with pytest.raises(UserError, match="trained on"):
        dm.setup()
    # a pipeline takes the GAN of its own seed, real data and gan settings from the fused dir,
    # and nothing else
    from tasks.gan_fused import find_gan_run

    want = base + ["gan.steps=2"]
    assert find_gan_run(compose(want + ["seed=1"], tmp_path / "p1"), out) == out / "seed_1"
    assert (
        find_gan_run(compose(want + ["seed=0"], tmp_path / "p0"), out / "seed_0") == out / "seed_0"
    )
    with pytest.raises(UserError, match="no finished GAN run .* for seed 2"):
        find_gan_run(compose(want + ["seed=2"], tmp_path / "p2"), out)
    with pytest.raises(
        UserError, match=r"for seed 0 .*other settings: seed_0: gan.steps=2 \(asked: 3\)"
    ):
        find_gan_run(compose(base + ["gan.steps=3", "seed=0"], tmp_path / "p3"), out)
    with pytest.raises(UserError, match="dataset.n_per_class=4 \\(asked: 5\\)"):
        find_gan_run(
            compose(
                FAST + GAN_FAST + ["dataset.n_per_class=5", "logger=none", "gan.steps=2"],
                tmp_path / "p4",
            ),
            out,
        )


SMOKE_GRID = [
    "experiment=synthetic_ablation",
    "debug=smoke",
    "pipeline.fused_gans=true",
    "pipeline.arms=[real,synthetic]",
    "pipeline.primary=[[synthetic,real]]",
    "pipeline.unequal_budgets=[]",
    "dataset.n_per_class=4",
    "seed=0,1",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def test_a_multirun_with_fused_gans_trains_them_first_and_each_pipeline_takes_its_own(tmp_path):
    """pipeline.fused_gans=true: the sweep's GANs (seeds 0 and 1) train as one stage into
    <sweep>/fused_gans/<group>/seed_<s> before the pipelines, each pipeline runs no gan stage,
    takes its own seed's GAN (whose images its classifier's provenance check accepts), the
    report counts the pipelines only, and resume=true reuses the fused stage."""
    sweep = tmp_path / "sweep"
    args = SMOKE_GRID + [f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"]
    r = run_py(args)
    assert r.returncode == 0, r.stderr[-3000:]
    group = sweep / "fused_gans" / "dataset.n_per_class=4"
    assert json.loads((group / "metrics.json").read_text())["gan/fused_k"] == 2
    for job in (sweep / "0", sweep / "1"):
        m = json.loads((job / "metrics.json").read_text())
        mine = group / f"seed_{m['seed']}"
        gm = json.loads((mine / "metrics.json").read_text())
        assert m["gan/from"] == str(mine) and m["gan/checkpoint"] == gm["gan/checkpoint"]
        assert m["gan/seen_ids_sha256"] == gm["gan/train_ids_sha256"]
        assert (
            not (job / "gan").exists() and (job / "classify_synthetic" / "metrics.json").is_file()
        )
        manifest = json.loads((job / "synthesize" / "manifest.json").read_text())
        assert str(manifest["checkpoint"]).startswith(str(mine))
        # its table shows the sample grid of the GAN it took (in the fused stage's dir)
        assert f"GAN samples: {mine / 'samples_final.png'}" in (job / "table3.md").read_text()
    rep = json.loads((sweep / "report.json").read_text())
    assert len(rep["rows"]) == 1 and rep["rows"][0]["n"] == 2, rep["rows"]  # GANs: stages
    r = run_py(args + ["resume=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "finished with these settings: reusing them" in r.stdout + r.stderr


def test_a_sweep_over_a_setting_the_gan_does_not_read_trains_its_gans_once(tmp_path):
    """A fused-GAN multirun that also sweeps synthesize.n_per_class trained one fused stage per
    value (the same GANs twice), and every pipeline then failed: two GAN runs fit its seed. Now
    one fused stage per GAN (grid points that differ only in settings the GAN does not read
    share it), named by the swept settings it reads, and both pipelines take theirs."""
    sweep = tmp_path / "sweep"
    args = [a for a in SMOKE_GRID if not a.startswith("seed=")] + ["seed=0"]
    args += ["synthesize.n_per_class=4,6", f"hydra.sweep.dir={sweep}"]
    r = run_py(args + [f"paths.cache_dir={tmp_path / 'cache'}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in (sweep / "fused_gans").iterdir() if p.is_dir()] == [
        "dataset.n_per_class=4"
    ]
    for job in (sweep / "0", sweep / "1"):
        m = json.loads((job / "metrics.json").read_text())
        assert m["status"] == "ok" and m["gan/from"].endswith("seed_0"), m


def test_fused_gans_refuse_a_sweep_over_a_config_group(tmp_path):
    r = run_py(SMOKE_GRID + ["dataset=mnist,pneumoniamnist", f"hydra.sweep.dir={tmp_path}"])
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("xfergan: error: pipeline.fused_gans: the sweep over dataset")
    assert not (tmp_path / "0").exists()


def test_fused_gans_group_the_sweep_by_everything_but_the_seed():
    """A sweep over plain settings (a null default too) gives one fused stage per combination;
    the experiment's sweeper params count, the command line's sweeps replace them."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from tasks.pipeline import sweep_groups
    from tests.conftest import ROOT
    from xfergan.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        c = hcompose("config", ["experiment=synthetic_ablation"], return_hydra_config=True)
    with open_dict(c):
        c.hydra.overrides.task = ["dataset.unlabelled_cap=100,200", "seed=1,2"]
    seeds, groups = sweep_groups(c)
    assert seeds == [1, 2]
    assert [v for _, v in groups] == [
        {"dataset.n_per_class": n, "dataset.unlabelled_cap": cap}
        for n in (8, 32)
        for cap in (100, 200)
    ]
    assert groups[0][0] == "dataset.n_per_class=8,dataset.unlabelled_cap=100"
    # a setting that only measures the GANs: one fused stage would be measured once and its
    # numbers reported for every value (a review found it): refused in one line
    from xfergan.errors import UserError

    with open_dict(c):
        c.hydra.overrides.task = ["gan.eval_n_per_class=20,40", "seed=1,2"]
    with pytest.raises(UserError, match="the sweep over gan.eval_n_per_class changes how the GANs"):
        sweep_groups(c)


def test_each_fused_gan_has_its_own_tracker_runs_as_task_gan(tmp_path):
    """The fused stage's GANs are each a W&B (and CSV) run of job_type gan, as task=gan's: its
    own losses at every logged step, its sample grid, metrics.json as the summary; two GANs,
    two runs with their own seeds and their own losses."""
    from tasks import run_task
    from xfergan.tracking.wandb_files import read_offline_run

    out = tmp_path / "fused"
    over = ["dataset.n_per_class=4", "logger=default", "trainer.log_every_n_steps=2"]
    fused = ["task=gan_fused", "gan_fused.seeds=[0,1]", "gan.steps=4"]
    run_task(compose(FAST + GAN_FAST + over + fused, out))
    losses = {}
    for s in (0, 1):
        d = out / f"seed_{s}"
        meta = json.loads((d / "metrics.json").read_text())
        run = read_offline_run(next(d.glob("wandb/offline-run-*/run-*.wandb")))
        assert run["job_type"] == "gan" and "fused" in run["tags"]
        assert run["config"]["seed"] == s
        assert {"gan/loss_d", "gan/loss_g", "gan/samples"} <= run["history_keys"]
        assert run["summary"]["gan/steps"] == meta["gan/steps"] == 4
        assert run["summary"]["gan/train_ids_sha256"] == meta["gan/train_ids_sha256"]
        rows = (d / "csv" / "metrics.csv").read_text().splitlines()
        assert len(rows) == 3  # a header, then G+D steps 2 and 4
        losses[s] = rows[1:]
    assert losses[0] != losses[1]


def test_a_fused_gan_whose_d_collapses_stops_as_task_gan_would_naming_its_seed(
    tmp_path, monkeypatch
):
    """task=gan stops a GAN whose D wins outright (loss_d ~0 for gan.divergence_patience steps
    in a row); task=gan_fused checked only NaN/Inf, so such a member was written as ok and fed
    synthetic sets. Here seed 1's D loss is 0 from the first step: the run stops at the first
    epoch's end, one line naming seed 1 and not seed 0; a NaN in seed 0 names seed 0."""
    from lightning_modules.fused_gan import FusedGANs
    from tasks import run_task
    from xfergan.errors import UserError

    step = FusedGANs.fused_step
    poison = {"value": 0.0, "member": 1}

    def collapse(self, *a, **kw):
        loss_d, loss_g = step(self, *a, **kw)
        loss_d = loss_d.clone()
        loss_d[poison["member"]] = poison["value"]
        return loss_d, loss_g

    monkeypatch.setattr(FusedGANs, "fused_step", collapse)
    base = FAST + GAN_FAST + ["dataset.n_per_class=4", "logger=none", "task=gan_fused"]
    base += ["gan_fused.seeds=[0,1]", "gan.steps=4", "gan.divergence_patience=3"]
    with pytest.raises(UserError, match=r"seeds \[1\]: the discriminator loss stayed at ~0") as e:
        run_task(compose(base, tmp_path / "a"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "a" / "seed_1" / "checkpoints" / "last.ckpt").exists()
    poison.update(value=float("nan"), member=0)
    with pytest.raises(UserError, match=r"NaN/Inf losses\) at step \d+, seeds \[0\]"):
        run_task(compose(base + ["gan.divergence_patience=100"], tmp_path / "b"))


def test_a_fused_gan_is_the_same_whichever_seeds_it_is_trained_with(tmp_path):
    """One noise stream for all K (seeded by the first seed, shaped [K, ...]) made seed 1's GAN
    depend on its partners: fused with [0, 1], [1, 2] or alone, three different GANs, so
    resuming only the unfinished seeds of a sweep retrained other GANs than the sweep had. Each
    GAN now draws from its own seed's stream."""
    from tasks import run_task

    base = FAST + GAN_FAST + ["dataset.n_per_class=4", "logger=none", "task=gan_fused"]
    weights = {}
    for seeds in ([0, 1], [1]):
        out = tmp_path / "_".join(map(str, seeds))
        run_task(compose(base + [f"gan_fused.seeds={seeds}", "gan.steps=3"], out))
        blob = torch.load(out / "seed_1" / "checkpoints" / "last.ckpt", weights_only=True)
        weights[tuple(seeds)] = blob["state_dict"]
    one = weights[(1,)]
    for name, w in one.items():
        torch.testing.assert_close(weights[0, 1][name], w, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_gans_honour_the_precision_and_are_found_only_under_it(tmp_path):
    """task=gan_fused ran fp32 whatever trainer.precision said (its seed dirs' configs said
    bf16-mixed), and a pipeline found a GAN of another precision as its own. bf16-mixed now
    autocasts the fused forward passes, 16-mixed is refused in one line, and the precision is
    part of what identifies a GAN."""
    from tasks import run_task
    from tasks.gan_fused import find_gan_run
    from xfergan.errors import UserError

    base = FAST + GAN_FAST + ["dataset.n_per_class=4", "logger=none", "task=gan_fused"]
    base += ["gan_fused.seeds=[0]", "gan.steps=3"]
    w = {}
    for p in ("32-true", "bf16-mixed"):
        run_task(compose(base + [f"trainer.precision={p}"], tmp_path / p))
        ckpt = tmp_path / p / "seed_0" / "checkpoints" / "last.ckpt"
        w[p] = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(not torch.equal(w["32-true"][k], w["bf16-mixed"][k]) for k in w["32-true"])
    with pytest.raises(UserError, match="trainer.precision=16-mixed is not available") as e:
        run_task(compose(base + ["trainer.precision=16-mixed"], tmp_path / "16"))
    assert "\n" not in str(e.value) and not (tmp_path / "16" / "seed_0").exists()
    pipe = FAST + GAN_FAST + ["dataset.n_per_class=4", "gan.steps=3", "seed=0"]
    found = find_gan_run(
        compose(pipe + ["trainer.precision=32-true"], tmp_path / "p"), tmp_path / "32-true"
    )
    assert found == tmp_path / "32-true" / "seed_0"
    with pytest.raises(UserError, match="no finished GAN run"):
        find_gan_run(
            compose(pipe + ["trainer.precision=32-true"], tmp_path / "p"), tmp_path / "bf16-mixed"
        )


def test_the_fused_bf16_context_is_lightnings_without_a_cast_cache():
    """Inside one update's autocast context an optimizer step changes weights in place; with
    torch's default cast cache a later forward would reuse their bf16 copies from before the
    step. Lightning's bf16-mixed context (task=gan) has no cache, nor has the fused loop's."""
    from tasks.gan_fused import autocast

    cfg = compose(FAST + ["trainer.precision=bf16-mixed"])
    lin, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with autocast(cfg, torch.device("cpu")):
        before = lin(x)
        with torch.no_grad():
            lin.weight.add_(1.0)  # as Adam's step would
        after = lin(x)
    assert before.dtype == torch.bfloat16 and not torch.equal(before, after)


def test_a_fused_gans_checkpoint_holds_its_collapsed_d_streak(tmp_path):
    """gan_fused writes each seed's checkpoint itself (save_gan): the streak it hands over is
    what load_gan and a resumed task=gan read back."""
    from tasks.gan_fused import save_gan
    from tasks.synthesize import load_gan

    (tmp_path / "checkpoints").mkdir()
    save_gan(small_gan(3, 28), tmp_path, steps=4, epochs=1, streak=torch.tensor(3))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["xfergan_collapsed_d_streak"] == 3
    assert int(load_gan(tmp_path / "checkpoints" / "last.ckpt")._div.bad) == 3
