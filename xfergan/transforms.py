"""Batched tensor transforms that run wherever the batch is (GPU when there is one): uint8 ->
float, resize, augmentation (random affine + flips, one matrix per image), channels, normalize."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def random_affine(
    x: torch.Tensor,
    rotation: float = 0.0,
    translate: float = 0.0,
    scale_min: float = 1.0,
    scale_max: float = 1.0,
    hflip: bool = False,
    vflip: bool = False,
) -> torch.Tensor:
    """One random affine transform per image (rotation in degrees, translation as a fraction of the
    size, isotropic scale, flips with p=0.5), zero padding, bilinear."""
    b = x.shape[0]
    dev = x.device
    angle = (torch.rand(b, device=dev) * 2 - 1) * math.radians(rotation)
    scale = scale_min + torch.rand(b, device=dev) * (scale_max - scale_min)
    sx = 1.0 / scale
    sy = 1.0 / scale
    if hflip:
        sx = sx * torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    if vflip:
        sy = sy * torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    t = (torch.rand(b, 2, device=dev) * 2 - 1) * (2 * translate)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * sy, t[:, 0]], dim=1),
            torch.stack([sin * sx, cos * sy, t[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, a: dict) -> torch.Tensor:
    """The dataset's `augment` settings (rotation, translate, scale_min/max, hflip, vflip)."""
    return random_affine(
        x,
        rotation=a.get("rotation", 0.0),
        translate=a.get("translate", 0.0),
        scale_min=a.get("scale_min", 1.0),
        scale_max=a.get("scale_max", 1.0),
        hflip=a.get("hflip", False),
        vflip=a.get("vflip", False),
    )


def set_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot map {x.shape[1]} channels to {channels}")


_IMAGENET: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def imagenet_stats(channels: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as (1, C, 1, 1) tensors on `device`, made once per device, dtype
    and channel count (no host->device copy, so no stream sync, in a training step)."""
    key = (channels, str(device), dtype)
    if key not in _IMAGENET:
        mean = torch.tensor(IMAGENET_MEAN, dtype=dtype)
        std = torch.tensor(IMAGENET_STD, dtype=dtype)
        if channels == 1:
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        _IMAGENET[key] = tuple(t.view(1, channels, 1, 1).to(device) for t in (mean, std))
    return _IMAGENET[key]


def normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return x
    if how == "half":
        return x * 2.0 - 1.0
    if how == "imagenet":
        mean, std = imagenet_stats(x.shape[1], x.device, x.dtype)
        return (x - mean) / std
    raise ValueError(f"dataset.normalize={how!r}: use imagenet, half or none")


def for_model(x: torch.Tensor, spec: dict | None) -> torch.Tensor:
    """Images (uint8 or float in [0, 1]) as a loaded classifier was trained to see them: its
    `input_spec` size, channels and normalization (size and channels as given where the spec
    says none). The one preprocessing for every loaded classifier (teachers, predict, the GAN
    feature net)."""
    spec = spec or {}
    x = resize(to_float(x), int(spec.get("image_size") or x.shape[-1]))
    x = set_channels(x, int(spec.get("channels") or x.shape[1]))
    return normalize(x, str(spec.get("normalize") or "imagenet"))
