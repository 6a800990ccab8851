"""DiffAugment (Zhao et al. 2020): differentiable color, translation and cutout, applied to real
and fake images alike before the discriminator, so D cannot memorize a few real images."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _color(x):
    b = x.shape[0]
    x = x + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)  # brightness
    if x.shape[1] > 1:
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + m  # saturation
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + m  # contrast


def _translation(x, ratio: float = 0.125):
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    ty = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def _cutout(x, ratio: float = 0.5):
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


POLICIES = {"color": _color, "translation": _translation, "cutout": _cutout}


def parse_policy(policy: str) -> list[str]:
    names = [p.strip() for p in (policy or "").split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad:
        from xfergan.errors import UserError

        raise UserError(
            f"gan.diffaugment: unknown {bad}; use a comma list of {', '.join(POLICIES)}"
        )
    return names


def diff_augment(x: torch.Tensor, names: list[str]) -> torch.Tensor:
    for n in names:
        x = POLICIES[n](x)
    return x
