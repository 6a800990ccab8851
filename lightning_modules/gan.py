"""Conditional GAN with manual optimization (Lightning's GAN pattern): `manual_backward`, one
network's weights frozen while the other steps, hinge or BCE-with-logits loss, DiffAugment, EMA
generator through `torch.optim.swa_utils.AveragedModel`, divergence detection."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from lightning_modules.diffaugment import apply as apply_augment
from lightning_modules.diffaugment import draw as draw_augment
from lightning_modules.diffaugment import parse_policy
from lightning_modules.graph_step import adam_step, check_trainer, compile_whole, trainable
from xfergan.schema import GANConfig

_D = GANConfig()  # the schema is the one source of defaults


def build_net(spec: dict[str, Any], what: str, **sizes: Any) -> torch.nn.Module:
    """A network from its `_target_` config plus the sizes the task knows."""
    from xfergan.errors import UserError, instantiate

    if "_target_" not in spec:
        raise UserError(f"{what} needs a _target_ (the class to build), e.g. in conf/gan/*.yaml")
    return instantiate(spec, what, **sizes, _convert_="all")


def truncated_normal(
    n: int,
    dim: int,
    truncation: float | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """N(0, 1) noise; with `truncation` t, every value outside [-t, t] is drawn again (the
    truncation trick: samples nearer the mode, fewer odd ones)."""
    z = torch.randn(n, dim, generator=generator, device=device)
    if truncation is None:
        return z
    if truncation <= 0:
        from xfergan.errors import UserError

        raise UserError(f"synthesize.truncation={truncation} must be positive (or null)")
    bad = z.abs() > truncation
    while bad.any():
        z[bad] = torch.randn(int(bad.sum()), generator=generator, device=device)
        bad = z.abs() > truncation
    return z


def warmup_decay(n, decay: float):
    """The EMA's decay after `n` averages: (1+n)/(10+n) until it reaches `decay`. `n` a host
    number, or a device tensor (gan.compile=graph: no host read)."""
    d = (1.0 + n) / (10.0 + n)
    return torch.clamp(d, max=decay) if isinstance(d, torch.Tensor) else min(decay, d)


def ema_with_warmup(decay: float):
    """EMA update for AveragedModel(multi_avg_fn=...): decay ramps up as (1+n)/(10+n) until it
    reaches `decay`, so early sample grids show the generator, not its random init."""

    def update(ema_params, params, n_averaged):
        n = float(n_averaged)  # a host read when given a tensor: ConditionalGAN passes an int
        d = warmup_decay(n, decay)
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:  # integer buffers (BatchNorm's step count): follow the generator
            for e, p in zip(ema_params, params):
                e.copy_(p)

    return update


# ---------------------------------------------------------------- the update, for 1 or K GANs
# One procedure for one GAN (ConditionalGAN: batches [n, ...], scalar losses) and for K stacked
# GANs (lightning_modules/fused_gan.py: batches [K, n, ...], losses [K], G and D the stacked
# networks): every loss reduces over the last (batch) dim only, so GAN k's loss, gradient and
# step depend on its own slice alone, and the random draws come in before the compute
# (StepNoise), so the two paths can be given the same ones (tests/test_fused_gan.py).
class StepNoise(NamedTuple):
    """Every random draw of one update: per D step the noise and both DiffAugment draws, then
    the shuffle of the labels for the G step, its noise and its DiffAugment draw. Shapes
    [*lead, n, ...]; GAN k of a stack has `noise[k]` (tree_map(lambda t: t[k], noise))."""

    z_d: list[torch.Tensor]
    aug_real: list[dict[str, torch.Tensor]]
    aug_fake: list[dict[str, torch.Tensor]]
    order: torch.Tensor
    z_g: torch.Tensor
    aug_g: dict[str, torch.Tensor]


def draw_noise(
    hp: Any,
    lead: tuple[int, ...],
    n: int,
    image: tuple[int, int, int],
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> StepNoise:
    """The draws of one update of batch size `n` for images `image` (C, H, W), with leading
    dims `lead` (() for one GAN, (K,) for K): one call per kind, whatever K is."""
    names = parse_policy(hp.diffaugment)

    def aug(m):
        return draw_augment(names, (*lead, m), image, device=device, generator=generator)

    z_d, real, fake = [], [], []
    for _ in range(hp.d_steps):
        z_d.append(torch.randn(*lead, n, hp.z_dim, device=device, generator=generator))
        real.append(aug(n))
        fake.append(aug(n))
    order = torch.rand(*lead, n, device=device, generator=generator).argsort(dim=-1)
    m = 2 * (n // 2) if hp.mode_seeking > 0 and n >= 4 else n  # mode seeking: pairs
    z_g = torch.randn(*lead, m, hp.z_dim, device=device, generator=generator)
    return StepNoise(z_d, real, fake, order, z_g, aug(m))


def d_loss(hp: Any, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss of each GAN (the mean over the last dim)."""
    if hp.loss == "hinge":
        return F.relu(1 - real_logits).mean(-1) + F.relu(1 + fake_logits).mean(-1)
    target = torch.full_like(real_logits, 1.0 - hp.label_smoothing)
    bce = F.binary_cross_entropy_with_logits
    return bce(real_logits, target, reduction="none").mean(-1) + bce(
        fake_logits, torch.zeros_like(fake_logits), reduction="none"
    ).mean(-1)


