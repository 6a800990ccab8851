"""A discriminator on frozen pretrained features (Projected GAN, Sauer et al. 2021, simplified):
the image goes through a frozen torchvision backbone (ImageNet MobileNetV2 by default, any
`torchvision.models.get_model` name), features are taken at 2-4 depths, each passes a fixed
random 1x1 projection and a small trainable conditional head (spectral norm, projection
conditioning on the class, Miyato & Koyama 2018) on its unpooled map; the logits of the depths
are summed. Only the heads train.

The backbone is not a registered submodule: the GAN's `requires_grad_` toggles, its optimizer
and its checkpoints see only the heads, and the backbone's weights stay exactly as loaded (its
file and sha256 prefix are in `provenance_record`). Gradients still flow through it to G."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xfergan import transforms as T
from xfergan.errors import UserError

_sn = nn.utils.parametrizations.spectral_norm


def _stages(net: nn.Module) -> list[str]:
    """The node names after which features can be taken, shallow to deep."""
    if hasattr(net, "features") and isinstance(net.features, nn.Sequential):
        return [f"features.{i}" for i in range(len(net.features))]
    names = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(net, n)]
    if names:
        return names
    raise UserError(
        f"gan.discriminator.backbone: {type(net).__name__} has neither `features` blocks nor "
        "layer1..layer4; use e.g. mobilenet_v2, efficientnet_b0 or resnet18"
    )


def _default_taps(n: int, k: int = 3) -> list[int]:
    """k depths spread over the second half-ish of n blocks (not the stem, not the last 1x1)."""
    last = max(1, n - 2)
    return sorted({max(1, round(last * (i + 1) / (k + 1))) for i in range(k)} | {last})[-k:]


class _Head(nn.Module):
    def __init__(self, c_in: int, proj: int, width: int, num_classes: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(proj, c_in, 1, 1, generator=g) / c_in**0.5
        self.register_buffer("proj", w)  # fixed random projection (never trained)
        self.conv = nn.Sequential(
            _sn(nn.Conv2d(proj, width, 3, 1, 1)),
            nn.LeakyReLU(0.2, True),
            _sn(nn.Conv2d(width, width, 3, 2, 1)),
            nn.LeakyReLU(0.2, True),
        )
        self.linear = _sn(nn.Linear(width, 1))
        self.embed = _sn(nn.Embedding(num_classes, width))

    def forward(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.conv2d(f, self.proj.to(f.dtype))).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


class ProjectedDiscriminator(nn.Module):
    def __init__(
        self,
        num_classes: int,
        image_size: int,
        channels: int,
        backbone: str = "mobilenet_v2",
        weights: str | None = "IMAGENET1K_V1",
        input_size: int = 64,
        taps: list[int] | None = None,
        proj_channels: int = 64,
        width: int = 64,
    ):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        from lightning_modules.nets.backbones import _torchvision, weights_file

        if len(taps or []) > 4:
            raise UserError(f"gan.discriminator.taps={taps}: take features at 1-4 depths")
        net = _torchvision(
            backbone, weights, "gan.discriminator.backbone", "gan.discriminator.weights=null"
        )
        stages = _stages(net)
        chosen = [stages[i] for i in (taps or _default_taps(len(stages)))]
        extractor = create_feature_extractor(net, return_nodes={n: n for n in chosen})
        extractor.eval().requires_grad_(False)
        self._backbone = [extractor]  # not a submodule: see the module docstring
        self.channels, self.input_size, self.taps = channels, int(input_size), chosen
        with torch.no_grad():
            shapes = {
                k: v.shape for k, v in extractor(torch.zeros(1, 3, input_size, input_size)).items()
            }
        self.heads = nn.ModuleList(
            _Head(shapes[n][1], proj_channels, width, num_classes, seed=1000 + i)
            for i, n in enumerate(chosen)
        )
        record: dict[str, Any] = {"backbone": backbone, "weights": weights, "taps": chosen}
        if weights is not None:
            path, _ = weights_file(backbone, weights)
            record["weights_file"] = path.name
            record["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.provenance_record = record

    @property
    def backbone(self) -> nn.Module:
        return self._backbone[0]

    def _apply(self, fn, recurse=True):
        """The frozen backbone moves with the module (.to, .cuda, Lightning's device move):
        once, not checked on every step."""
        self.backbone._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.backbone
        x = (x.float() + 1) / 2  # the GAN's images are in [-1, 1]
        x = T.set_channels(T.resize(x, self.input_size), 3)
        x = T.normalize(x, "imagenet")
        if x.requires_grad:  # G's step: gradients flow through the frozen net to G
            return net(x)
        with torch.no_grad():  # D's step: nothing upstream needs a gradient
            return net(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats = self._features(x)
        return sum(h(feats[n], y) for h, n in zip(self.heads, self.taps))
