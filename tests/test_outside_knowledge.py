"""gan/discriminator=projected (issue 22): heads on frozen ImageNet features train inside the
real GAN task; the backbone's weights never change; bad settings are one line."""

from __future__ import annotations

import pytest
import torch

from tasks import run_task
from tests.conftest import FAST, GAN_FAST, compose

PROJECTED = [
    "gan/discriminator=projected",
    "gan.discriminator.width=8",
    "gan.discriminator.proj_channels=8",
    "gan.discriminator.input_size=32",
]


def test_projected_discriminator_trains_with_imagenet_weights_and_stays_frozen(tmp_path):
    from lightning_modules.nets.projected_d import ProjectedDiscriminator
    from tasks.synthesize import load_gan

    d = ProjectedDiscriminator(10, 28, 1, input_size=32, proj_channels=8, width=8)
    before = {k: v.clone() for k, v in d.backbone.state_dict().items()}
    assert not any(p.requires_grad for p in d.backbone.parameters())
    assert all(not n.startswith("_backbone") for n, _ in d.named_parameters())  # heads only
    args = FAST + GAN_FAST + PROJECTED + ["task=gan", "gan.steps=4", "dataset.n_per_class=4"]
    m = run_task(compose(args + ["logger=none"], tmp_path / "g"))
    assert m["status"] == "ok" and m["gan/steps"] == 4
    ckpt = sorted((tmp_path / "g" / "checkpoints").glob("*.ckpt"))[-1]
    gan = load_gan(ckpt)
    rec = gan.provenance["discriminator_backbone"]
    assert rec["backbone"] == "mobilenet_v2" and rec["weights_file"].startswith("mobilenet_v2")
    assert len(rec["weights_sha256"]) == 16
    after = gan.D.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen through training
    # gradients reach G through the frozen net
    z = gan.G(torch.randn(2, gan.hparams.z_dim), torch.tensor([1, 2]))
    gan.D(z, torch.tensor([1, 2])).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gan.G.parameters())


def test_the_frozen_nets_move_with_the_gan():
    """The frozen backbone and the guiding teacher are not submodules, yet .to() (and so
    Lightning's device move) takes them along: nothing checks their device per step."""
    from lightning_modules.gan import ConditionalGAN
    from lightning_modules.nets.projected_d import ProjectedDiscriminator

    d = ProjectedDiscriminator(3, 16, 1, backbone="resnet18", weights=None, input_size=32, width=8)
    from omegaconf import OmegaConf

    from xfergan.schema import DCGANDiscriminatorConfig, DCGANGeneratorConfig

    g, dd = (OmegaConf.to_container(OmegaConf.structured(c)) for c in
             (DCGANGeneratorConfig, DCGANDiscriminatorConfig))  # fmt: skip
    gan = ConditionalGAN(3, 1, generator=g, discriminator=dd, image_size=16)
    teacher = torch.nn.Linear(4, 3)
    teacher.hparams = {}
    gan.set_guidance(teacher, 1.0)
    d.to(torch.float64)
    gan.to(torch.float64)
    assert {p.dtype for p in d.backbone.parameters()} == {torch.float64}
    assert teacher.weight.dtype == torch.float64


def test_other_backbones_without_weights():
    from lightning_modules.nets.projected_d import ProjectedDiscriminator

    for name in ("resnet18", "efficientnet_b0"):
        d = ProjectedDiscriminator(3, 32, 3, backbone=name, weights=None, input_size=32, width=8)
        out = d(torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 0]))
        assert out.shape == (4,) and torch.isfinite(out).all()
        assert d.provenance_record["weights"] is None


