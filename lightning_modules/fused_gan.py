"""K conditional GANs trained as one model: the GANs of K grid points (seeds of one dataset and
n_per_class), each with its own real subset, parameters, class embeddings, BatchNorm
statistics, spectral-norm vectors, minibatch-std groups, DiffAugment draws, Adam state and EMA,
run as stacked networks (nets/stacked.py), so one update of all K launches about as many kernels
as one GAN's update.

The update is ConditionalGAN's own procedure (gan.gan_update, gan.ema_step_): every loss is
GAN k's mean over its own batch, and the K losses are summed for one backward, so each GAN's
gradients are its own. One Adam over the stacked parameters is K separate Adams: Adam is
elementwise (its moments, bias corrections and step of each element depend on that element's
gradients only), and all K have the same step count. tests/test_fused_gan.py checks the K
results against K ConditionalGANs given the same batches and random draws."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._pytree import tree_map

from lightning_modules.gan import (
    ConditionalGAN,
    StepNoise,
    _plain_backward,
    draw_noise,
    ema_step_,
    ema_with_warmup,
    gan_update,
)
from lightning_modules.nets.stacked import Stacked


class FusedGANs(nn.Module):
    """K ConditionalGANs of one configuration (each its own values) as one training procedure;
    `gan(i)` gives GAN i back as a ConditionalGAN (its checkpoint is an ordinary GAN's)."""

    def __init__(self, gans: list[ConditionalGAN], lowering: str = "auto"):
        super().__init__()
        from xfergan.errors import UserError

        hp = dict(gans[0].hparams)
        if any(dict(g.hparams) != hp for g in gans):
            raise ValueError("fused GANs need one configuration (the same hyper-parameters)")
        if any(g._guide is not None for g in gans):
            raise UserError("gan.guidance is not available for fused GANs; use task=gan")
        if hp.get("compile"):
            raise UserError("gan.compile does not apply to fused GANs (they are one network)")
        if len({g.steps_done for g in gans}) != 1 or len({g._ema_n for g in gans}) != 1:
            raise ValueError("fused GANs must start at the same step")
        self.k = len(gans)
        self.hparams = gans[0].hparams  # what gan_update reads (attribute access)
        # vmap on a GPU, one network after another on the CPU (nets/stacked.py's lowerings)
        self.G = Stacked([g.G for g in gans], lowering)
        self.D = Stacked([g.D for g in gans], lowering)
        self.ema = Stacked([g.ema.module for g in gans], lowering).requires_grad_(False)
        self._ema_update = ema_with_warmup(hp["ema_decay"])
        self.steps = gans[0].steps_done  # G+D steps of every GAN (host counts)
        self._ema_n = gans[0]._ema_n
        self.provenance = [g.provenance for g in gans]

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """ConditionalGAN's two Adams over the stacked parameters: equal to K separate Adams
        (elementwise; see the module's note)."""
        h = self.hparams
        fused = {"fused": True} if self.G.p[0].is_cuda else {}
        opt_g = torch.optim.Adam(self.G.parameters(), lr=h.lr_g, betas=(h.beta1, h.beta2), **fused)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=h.lr_d, betas=(h.beta1, h.beta2), **fused)
        return opt_g, opt_d

    def draw(self, n: int, image: tuple[int, int, int], generator=None) -> StepNoise:
        """One update's random draws for all K GANs ([K, ...]; GAN k's are [k]). `generator`: one
        for all K, or a list of K (GAN k's draws from its own stream, so a GAN does not depend on
        which GANs it was trained with: task=gan_fused seeds stream k with seed k)."""
        dev = self.G.p[0].device
        if not isinstance(generator, (list, tuple)):
            return draw_noise(self.hparams, (self.k,), n, image, dev, generator)
        parts = [draw_noise(self.hparams, (), n, image, dev, g) for g in generator]
        return tree_map(lambda *xs: torch.stack(xs), *parts)

    def fused_step(
        self, x, y, opt_g, opt_d, backward=_plain_backward, noise: StepNoise | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of all K GANs: x [K, n, C, H, W] (GAN k's real batch is x[k]), y [K, n].
        Returns the losses (loss_d [K], loss_g [K])."""
        if noise is None:
            noise = self.draw(y.shape[-1], tuple(x.shape[-3:]))
        d_params, g_params = list(self.D.parameters()), list(self.G.parameters())
        loss_d, loss_g = gan_update(
            self.G, self.D, g_params, d_params, x, y, noise, self.hparams, opt_g, opt_d, backward
        )
        self.steps += 1
        ema = list(self.ema.p) + list(self.ema.b.buffers())
        new = list(self.G.p) + list(self.G.b.buffers())
        if self.steps >= self.hparams.ema_start_step:
            ema_step_(ema, new, self._ema_n, self._ema_update)
            self._ema_n += 1
        else:  # G itself until the EMA starts (as ConditionalGAN.gan_step)
            ema_step_(ema, new, 0, self._ema_update)
        return loss_d, loss_g

    def gan(self, i: int) -> ConditionalGAN:
        """GAN i as a ConditionalGAN on the CPU: its weights, EMA, counts and provenance."""
        with torch.random.fork_rng(devices=[]):  # its throwaway init leaves the seed alone
            m = ConditionalGAN(**dict(self.hparams))
        state = {
            **{f"G.{k}": v for k, v in self.G.unstack(i).items()},
            **{f"D.{k}": v for k, v in self.D.unstack(i).items()},
            **{f"ema.module.{k}": v for k, v in self.ema.unstack(i).items()},
            "ema.n_averaged": torch.tensor(self._ema_n, dtype=torch.long),
            "steps": torch.tensor(self.steps, dtype=torch.long),
            "fixed_z": m.fixed_z,
        }
        m.load_state_dict({k: v.cpu() for k, v in state.items()})
        m.provenance = self.provenance[i]
        return m


__all__ = ["FusedGANs"]
