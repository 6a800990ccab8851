"""DiffAugment (Zhao et al. 2020): differentiable color, translation and cutout, applied to real
and fake images alike before the discriminator, so D cannot memorize a few real images.

Each policy draws its per-image parameters (`draw`) apart from applying them (`apply`): a
training step can draw every random number before it computes (one GAN or K stacked GANs,
lightning_modules/fused_gan.py, from the same draws), and images with any leading batch dims
([B, C, H, W] or [K, B, C, H, W]) are augmented image by image."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _u(b, dtype, device, generator):
    return torch.rand(b, 1, 1, 1, device=device, dtype=dtype, generator=generator)


def _draw_color(b, c, h, w, dtype, device, generator):
    p = {"brightness": _u(b, dtype, device, generator)}
    if c > 1:
        p["saturation"] = _u(b, dtype, device, generator)
    p["contrast"] = _u(b, dtype, device, generator)
    return p


def _color(x, p):
    x = x + (p["brightness"] - 0.5)  # brightness
    if x.shape[1] > 1:
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (p["saturation"] * 2) + m  # saturation
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (p["contrast"] + 0.5) + m  # contrast


def _shifts(h, w, ratio=0.125):
    return int(h * ratio + 0.5), int(w * ratio + 0.5)


def _draw_translation(b, c, h, w, dtype, device, generator):
    sh, sw = _shifts(h, w)
    return {
        "tx": torch.randint(-sh, sh + 1, (b, 1, 1), device=device, generator=generator),
        "ty": torch.randint(-sw, sw + 1, (b, 1, 1), device=device, generator=generator),
    }


def _translation(x, p):
    b, _, h, w = x.shape
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + p["tx"] + 1, 0, h + 1)
    gy = torch.clamp(gy + p["ty"] + 1, 0, w + 1)
    pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def _holes(h, w, ratio=0.5):
    return int(h * ratio + 0.5), int(w * ratio + 0.5)


def _draw_cutout(b, c, h, w, dtype, device, generator):
    ch, cw = _holes(h, w)
    return {
        "ox": torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=device, generator=generator),
        "oy": torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=device, generator=generator),
    }


def _cutout(x, p):
    """A ch x cw hole centred at (ox, oy), cut off at the borders (comparisons, no scatter)."""
    _, _, h, w = x.shape
    ch, cw = _holes(h, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = p["ox"] - ch // 2, p["oy"] - cw // 2
    hole = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~hole).to(x.dtype).unsqueeze(1)


POLICIES = {"color": _color, "translation": _translation, "cutout": _cutout}
_DRAWS = {"color": _draw_color, "translation": _draw_translation, "cutout": _draw_cutout}


def parse_policy(policy: str) -> list[str]:
    names = [p.strip() for p in (policy or "").split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad:
        from xfergan.errors import UserError

        raise UserError(
            f"gan.diffaugment: unknown {bad}; use a comma list of {', '.join(POLICIES)}"
        )
    return names


def draw(
    names: list[str],
    lead: tuple[int, ...],
    image: tuple[int, int, int],
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Every random parameter `names` need for images of shape [*lead, C, H, W]: each tensor
    [*lead, 1, 1(, 1)], one value per image, drawn in a fixed order."""
    c, h, w = image
    n = 1
    for d in lead:
        n *= d
    out: dict[str, torch.Tensor] = {}
    for name in names:
        for key, t in _DRAWS[name](n, c, h, w, dtype, device, generator).items():
            out[key] = t.view(*lead, *t.shape[1:])
    return out


def apply(x: torch.Tensor, names: list[str], params: dict[str, torch.Tensor]) -> torch.Tensor:
    """`names` with drawn `params` on images [*lead, C, H, W] (image by image)."""
    if not names:
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    p = {k: t.reshape(-1, *t.shape[len(lead) :]) for k, t in params.items()}
    for n in names:
        flat = POLICIES[n](flat, p)
    return flat.reshape(*lead, *flat.shape[1:])


def diff_augment(
    x: torch.Tensor, names: list[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    params = draw(names, tuple(x.shape[:-3]), tuple(x.shape[-3:]), x.dtype, x.device, generator)
    return apply(x, names, params)
