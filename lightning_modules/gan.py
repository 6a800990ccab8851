"""Conditional GAN with manual optimization (Lightning's GAN pattern): toggled optimizers,
`manual_backward`, hinge or BCE-with-logits loss, DiffAugment, EMA generator through
`torch.optim.swa_utils.AveragedModel`, divergence detection."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from lightning_modules.diffaugment import diff_augment, parse_policy
from lightning_modules.nets.gan_nets import Discriminator, Generator


def ema_with_warmup(decay: float):
    """EMA update for AveragedModel(multi_avg_fn=...): decay ramps up as (1+n)/(10+n) until it
    reaches `decay`, so early sample grids show the generator, not its random init."""

    def update(ema_params, params, n_averaged):
        n = float(n_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:  # integer buffers (BatchNorm's step count): follow the generator
            for e, p in zip(ema_params, params):
                e.copy_(p)

    return update


class GANDivergedError(RuntimeError):
    """Raised from a training step so Lightning stops without saving the diverged state."""


class ConditionalGAN(pl.LightningModule):
    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        channels: int = 1,
        z_dim: int = 64,
        g_channels: int = 64,
        d_channels: int = 64,
        embed_dim: int = 32,
        loss: str = "hinge",
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        beta1: float = 0.0,
        beta2: float = 0.99,
        d_steps: int = 1,
        spectral_norm: bool = True,
        mbstd: bool = True,
        diffaugment: str = "color,translation,cutout",
        label_smoothing: float = 0.0,
        mode_seeking: float = 0.0,
        ema_decay: float = 0.999,
        ema_start_step: int = 0,
        divergence_patience: int = 200,
        class_names: list[str] | None = None,
        **_ignored: Any,
    ):
        super().__init__()
        if loss not in ("hinge", "bce"):
            from xfergan.errors import UserError

            raise UserError(f"gan.loss={loss!r}: use hinge or bce")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.G = Generator(num_classes, image_size, channels, z_dim, g_channels, embed_dim)
        self.D = Discriminator(num_classes, image_size, channels, d_channels, spectral_norm, mbstd)
        self.ema = AveragedModel(self.G, multi_avg_fn=ema_with_warmup(ema_decay), use_buffers=True)
        self.augment = parse_policy(diffaugment)
        self.register_buffer(
            "fixed_z", torch.randn(10, z_dim, generator=torch.Generator().manual_seed(0))
        )
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # G+D steps, resumable
        self._bad_steps = 0

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
    ) -> torch.Tensor:
        """Images in [0, 1], shape [N, C, H, W]."""
        g = self.generator if ema else self.G
        was = g.training
        g.eval()
        if z is None:
            z = torch.randn(
                len(labels),
                self.hparams.z_dim,
                generator=generator,
                device=generator.device if generator is not None else "cpu",
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
        if self.hparams.loss == "hinge":
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        target = torch.full_like(real_logits, 1.0 - self.hparams.label_smoothing)
        return F.binary_cross_entropy_with_logits(
            real_logits, target
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

    def _g_loss(self, fake_logits):
        if self.hparams.loss == "hinge":
            return -fake_logits.mean()
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def _aug(self, x):
        return diff_augment(x, self.augment) if self.augment else x

    def _z(self, n):
        return torch.randn(n, self.hparams.z_dim, device=self.device)

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        opt_g, opt_d = self.optimizers()
        n = len(y)
        for _ in range(self.hparams.d_steps):
            self.toggle_optimizer(opt_d)
            with torch.no_grad():
                fake = self.G(self._z(n), y)
            loss_d = self._d_loss(self.D(self._aug(x), y), self.D(self._aug(fake), y))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()
            self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        y_g = y[torch.randperm(n, device=y.device)]
        if self.hparams.mode_seeking > 0 and n >= 4:
            # pairs (z1, y), (z2, y) in one batch: mode seeking (Mao et al. 2019) rewards G for
            # sending different z of the same class to different images
            half = n // 2
            y_g = torch.cat([y_g[:half], y_g[:half]])
            z = self._z(2 * half)
            fake = self.G(z, y_g)
            loss_g = self._g_loss(self.D(self._aug(fake), y_g))
            d_img = (fake[:half] - fake[half:]).abs().mean(dim=(1, 2, 3))
            d_z = (z[:half] - z[half:]).abs().mean(dim=1)
            loss_g = loss_g + self.hparams.mode_seeking / ((d_img / d_z).mean() + 1e-5)
        else:
            loss_g = self._g_loss(self.D(self._aug(self.G(self._z(n), y_g)), y_g))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.steps += 1
        if int(self.steps) >= self.hparams.ema_start_step:
            self.ema.update_parameters(self.G)
        else:
            self.ema.module.load_state_dict(self.G.state_dict())
        self._check_divergence(loss_d.detach(), loss_g.detach())
        self.log_dict(
            {"gan/loss_d": loss_d, "gan/loss_g": loss_g},
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=n,
        )

    def _check_divergence(self, loss_d: torch.Tensor, loss_g: torch.Tensor) -> None:
        ld, lg = float(loss_d), float(loss_g)
        step = int(self.steps)
        if not (math.isfinite(ld) and math.isfinite(lg)):
            raise GANDivergedError(
                f"GAN diverged at step {step}: loss_d={ld}, loss_g={lg} (NaN/Inf)"
            )
        # collapsed D: it separates real from fake perfectly for `patience` steps in a row
        collapsed = ld < 1e-3 if self.hparams.loss == "hinge" else ld < 1e-4
        self._bad_steps = self._bad_steps + 1 if collapsed else 0
        if self._bad_steps >= self.hparams.divergence_patience:
            raise GANDivergedError(
                f"GAN diverged at step {step}: the discriminator loss stayed at ~0 for "
                f"{self._bad_steps} steps (D wins, G gets no signal); try DiffAugment, "
                "spectral norm or a lower gan.lr_d"
            )

    def configure_optimizers(self):
        h = self.hparams
        fused = {"fused": True} if torch.cuda.is_available() else {}
        opt_g = torch.optim.Adam(self.G.parameters(), lr=h.lr_g, betas=(h.beta1, h.beta2), **fused)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=h.lr_d, betas=(h.beta1, h.beta2), **fused)
        return [opt_g, opt_d]
