"""Semi-supervised classifiers: the labelled batches as ClassifierModule trains on, plus images
of the unlabelled pool (their labels never reach the module: it gets uint8 images only). One
class per method, named by semi.method (SEMI_METHODS in tasks/classify.py): FixMatch here,
the semi-supervised GAN in lightning_modules/semi_gan.py. Evaluation, checkpoints and provenance are the classifier's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from lightning_modules.classifier import ClassifierModule
from xfergan.schema import FixMatchConfig

_F = FixMatchConfig()


class SemiModule(ClassifierModule):
    """A classifier with an unlabelled pool (attach_unlabelled): `unlabelled_batch(n)` draws n
    of its images (uint8, on the module's device) with the module's own seeded generator."""

    _gen: torch.Generator | None = None  # the pool's draws (made at the first batch)
    _gen_state: torch.Tensor | None = None  # a loaded checkpoint's draw state, until then

    def attach_unlabelled(
        self,
        images: torch.Tensor,
        view: Callable[[torch.Tensor, bool], torch.Tensor],
        seed: int,
    ) -> None:
        """`images`: the pool (uint8 [N, C, H, W]); `view(x, train)`: the datamodule's
        preprocessing (resize, the dataset's augmentation when train, normalization)."""
        self._pool, self._view, self._pool_seed = images, view, int(seed)
        self._gen = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._gen is not None:  # the pool draws so far: a resumed run continues them
            checkpoint["xfergan_pool_rng"] = self._gen.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._gen, self._gen_state = None, checkpoint.get("xfergan_pool_rng")

    def unlabelled_batch(self, n: int) -> torch.Tensor:
        pool = self._pool
        if pool.device != self.device and pool.numel() < (2 << 30):
            self._pool = pool = pool.to(self.device)  # small pools live on the device
        if self._gen is None:  # each DDP rank its own draws; a resumed run continues them
            seed = self._pool_seed * 1_000 + self.global_rank
            state, self._gen_state = self._gen_state, None
            one_process = getattr(self._trainer, "world_size", 1) == 1
            if self.global_step and not (state is not None and one_process):
                seed += 1_000_003 * self.global_step  # DDP (rank 0's state only): fresh draws
            self._gen = torch.Generator(device=pool.device).manual_seed(seed)
            if state is not None and one_process:
                self._gen.set_state(state)
        idx = torch.randint(len(pool), (n,), generator=self._gen, device=pool.device)
        return pool[idx].to(self.device, non_blocking=True)

    def _labelled(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.x, self._target(batch, "train")


def warm_ema(decay: float) -> Callable:
    """AveragedModel's avg_fn: an EMA whose decay warms up as min(decay, (1+n)/(10+n)) over the
    n updates so far (without it a 0.999 average stays near the random init for ~1,000 steps);
    tensor arithmetic only (no host read per parameter)."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        n = n.to(averaged.device, torch.float32)
        d = torch.clamp((1 + n) / (10 + n), max=decay)
        return averaged + (current - averaged) * (1 - d).to(averaged.dtype)

    return avg


class FixMatch(SemiModule):
    """FixMatch (Sohn et al. 2020): per labelled batch of B, mu*B unlabelled images in a weak
    view (the dataset's own augmentation) and a strong one (RandAugment, the dataset's
    augmentation, cutout); the weak view's prediction, where at least `threshold` confident,
    is the strong view's label. One forward pass over all three (BatchNorm sees them together)."""

    def __init__(
        self,
        *args: Any,
        mu: int = _F.mu,
        threshold: float = _F.threshold,
        weight: float = _F.weight,
        strong_ops: int = _F.strong_ops,
        strong_magnitude: int = _F.strong_magnitude,
        cutout: float = _F.cutout,
        ema_decay: float | None = _F.ema_decay,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self._randaug = v2.RandAugment(num_ops=strong_ops, magnitude=strong_magnitude)
        self._cutout = (
            v2.RandomErasing(p=1.0, scale=(cutout**2 / 4, cutout**2), ratio=(1.0, 1.0), value=0)
            if cutout > 0
            else None
        )

    def configure_callbacks(self):
        """semi.fixmatch.ema_decay: Lightning's weight averaging keeps the EMA (BatchNorm
        buffers too); val, checkpoints (their state_dict) and test then use it."""
        decay = self.hparams.ema_decay
        if decay is None:
            return []
        if not 0.0 <= float(decay) < 1.0:
            from xfergan.errors import UserError

            raise UserError(f"semi.fixmatch.ema_decay={decay}: use a decay in [0, 1), or null")
        from pytorch_lightning.callbacks import WeightAveraging

        return [WeightAveraging(avg_fn=warm_ema(float(decay)), use_buffers=True)]

    def strong(self, u: torch.Tensor) -> torch.Tensor:
        """RandAugment per image (uint8), the dataset's augmentation, then cutout per image."""
        x = self._view(torch.stack([self._randaug(img) for img in u]), True)
        if self._cutout is not None:
            x = torch.stack([self._cutout(img) for img in x])
        return x

    def _step(self, batch, stage: str) -> torch.Tensor:
        if stage != "train":
            return super()._step(batch, stage)
        hp = self.hparams
        x, target = self._labelled(batch)
        u = self.unlabelled_batch(hp.mu * len(x))
        weak, strong = self._view(u, True), self.strong(u)
        logits = self(torch.cat([x, weak, strong]))
        lx, lw, ls = logits[: len(x)], *logits[len(x) :].chunk(2)
        loss_x = self._loss(lx, target)
        with torch.no_grad():
            conf, pseudo = lw.float().softmax(1).max(1)
            mask = (conf >= hp.threshold).float()
        loss_u = (F.cross_entropy(ls, pseudo, reduction="none") * mask).mean()
        loss = loss_x + hp.weight * loss_u
        self._record(batch, stage, lx.detach(), loss_x.detach())
        self.log("train/unlabelled_loss", loss_u.detach(), on_step=True, on_epoch=False)
        self.log("train/mask_rate", mask.mean(), on_step=True, on_epoch=False, prog_bar=True)
        return loss