@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3), (64, 1)])
def test_projected_discriminator_under_the_generator_at_28_32_and_64_px(size, channels):
    """The shipped generator (schema defaults) at each image size it is used at (MNIST 28, RGB
    32, 64) against the projected D with its ImageNet weights from TORCH_HOME (the backbone
    sees every size resized to 32 px here, to keep the test small): one whole G+D update moves
    G and the heads."""
    from omegaconf import OmegaConf

    from lightning_modules.gan import ConditionalGAN
    from xfergan.schema import DCGANGeneratorConfig, ProjectedDiscriminatorConfig

    g, d = (OmegaConf.to_container(OmegaConf.structured(c)) for c in
            (DCGANGeneratorConfig, ProjectedDiscriminatorConfig))  # fmt: skip
    d.update(input_size=32, proj_channels=8, width=8)
    gan = ConditionalGAN(3, channels, image_size=size, generator=g, discriminator=d)
    assert gan.D.provenance_record["weights"] == "IMAGENET1K_V1"
    opt_g, opt_d = gan.configure_optimizers()
    g0 = [p.detach().clone() for p in gan.G.parameters()]
    h0 = [p.detach().clone() for p in gan.D.parameters()]
    x, y = torch.rand(4, channels, size, size) * 2 - 1, torch.tensor([0, 1, 2, 0])
    loss_d, loss_g = gan.gan_step(x, y, opt_g, opt_d)
    assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
    assert any(not torch.equal(a, b) for a, b in zip(g0, gan.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(h0, gan.D.parameters()))


def test_bad_projected_settings_are_one_line(tmp_path):
    """Run in-process: a UserError is what run.py prints as one line and exit 2 (tested for
    every kind of bad input in test_reliability.py)."""
    from xfergan.errors import UserError

    base = FAST + GAN_FAST + PROJECTED + ["task=gan", "gan.steps=2", "dataset.n_per_class=2"]
    cases = [  # each names the D's own settings, never the classifier's (model.*)
        (
            ["gan.discriminator.backbone=no_such_net"],
            r"^gan\.discriminator\.backbone='no_such_net' is not a torchvision classification",
        ),
        (
            ["gan.discriminator.backbone=resnet50", "gan.discriminator.weights=IMAGENET1K_V2"],
            r"resnet50 \(IMAGENET1K_V2\) are not in .*put resnet50-\w+\.pth there.*"
            r"or use gan\.discriminator\.weights=null$",
        ),
    ]
    for i, (extra, message) in enumerate(cases):
        with pytest.raises(UserError, match=message) as e:
            run_task(compose(base + extra + ["logger=none"], tmp_path / str(i)))
        assert "\n" not in str(e.value) and "model." not in str(e.value)


def test_teacher_guided_generation_checks_the_teacher_and_adds_its_loss(tmp_path):
    """gan.guidance.teacher: a classifier of this seed's own subset steers G (its cross-entropy
    joins G's loss, recorded in metrics.json); one of another seed's subset is refused in one
    line (seed 1's GAN with seed 0's teacher); a negative weight is one line too."""
    from xfergan.errors import UserError

    clf = FAST + ["dataset.n_per_class=4", "trainer.max_steps=2", "logger=none"]
    run_task(compose(clf + ["seed=0"], tmp_path / "teacher0"))
    gan = FAST + GAN_FAST + ["task=gan", "gan.steps=3", "dataset.n_per_class=4", "logger=none"]
    m = run_task(
        compose(
            gan
            + [
                "seed=0",
                f"gan.guidance.teacher={tmp_path / 'teacher0'}",
                "gan.guidance.weight=0.5",
            ],
            tmp_path / "guided",
        )
    )
    assert m["guidance/weight"] == 0.5 and m["guidance/teacher_foreign"] is False
    # the guide's term is in G's loss: the same batch, with and without it
    from lightning_modules.classifier import ClassifierModule
    from lightning_modules.teachers import teacher_checkpoint
    from tasks.synthesize import load_gan

    g = load_gan(tmp_path / "guided" / "checkpoints" / "last.ckpt")
    teacher = ClassifierModule.load_safely(str(teacher_checkpoint(str(tmp_path / "teacher0"))))
    g.set_guidance(teacher, 2.0)
    fake = g.G(torch.randn(6, g.hparams.z_dim), torch.arange(6) % 10)
    assert g._guidance_loss(fake, torch.arange(6) % 10) > 0
    # a guide of another seed's subset (issue 27.2): refused in one line; allowed only by
    # dataset.model_provenance=ignore, and then its subset is part of what the GAN saw, so the
    # GAN's images are foreign to seed 0 as well (a seed-0 classifier refuses them)
    run_task(compose(clf + ["seed=1"], tmp_path / "teacher1"))
    foreign = gan + ["seed=0", f"gan.guidance.teacher={tmp_path / 'teacher1'}"]
    foreign += ["gan.guidance.weight=1"]
    with pytest.raises(UserError, match="gan.guidance.teacher .*trained on") as e:
        run_task(compose(foreign, tmp_path / "foreign"))
    assert "\n" not in str(e.value)
    m = run_task(compose(foreign + ["dataset.model_provenance=ignore"], tmp_path / "foreign"))
    assert m["guidance/teacher_foreign"] is True
    syn = ["task=synthesize", f"synthesize.checkpoint={tmp_path / 'foreign'}"]
    run_task(compose(FAST + syn + ["synthesize.n_per_class=3", "logger=none"], tmp_path / "syn"))
    use = clf + ["seed=0", "dataset.source=synthetic", f"dataset.synthetic_path={tmp_path / 'syn'}"]
    with pytest.raises(UserError, match="synthetic set .*trained on .*images"):
        run_task(compose(use, tmp_path / "student"))
    assert m["gan/seen_ids_sha256"] != m["gan/train_ids_sha256"]  # seed 0's and seed 1's
    cfg = compose(gan + ["gan.guidance.weight=-1"], tmp_path / "neg")
    with pytest.raises(UserError, match=r"gan.guidance.weight=-1.0: use a weight >= 0"):
        run_task(cfg)


VARIANTS = ["experiment=gan_variants", "debug=smoke", "dataset.n_per_class=4", "logger=none"]
SMALL_PROJECTED = [  # the variant's composed discriminator, made small for the CPU
    "pipeline.gan_variants.projected.discriminator.width=8",
    "pipeline.gan_variants.projected.discriminator.proj_channels=8",
    "pipeline.gan_variants.projected.discriminator.input_size=32",
]


def test_gan_variants_share_the_seed_subset_and_budget_and_report_side_by_side(tmp_path):
    """experiment=gan_variants: the plain, projected and teacher-guided GANs of one job are
    fitted on the same real subset for the same G+D steps; the guided one is steered by this
    job's own teacher arm; the arms on their images train the same steps; the report has one
    GAN-quality row per GAN."""
    import json

    out = tmp_path / "p"
    arms = "pipeline.arms=[real,synthetic,synthetic_projected,synthetic_guided]"
    primary = "pipeline.primary=[[synthetic_projected,synthetic],[synthetic_guided,synthetic]]"
    no_fid = "pipeline.feature_net=false"  # FID is tested elsewhere (test_gan.py)
    m = run_task(compose(VARIANTS + SMALL_PROJECTED + [arms, primary, no_fid, "seed=7"], out))
    assert m["gans"] == {"gan": "", "gan_projected": "_projected", "gan_guided": "_guided"}
    sfx = m["gans"].values()
    assert len({m[f"gan/steps{s}"] for s in sfx}) == 1 and m["gan/steps"] > 0
    subsets = {m[f"gan/train_ids_sha256{s}"] for s in sfx}
    assert subsets == {m["data/train_ids_sha256_real"]}  # the real arm's subset: one for all
    assert m["steps_synthetic_projected"] == m["steps_synthetic"] == m["steps_synthetic_guided"]
    assert m["guidance/teacher_guided"].startswith(str(out / "classify_teacher"))
    assert m["guidance/teacher_foreign_guided"] is False and "guidance/weight" not in m
    manifests = {s: json.loads((out / f"synthesize{s}" / "manifest.json").read_text()) for s in sfx}
    assert manifests["_projected"]["discriminator_backbone"]["backbone"] == "mobilenet_v2"
    assert manifests[""]["discriminator_backbone"] is None
    run_task(compose(["task=report", f"dir={out}", "logger=none"], tmp_path / "r"))
    md = (out / "report.md").read_text()
    gan_table = md[md.index("## GAN quality") :]
    for stage in ("gan", "gan_projected", "gan_guided"):
        assert f"| {stage} |" in gan_table
    assert "gan/wall_s" in gan_table and "gan/train_s" in gan_table  # cost of each GAN
    assert all(m[f"gan/train_s{s}"] > 0 for s in sfx)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["+pipeline.variants.synthetic_x={arm: synthetic, gan: nope}"],
            "unknown GAN variant 'nope'; define it in pipeline.gan_variants",
        ),
        ("gan.steps", r"every GAN of a run trains for the same G\+D steps"),
        ("gan.batch_size", r"with an epoch budget \(gan.steps=null\) another batch size"),
        (["pipeline.gan_variants.guided.guide=synthetic"], "must train on real images only"),
        (["+pipeline.variants.real_x={arm: real, gan: projected}"], "uses no GAN images"),
    ],
)
def test_bad_gan_variants_are_one_line_before_anything_trains(tmp_path, extra, message):
    from omegaconf import open_dict

    from xfergan.errors import UserError

    arms = ["pipeline.arms=[real,synthetic]", "pipeline.primary=[]"]
    dotted = extra in ("gan.steps", "gan.batch_size")  # not writable on a command line
    cfg = compose(VARIANTS + arms + ([] if dotted else extra), tmp_path)
    if dotted:
        with open_dict(cfg):
            cfg.pipeline.gan_variants.guided.overrides[extra] = 10
            if extra == "gan.batch_size":  # issue 27.5: an epoch budget, another batch size
                cfg.gan.steps, cfg.gan.epochs = None, 2
    with pytest.raises(UserError, match=message) as e:
        run_task(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "classify_real").exists()  # refused before the first stage