def g_loss(hp: Any, fake_logits: torch.Tensor) -> torch.Tensor:
    """G's loss of each GAN (the mean over the last dim)."""
    if hp.loss == "hinge":
        return -fake_logits.mean(-1)
    return F.binary_cross_entropy_with_logits(
        fake_logits, torch.ones_like(fake_logits), reduction="none"
    ).mean(-1)


def _requires_grad(params, flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def _total(loss: torch.Tensor) -> torch.Tensor:
    """K independent losses summed: the gradient of each GAN's parameters is its own loss's."""
    return loss if loss.ndim == 0 else loss.sum()


def _grad_step(opt, loss: torch.Tensor) -> None:
    """One optimizer step from a loss without .grad or requires_grad switches (what a traced
    graph can hold): the gradients by torch.autograd.grad, Adam applied by adam_step."""
    adam_step(opt, torch.autograd.grad(loss, trainable(opt)))


def gan_update(
    G,
    D,
    g_params,
    d_params,
    x,
    y,
    noise: StepNoise,
    hp,
    opt_g,
    opt_d,
    backward,
    extra_g_loss=None,
    step=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`hp.d_steps` D steps and one G step on real images `x` with labels `y` (no host state:
    what gan.compile=step compiles). G(z, y) and D(x, y) are one GAN's networks or K stacked
    ones; `g_params`/`d_params` are what the optimizers step. `step(opt, loss)`: how a loss
    moves its optimizer's parameters (gan.compile=graph: _grad_step); by default zero_grad,
    `backward`, opt.step(), with the other network's weights frozen. Returns (loss_d, loss_g)."""
    names = parse_policy(hp.diffaugment)
    n = y.shape[-1]
    eager = step is None
    if eager:

        def step(opt, loss):
            opt.zero_grad(set_to_none=True)
            backward(loss)
            opt.step()

        _requires_grad(g_params, False)  # D step: no weight gradients for G
    for i in range(hp.d_steps):
        with torch.no_grad():
            fake = G(noise.z_d[i], y)
        real_logits = D(apply_augment(x, names, noise.aug_real[i]), y)
        loss_d = d_loss(hp, real_logits, D(apply_augment(fake, names, noise.aug_fake[i]), y))
        step(opt_d, _total(loss_d))
    if eager:
        _requires_grad(g_params, True)
        _requires_grad(d_params, False)  # G step: gradients flow through D, D's weights stay
    y_g = y.gather(-1, noise.order)
    z = noise.z_g
    if hp.mode_seeking > 0 and n >= 4:
        # pairs (z1, y), (z2, y) in one batch: mode seeking (Mao et al. 2019) rewards G for
        # sending different z of the same class to different images
        half = n // 2
        y_g = torch.cat([y_g[..., :half], y_g[..., :half]], dim=-1)
        fake = G(z, y_g)
        loss_g = g_loss(hp, D(apply_augment(fake, names, noise.aug_g), y_g))
        d_img = (fake[..., :half, :, :, :] - fake[..., half:, :, :, :]).abs().mean(dim=(-3, -2, -1))
        d_z = (z[..., :half, :] - z[..., half:, :]).abs().mean(dim=-1)
        loss_g = loss_g + hp.mode_seeking / ((d_img / d_z).mean(dim=-1) + 1e-5)
    else:
        fake = G(z, y_g)
        loss_g = g_loss(hp, D(apply_augment(fake, names, noise.aug_g), y_g))
    if extra_g_loss is not None:  # a frozen teacher pulls each image toward its class
        loss_g = loss_g + extra_g_loss(fake, y_g)
    step(opt_g, _total(loss_g))
    if eager:
        _requires_grad(d_params, True)
    return loss_d, loss_g


def ema_step_(ema: list[torch.Tensor], new: list[torch.Tensor], n_averaged: int, update) -> None:
    """One EMA step over matching tensors (a generator's parameters then buffers, or K stacked
    generators'): the first copies, later ones average the floating tensors with `update`
    (ema_with_warmup) and copy the integer ones (one call each). Elementwise: a stack of K
    EMAs steps exactly as K separate ones."""
    with torch.no_grad():
        if n_averaged == 0:
            for e, p in zip(ema, new):
                e.copy_(p)
            return
        groups: dict[bool, tuple[list, list]] = {True: ([], []), False: ([], [])}
        for e, p in zip(ema, new):
            group = groups[torch.is_floating_point(e)]
            group[0].append(e)
            group[1].append(p.detach())
        for es, ps in groups.values():
            if es:
                update(es, ps, n_averaged)


# torch.compile modes for G and D; "step": the whole update compiled as one function; "graph":
# the whole update, EMA and step count included, traced as one graph (fullgraph=True; on CUDA
# captured as a CUDA graph, mode="reduce-overhead")
COMPILE_MODES = (
    None,
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
    "step",
    "graph",
)


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


class GANDivergedError(RuntimeError):
    """Raised from a training step so Lightning stops without saving the diverged state."""


class Divergence:
    """A GAN's divergence, counted on the device (no host read until `read`): NaN/Inf losses,
    and streaks of steps in which D separates real from fake perfectly (loss_d ~0: G gets no
    signal). Shape () for one GAN, (K,) for K GANs trained as one (task=gan_fused)."""

    def __init__(self, hp, shape: tuple[int, ...] = ()):
        self.threshold = 1e-3 if hp.loss == "hinge" else 1e-4
        self.patience = int(hp.divergence_patience)
        self.bad = torch.zeros(shape, dtype=torch.long)  # current streak of collapsed-D steps
        self.worst = torch.zeros(shape, dtype=torch.long)  # longest streak since the last read
        self.nonfinite = torch.zeros(shape, dtype=torch.bool)

    def update(self, loss_d: torch.Tensor, loss_g: torch.Tensor) -> None:
        if self.bad.device != loss_d.device:
            self.bad, self.worst, self.nonfinite = (
                t.to(loss_d.device) for t in (self.bad, self.worst, self.nonfinite)
            )
        self.nonfinite |= ~(torch.isfinite(loss_d) & torch.isfinite(loss_g))
        self.bad = (self.bad + 1) * (loss_d < self.threshold)
        self.worst = torch.maximum(self.worst, self.bad)

    def set_streak(self, steps) -> None:
        """Go on from a streak of `steps` collapsed-D steps (what a checkpoint recorded)."""
        self.bad = torch.as_tensor(steps, dtype=torch.long).clone()
        self.worst = self.bad.clone()

    def read(self):
        """(NaN/Inf seen, longest collapsed-D streak since the last read): one host read;
        Python scalars for one GAN, lists for K."""
        nonfinite, worst = self.nonfinite.tolist(), self.worst.tolist()
        self.worst = self.bad.clone()
        return nonfinite, worst


class ConditionalGAN(pl.LightningModule):
    """The training procedure. The networks come from `_target_` configs (conf/gan/*.yaml), so a
    new architecture is a class plus a yaml; checkpoints record this class's import path and the
    identity of the real images trained on (`provenance`)."""

    def __init__(
        self,
        num_classes: int,
        channels: int,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
        image_size: int = _D.image_size,
        z_dim: int = _D.z_dim,
        loss: str = _D.loss,
        lr_g: float = _D.lr_g,
        lr_d: float = _D.lr_d,
        beta1: float = _D.beta1,
        beta2: float = _D.beta2,
        d_steps: int = _D.d_steps,
        diffaugment: str = _D.diffaugment,
        label_smoothing: float = _D.label_smoothing,
        mode_seeking: float = _D.mode_seeking,
        ema_decay: float = _D.ema_decay,
        ema_start_step: int = _D.ema_start_step,
        divergence_patience: int = _D.divergence_patience,
        compile: str | None = _D.compile,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        from xfergan.errors import UserError

        if loss not in ("hinge", "bce"):
            raise UserError(f"gan.loss={loss!r}: use hinge or bce")
        if compile not in COMPILE_MODES:
            modes = ", ".join(str(m).lower() for m in COMPILE_MODES)
            raise UserError(f"gan.compile={compile!r}: use one of {modes}")
        generator, discriminator = dict(generator), dict(discriminator)
        self.save_hyperparameters()
        self.automatic_optimization = False
        size = {"num_classes": num_classes, "image_size": image_size, "channels": channels}
        self.G = build_net(generator, "gan.generator", **size, z_dim=z_dim)
        self.D = build_net(discriminator, "gan.discriminator", **size)
        self.ema = AveragedModel(self.G, multi_avg_fn=ema_with_warmup(ema_decay), use_buffers=True)
        self.augment = parse_policy(diffaugment)
        self.register_buffer(
            "fixed_z", torch.randn(10, z_dim, generator=torch.Generator().manual_seed(0))
        )
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # G+D steps, resumable
        # host-side mirrors: a training step never reads a tensor back (each read stalls the
        # CPU until the accelerator has finished, so the next step's kernels cannot be queued)
        self._steps = 0  # == int(self.steps)
        self._ema_n = 0  # == int(self.ema.n_averaged)
        self._ema_update = ema_with_warmup(ema_decay)
        self._div = Divergence(self.hparams)  # NaN/Inf and collapsed-D streaks, on the device
        # identity of the real training images (set by task=gan), saved in every checkpoint
        self.provenance: dict[str, Any] | None = None
        self._guide = None  # (teacher, weight) from set_guidance
        self._whole_step = None  # gan.compile=step|graph: the compiled update
        self._graph_for: tuple[int, ...] = ()  # gan.compile=graph: the optimizers it steps

    def setup(self, stage: str) -> None:
        mode = self.hparams.compile
        if stage != "fit" or not mode:
            return
        if mode in ("step", "graph"):
            self._check_whole_step()
        if mode == "step":
            # D steps, G step and both Adam steps in one compiled function (graphs split only
            # where autograd runs backward); the EMA and the host counters stay outside it
            self._whole_step = torch.compile(self._update_plain)
        elif mode != "graph":  # compiled in place: the state_dict keys do not change
            self.G.compile(mode=mode)
            self.D.compile(mode=mode)
        # graph: compiled at its first step (gan_step), where its device and optimizers are known

    def _check_whole_step(self) -> None:
        """gan.compile=step|graph calls backward (graph: autograd.grad) and the optimizers
        itself: one device, no fp16 loss scaling, no clipping."""
        check_trainer(self._trainer, f"gan.compile={self.hparams.compile}", "gan.compile=default")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        cls = type(self)
        checkpoint["xfergan_class"] = f"{cls.__module__}.{cls.__qualname__}"
        checkpoint["xfergan_provenance"] = self.provenance
        # the collapsed-D streak it ends in: a resumed GAN goes on counting (not from 0, which
        # would give a collapsing GAN another divergence_patience steps per resume)
        checkpoint["xfergan_collapsed_d_streak"] = int(self._div.bad)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.provenance = checkpoint.get("xfergan_provenance")
        self._div.set_streak(int(checkpoint.get("xfergan_collapsed_d_streak", 0)))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also the host-side counts (load_from_checkpoint and a resumed fit both come here)."""
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._steps, self._ema_n = int(self.steps), int(self.ema.n_averaged)  # once, at load
        return out

    @property
    def steps_done(self) -> int:
        """G+D steps so far (the `steps` buffer, read without a device sync)."""
        return self._steps

    def update_ema(self) -> None:
        """AveragedModel.update_parameters without its host reads (`if n_averaged == 0`, the
        decay from a tensor): the same arithmetic with the count kept on the host."""
        ema = list(self.ema.module.parameters()) + list(self.ema.module.buffers())
        new = list(self.G.parameters()) + list(self.G.buffers())
        ema_step_(ema, new, self._ema_n, self._ema_update)
        with torch.no_grad():
            self.ema.n_averaged += 1
        self._ema_n += 1

    @torch.no_grad()
    def _ema_on_device(self) -> None:
        """gan_step's EMA (update_ema from ema_start_step on, a copy of G before) with both
        counts on the device, for the graph step: a copy is an average with weight 1 on G, so
        every step runs the same operations and nothing is read back."""
        n = self.ema.n_averaged
        on = self.steps >= self.hparams.ema_start_step
        w = torch.where(on & (n > 0), 1 - warmup_decay(n, self.hparams.ema_decay), 1.0)
        ema = list(self.ema.module.parameters()) + list(self.ema.module.buffers())
        new = list(self.G.parameters()) + list(self.G.buffers())
        for e, p in zip(ema, new):
            if torch.is_floating_point(e):
                e.lerp_(p, w.to(e.dtype))
            else:  # integer buffers (BatchNorm's step count): follow the generator
                e.copy_(p)
        n.add_(on.long())

    # ---------------------------------------------------------------- sampling
    @property
    def generator(self) -> torch.nn.Module:
        """The EMA generator (what we sample from at the end)."""
        return self.ema.module

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        z: torch.Tensor | None = None,
        ema: bool = True,
        generator: torch.Generator | None = None,
        truncation: float | None = None,
    ) -> torch.Tensor:
        """Images in [0, 1], shape [N, C, H, W]."""
        g = self.generator if ema else self.G
        was = g.training
        g.eval()
        if z is None:
            z = truncated_normal(
                len(labels),
                self.hparams.z_dim,
                truncation,
                generator,
                generator.device if generator is not None else "cpu",
            )
        x = g(z.to(self.device), labels.to(self.device))
        g.train(was)
        return (x.float() + 1) / 2

    @torch.no_grad()
    def sample_grid_images(self, n_cols: int = 10) -> torch.Tensor:
        """One row per class, the same fixed noise in every row."""
        k = self.hparams.num_classes
        z = self.fixed_z[:n_cols].repeat(k, 1)
        y = torch.arange(k, device=self.device).repeat_interleave(n_cols)
        return self.sample(y, z)

    # ---------------------------------------------------------------- losses
    def _d_loss(self, real_logits, fake_logits):
        return d_loss(self.hparams, real_logits, fake_logits)

    def _g_loss(self, fake_logits):
        return g_loss(self.hparams, fake_logits)

    # ---------------------------------------------------------------- guidance
    def set_guidance(self, teacher, weight: float) -> None:
        """gan.guidance: G's loss adds `weight` x the frozen `teacher`'s cross-entropy toward each
        image's conditioning class. The teacher is not a submodule (not trained, not saved: the
        task sets it again on resume)."""
        teacher.eval().requires_grad_(False).to(self.device)
        self._guide = ([teacher], float(weight))

    def _apply(self, fn, recurse=True):
        """The guiding teacher moves with the module (.to, Lightning's device move): once, not
        checked on every step."""
        if getattr(self, "_guide", None) is not None:
            self._guide[0][0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _guidance_loss(self, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from xfergan import transforms as T

        (teacher,), weight = self._guide
        x = T.for_model((fake.float() + 1) / 2, teacher.hparams.input_spec)  # G makes [-1, 1]
        return weight * F.cross_entropy(teacher(x).float(), y)

    # ---------------------------------------------------------------- training
    def gan_step(
        self, x, y, opt_g, opt_d, backward=_plain_backward, noise: StepNoise | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole update for one batch: `d_steps` D steps, one G step, the EMA. Shared by the
        Lightning loop (training_step, Lightning's manual_backward) and plain loops
        (benchmarks/bench.py: loss.backward()). With
        gan.compile=step the D and G steps run as one compiled function on the optimizers
        themselves (the same arithmetic: tests/test_gan.py compares the losses); with
        gan.compile=graph the whole of it runs as one graph (`_graph_update`). `noise`: the
        step's random draws (draw_noise), drawn here from the global generator when None."""
        raw = [getattr(o, "optimizer", o) for o in (opt_g, opt_d)]  # past Lightning's wrapper
        if self.hparams.compile == "graph":
            if self._graph_for != tuple(map(id, raw)):
                self._whole_step = compile_whole(self._graph_update, self, raw)
                self._graph_for = tuple(map(id, raw))
            loss_d, loss_g = self._whole_step(x, y, *raw)
            # Lightning counts the optimizer steps it sees (trainer.global_step: checkpoints,
            # resume); the graph stepped the raw optimizers, so its wrappers step once each per
            # update the eager step makes, with no gradient left to apply (no update)
            if opt_d is not raw[1]:
                for _ in range(self.hparams.d_steps):
                    opt_d.step()
            if opt_g is not raw[0]:
                opt_g.step()
            self._steps += 1  # the host mirrors of the counts it advanced on the device
            self._ema_n += self._steps >= self.hparams.ema_start_step
            # a CUDA graph's outputs are overwritten by its next replay: the logged losses
            # and the divergence check outlive the step
            return loss_d.clone(), loss_g.clone()
        if self._whole_step is not None:
            loss_d, loss_g = self._whole_step(x, y, *raw, noise)
        else:
            loss_d, loss_g = self._update(x, y, opt_g, opt_d, backward, noise)
        self.steps += 1
        self._steps += 1
        if self._steps >= self.hparams.ema_start_step:
            self.update_ema()
        else:
            self.ema.module.load_state_dict(self.G.state_dict())
        return loss_d, loss_g

    def _update_plain(self, x, y, opt_g, opt_d, noise=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._update(x, y, opt_g, opt_d, _plain_backward, noise)

    def _update(
        self, x, y, opt_g, opt_d, backward, noise: StepNoise | None = None, step=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`d_steps` D steps and one G step (no host state: what gan.compile=step compiles): the
        procedure K stacked GANs run too (gan_update; `step`: how a loss moves its optimizer)."""
        if noise is None:
            noise = draw_noise(self.hparams, (), len(y), tuple(x.shape[1:]), x.device)
        return gan_update(
            self.G,
            self.D,
            list(self.G.parameters()),
            list(self.D.parameters()),
            x,
            y,
            noise,
            self.hparams,
            opt_g,
            opt_d,
            backward,
            self._guidance_loss if self._guide is not None else None,
            step=step,
        )

    def _graph_update(self, x, y, opt_g, opt_d) -> tuple[torch.Tensor, torch.Tensor]:
        """gan_step as one function of tensors (gan.compile=graph): `_update`'s procedure
        (gan_update: the same objectives, drawing the same random numbers in the same order)
        with the gradients from torch.autograd.grad and Adam applied by `adam_step` (no .grad,
        no requires_grad switches), then the step count and the EMA on the device. Nothing is
        read back and no Python value changes between steps, so it traces as one graph
        (fullgraph=True) and replays as one CUDA graph; tests/test_graph_step.py compares it
        with the eager step."""
        loss_d, loss_g = self._update(x, y, opt_g, opt_d, None, step=_grad_step)
        self.steps.add_(1)
        self._ema_on_device()
        return loss_d.detach(), loss_g.detach()

    def training_step(self, batch, batch_idx):
        if self.hparams.compile in ("reduce-overhead", "graph"):
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: a new step's outputs
        opt_g, opt_d = self.optimizers()
        loss_d, loss_g = self.gan_step(batch[0], batch[1], opt_g, opt_d, self.manual_backward)
        # read back (a host sync) every 25 steps and at each epoch's last batch, before the
        # checkpoint at the epoch's end can save a diverged state
        last = batch_idx + 1 >= self.trainer.num_training_batches
        self._check_divergence(loss_d.detach(), loss_g.detach(), read=last or self._steps % 25 == 0)
        self.log_dict(
            {"gan/loss_d": loss_d, "gan/loss_g": loss_g},
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=len(batch[1]),
        )

    def _check_divergence(
        self, loss_d: torch.Tensor, loss_g: torch.Tensor, read: bool = True
    ) -> None:
        """Counts NaN/Inf losses and collapsed-D streaks on the device; raises when `read`."""
        self._div.update(loss_d, loss_g)
        if not read:
            return
        nonfinite, worst = self._div.read()
        if nonfinite:
            raise GANDivergedError(
                f"GAN diverged at step {self._steps}: loss_d={float(loss_d)}, "
                f"loss_g={float(loss_g)} (NaN/Inf)"
            )
        if worst >= self._div.patience:
            raise GANDivergedError(
                f"GAN diverged at step {self._steps}: the discriminator loss stayed at ~0 for "
                f"{worst} steps (D wins, G gets no signal); try DiffAugment, "
                "spectral norm or a lower gan.lr_d"
            )

    def configure_optimizers(self):
        h = self.hparams
        if not torch.cuda.is_available():
            kw = {}
        elif h.compile == "graph":  # the step count on the device, as a CUDA graph needs
            kw = {"capturable": True}
        else:
            kw = {"fused": True}
        opt_g = torch.optim.Adam(self.G.parameters(), lr=h.lr_g, betas=(h.beta1, h.beta2), **kw)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=h.lr_d, betas=(h.beta1, h.beta2), **kw)
        return [opt_g, opt_d]
