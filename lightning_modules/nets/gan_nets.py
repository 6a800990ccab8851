"""Conditional DCGAN generator and projection discriminator at any size b·2^k (b in 4..7, k >= 1)
(28/32 px for MNIST, 64/128 px for X-rays), DCGAN weight init, optional spectral norm.

The default entries of conf/gan (`gan.generator._target_`, `gan.discriminator._target_`). A user's
own networks follow the same contract: G(num_classes, image_size, channels, z_dim, **yaml) maps
(z [B, z_dim], y [B]) to images in [-1, 1]; D(num_classes, image_size, channels, **yaml) maps
(x, y) to one logit per image. Their arguments come from the yaml: no defaults here."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

# spectral norm as a parametrization (torch.nn.utils.parametrizations): torch.compile and CUDA
# graphs run it; the older hook version (torch.nn.utils.spectral_norm) updates its vectors in
# place where the compiled backward still needs them, and fails there. Checkpoints written with
# the old version load: _old_spectral_norm_keys renames weight_orig / weight_u / weight_v.
_OLD_SN = {
    "weight_orig": "parametrizations.weight.original",
    "weight_u": "parametrizations.weight.0._u",
    "weight_v": "parametrizations.weight.0._v",
}


def _old_spectral_norm_keys(module, state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        head, _, last = key.rpartition(".")
        if last in _OLD_SN:
            state_dict[f"{head}.{_OLD_SN[last]}"] = state_dict.pop(key)


def _plan(image_size: int) -> tuple[int, int]:
    """(base resolution, number of x2 upsamplings) with base in {4..7}."""
    n = 0
    s = image_size
    while s % 2 == 0 and s > 7:
        s //= 2
        n += 1
    if s < 4 or s > 7 or n < 1:
        raise ValueError(
            f"gan.image_size={image_size} must be b·2^k with b in 4..7 and k >= 1 (e.g. 28, "
            "32, 48, 64, 128)"
        )
    return s, n


def dcgan_init(m: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02), norm gains N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        sn = getattr(getattr(m, "parametrizations", None), "weight", None)
        nn.init.normal_(sn.original if sn is not None else m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias come from the class label."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x, y):
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """z ⊕ label embedding -> linear -> base×base -> (upsample, conv, cond-BN, ReLU)×n -> tanh."""

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        channels: int,
        z_dim: int,
        width: int,
        embed_dim: int,
    ):
        super().__init__()
        base, n_up = _plan(image_size)
        self.z_dim, self.num_classes, self.image_size, self.channels = (
            z_dim,
            num_classes,
            image_size,
            channels,
        )
        chans = [min(8, 2 ** (n_up - i)) * width for i in range(n_up + 1)]
        self.base, self.c0 = base, chans[0]
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(z_dim + embed_dim, chans[0] * base * base)
        self.bn0 = ConditionalBatchNorm2d(chans[0], num_classes)
        self.ups = nn.ModuleList()
        self.bns = nn.ModuleList()
        for i in range(n_up):
            self.ups.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=False))
            self.bns.append(ConditionalBatchNorm2d(chans[i + 1], num_classes))
        self.out = nn.Conv2d(chans[-1], channels, 3, 1, 1)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], dim=1)).view(-1, self.c0, self.base, self.base)
        h = torch.relu(self.bn0(h, y))
        for up, bn in zip(self.ups, self.bns):
            h = torch.relu(bn(up(h), y))
        return torch.tanh(self.out(h))


class MinibatchStd(nn.Module):
    """Appends the batch's feature standard deviation as a channel (Karras et al. 2018): D sees
    when every sample of a batch looks alike, which fights collapse inside a class."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x):
        b, c, h, w = x.shape
        g = min(self.group, b)
        while b % g:
            g -= 1
        y = x.view(g, -1, c, h, w)
        y = y - y.mean(dim=0)  # as StyleGAN: mean/square/sqrt, +eps (a finite gradient at 0)
        s = (y.square().mean(dim=0) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [b/g]
        s = s.view(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, s], dim=1)


class Discriminator(nn.Module):
    """DCGAN conv stack (stride-2, LeakyReLU) [-> minibatch std] -> global sum pool -> linear +
    projection of the label embedding (Miyato & Koyama 2018). Outputs logits: no Sigmoid."""

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        channels: int,
        width: int,
        spectral_norm: bool,
        mbstd: bool,
    ):
        super().__init__()
        _, n_down = _plan(image_size)
        sn = _sn if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, width, 3, 1, 1)), nn.LeakyReLU(0.2, True)]
        c = width
        for i in range(n_down):
            c_out = min(8, 2 ** (i + 1)) * width
            layers += [sn(nn.Conv2d(c, c_out, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            c = c_out
        if mbstd:
            layers += [MinibatchStd(), sn(nn.Conv2d(c + 1, c, 3, 1, 1)), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers)
        self.linear = sn(nn.Linear(c, 1))
        self.embed = sn(nn.Embedding(num_classes, c))
        self.apply(dcgan_init)
        self._register_load_state_dict_pre_hook(_old_spectral_norm_keys, with_module=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


__all__ = ["Generator", "Discriminator", "dcgan_init"]