def test_a_foreign_input_stays_foreign_through_every_stage_made_from_it(tmp_path):
    """Seed 0's GAN at n=4 is foreign to seed 0's n=8 run (another subset; refused when used
    directly). Pseudolabelled with dataset.synthetic_provenance=ignore, the flag was dropped: the
    stage's metrics had no synthetic_foreign, and the set's record (its ids: a nested subset of
    the run's, so the union equals the run's own) passed a later check as clean. A record now
    carries `foreign` on, and every check refuses (or, with ignore, flags) what was made from a
    foreign input."""
    from xfergan.errors import UserError

    gan = FAST + GAN_FAST + ["task=gan", "gan.steps=3", "dataset.n_per_class=4", "logger=none"]
    run_task(compose(gan + ["seed=0"], tmp_path / "gan4"))
    syn = FAST + ["task=synthesize", f"synthesize.checkpoint={tmp_path / 'gan4'}", "logger=none"]
    run_task(compose(syn + ["synthesize.n_per_class=3"], tmp_path / "syn4"))
    n8 = FAST + ["dataset.n_per_class=8", "seed=0", "logger=none"]
    run_task(compose(n8 + ["trainer.max_steps=2"], tmp_path / "teacher8"))
    pseudo = n8 + [
        "task=pseudolabel",
        "distill.source=synthetic",
        f"dataset.synthetic_path={tmp_path / 'syn4'}",
        f"distill.teacher={tmp_path / 'teacher8'}",
        "distill.min_confidence=0.01",
    ]
    m = run_task(compose(pseudo + ["dataset.synthetic_provenance=ignore"], tmp_path / "pseudo"))
    assert m["synthetic_foreign"] is True and "n_per_class=4" in m["synthetic_foreign_reason"]
    use = n8 + ["trainer.max_steps=2", "dataset.source=mixed"]
    use += [f"dataset.synthetic_path={tmp_path / 'pseudo'}"]
    with pytest.raises(UserError, match="made from a foreign input .*synthetic: .*n_per_class=4"):
        run_task(compose(use, tmp_path / "student"))
    s = run_task(compose(use + ["dataset.synthetic_provenance=ignore"], tmp_path / "student"))
    assert s["synthetic_foreign"] is True
    # and on: a teacher trained on it is foreign to a pseudolabel stage of the same seed
    with pytest.raises(UserError, match="teacher .*made from a foreign input"):
        run_task(
            compose(
                n8
                + [
                    "task=pseudolabel",
                    "distill.source=real",
                    f"distill.teacher={tmp_path / 'student'}",
                ],
                tmp_path / "pseudo2",
            )
        )
