"""The semi-supervised GAN of Salimans et al. 2016 ("Improved Techniques for Training GANs"):
the classifier is the discriminator. Its K logits score the K real classes and "fake" is
implied (D(x) = Z / (Z + 1), Z = sum exp(logits)), so one network learns from the labelled
images (cross-entropy), the unlabelled pool (real) and the generator's images (fake); the
generator matches the mean of the classifier's features on unlabelled images (feature matching).
The tested model is the classifier; the generator is trained alongside it and kept in its
checkpoint (inference loads the classifier alone: ClassifierModule.load_safely)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from lightning_modules.nets.gan_nets import Generator, _plan
from lightning_modules.semi import SemiModule
from xfergan.schema import SemiGANConfig

_S = SemiGANConfig()


@contextmanager
def frozen_norm_stats(module: torch.nn.Module) -> Iterator[None]:
    """Train-mode passes inside leave every BatchNorm's running statistics and its batch count
    as they were (they still normalize with their own batch): the generator's images must not
    become part of the statistics the classifier is tested with."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats
    ]
    for m in norms:
        m.track_running_stats = False  # train mode: batch statistics, no buffer touched
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


ONE_DEVICE = (
    "semi.method=semi_gan trains on one device (its two backward passes a step are not DDP's "
    "one); use trainer.devices=1 and run seeds as parallel jobs (XFERGAN_JOBS_PER_GPU)"
)


def check_settings(trainer_cfg: Any, pool_side: int | None = None) -> None:
    """What this module cannot do, in one line before anything trains: it steps its optimizers
    itself (manual optimization: Lightning refuses gradient clipping and accumulation for it,
    after the stages before it have trained), and its generator draws images at the pool's side,
    which must be b·2^k with b in 4..7 and k >= 1."""
    from xfergan.errors import UserError

    devices = trainer_cfg.get("devices")
    several = (isinstance(devices, int) and devices > 1) or (
        not isinstance(devices, (int, str)) and devices is not None and len(devices) > 1
    )
    if several or "ddp" in str(trainer_cfg.get("strategy") or ""):
        raise UserError(ONE_DEVICE)
    if trainer_cfg.get("gradient_clip_val"):
        raise UserError(
            "semi.method=semi_gan steps its own optimizers: it has no gradient clipping; set "
            "trainer.gradient_clip_val=null for it (e.g. pipeline.arm_overrides.semi_gan)"
        )
    if int(trainer_cfg.get("accumulate_grad_batches") or 1) > 1:
        raise UserError(
            "semi.method=semi_gan steps its own optimizers: it has no gradient accumulation; "
            "set trainer.accumulate_grad_batches=1 for it"
        )
    if pool_side is not None:
        try:
            _plan(int(pool_side))
        except ValueError:
            raise UserError(
                f"semi.method=semi_gan: its generator draws images at the unlabelled pool's side, "
                f"{pool_side} px, which must be b·2^k with b in 4..7 and k >= 1 (e.g. 28, 32, 48, "
                "64, 128); set "
                "dataset.image_size to one"
            ) from None


class SemiGAN(SemiModule):
    def __init__(
        self,
        *args: Any,
        mu: int = _S.mu,
        weight: float = _S.weight,
        z_dim: int = _S.z_dim,
        g_width: int = _S.g_width,
        lr_g: float = _S.lr_g,
        beta1: float = _S.beta1,
        pool_shape: tuple[int, int] = (1, 28),  # (channels, side) of the pool's images
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.automatic_optimization = False  # a D (classifier) step, then a G step, per batch
        channels, side = pool_shape
        # unconditional: one "class" for the conditional DCGAN generator
        self.G = Generator(1, int(side), int(channels), z_dim, g_width, embed_dim=8)
        self.image_side = int(side)  # its images' side (the GAN-quality row measures there)

    conditional = False  # one generator for every class: its quality row is class-blind

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and getattr(self._trainer, "world_size", 1) > 1:  # e.g. devices=auto
            from xfergan.errors import UserError

            raise UserError(ONE_DEVICE)

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None):
        """len(labels) images in [0, 1] at the pool's size (the labels are ignored: G draws from
        the whole pool), as ConditionalGAN.sample gives them to tasks.gan.evaluate_quality."""
        was = self.G.training
        self.G.eval()
        dev = generator.device if generator is not None else self.device
        z = torch.randn(len(labels), self.hparams.z_dim, generator=generator, device=dev)
        with torch.no_grad():
            g = self.G(
                z.to(self.device), torch.zeros(len(labels), dtype=torch.long, device=self.device)
            )
        self.G.train(was)
        return (g.float() + 1) / 2

    def classifier_steps(self, trainer) -> int:
        return trainer.global_step // 2  # Lightning counts both optimizers' steps

    def generate(self, n: int) -> torch.Tensor:
        """n generated images as the classifier sees them (the datamodule's preprocessing)."""
        z = torch.randn(n, self.hparams.z_dim, device=self.device)
        g = self.G(z, torch.zeros(n, dtype=torch.long, device=self.device))
        return self._view((g + 1) / 2, False)

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        opt_d, opt_g = self.optimizers()
        x, target = self._labelled(batch)
        n = hp.mu * len(x)
        u = self._view(self.unlabelled_batch(n), False)
        fake = self.generate(n)
        # real images (labelled + pool) in one pass, the generator's in their own: a BatchNorm
        # classifier's running statistics (what it is tested with) come from real images only
        logits = self(torch.cat([x, u]))
        lx, lu = logits[: len(x)], logits[len(x) :]
        with frozen_norm_stats(self.net):
            lf = self(fake.detach())
        loss_x = self._loss(lx, target)
        lse_u, lse_f = lu.float().logsumexp(1), lf.float().logsumexp(1)
        # -log D(u) - log(1 - D(g)) with D = Z / (Z + 1): softplus(lse) - lse, softplus(lse)
        loss_unsup = 0.5 * ((F.softplus(lse_u) - lse_u).mean() + F.softplus(lse_f).mean())
        loss_d = loss_x + hp.weight * loss_unsup
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        # G: the mean feature of its images -> the mean feature of unlabelled real ones (the
        # statistics already took these images in the D pass: no second update)
        with torch.no_grad(), frozen_norm_stats(self.net):
            target_f = self.features(u).float().mean(0)
        with frozen_norm_stats(self.net):
            loss_g = F.mse_loss(self.features(fake).float().mean(0), target_f)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self._record(batch, "train", lx.detach(), loss_x.detach())
        self.log("train/unsup_loss", loss_unsup.detach(), on_step=True, on_epoch=False)
        self.log("train/g_loss", loss_g.detach(), on_step=True, on_epoch=False)
        self.log("train/d_real", torch.sigmoid(lse_u).mean().detach(), on_step=True, on_epoch=False)
        self.log("train/d_fake", torch.sigmoid(lse_f).mean().detach(), on_step=True, on_epoch=False)

    def on_train_end(self) -> None:
        """The generator's images after training (samples_final.png in the run dir)."""
        from pathlib import Path

        from torchvision.utils import save_image

        root = self.trainer.default_root_dir if self.trainer is not None else None
        if not root or not self.trainer.is_global_zero:
            return
        grid = self.sample(torch.zeros(64, dtype=torch.long))
        save_image(grid, Path(root) / "samples_final.png", nrow=8, padding=2)

    def configure_optimizers(self):
        d = super().configure_optimizers()
        d = d if isinstance(d, dict) else {"optimizer": d}
        hp = self.hparams
        g = torch.optim.Adam(self.G.parameters(), lr=hp.lr_g, betas=(hp.beta1, 0.999))
        return [d, {"optimizer": g}]
