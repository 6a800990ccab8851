"""GAN quality, offline, on features of a network of our own (a classifier trained on real data):
FID and KID (torchmetrics, `feature=` our network), improved precision/recall (k-NN manifolds,
Kynkäänniemi et al. 2019), and a memorization check (nearest-neighbour distances)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from xfergan import transforms as T


class FeatureNet(nn.Module):
    """Images in [0, 1] at any size/channels -> the classifier's penultimate-layer features,
    with the classifier's own input preprocessing (size, channels, normalization)."""

    def __init__(self, classifier: nn.Module, image_size: int, channels: int, normalize: str):
        super().__init__()
        self.classifier = classifier.eval()
        self.image_size, self.channels, self.normalize = image_size, channels, normalize
        with torch.no_grad():
            self.num_features = int(self(torch.zeros(1, 1, image_size, image_size)).shape[-1])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = {"image_size": self.image_size, "channels": self.channels}
        x = T.for_model(x, {**spec, "normalize": self.normalize})
        return self.classifier.features(x).flatten(1).double()


@torch.no_grad()
def batched(fn, x: torch.Tensor, bs: int = 500) -> torch.Tensor:
    return torch.cat([fn(x[i : i + bs]) for i in range(0, len(x), bs)])


def knn_radii(f: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def coverage_fraction(query: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor) -> float:
    """Fraction of query points inside at least one ref point's k-NN ball."""
    inside = torch.zeros(len(query), dtype=torch.bool, device=query.device)
    for i in range(0, len(query), 1000):
        d = torch.cdist(query[i : i + 1000], ref)
        inside[i : i + 1000] = (d <= ref_radii[None, :]).any(dim=1)
    return inside.float().mean().item()


def precision_recall(real_f: torch.Tensor, fake_f: torch.Tensor, k: int = 3) -> tuple[float, float]:
    precision = coverage_fraction(fake_f, real_f, knn_radii(real_f, k))
    recall = coverage_fraction(real_f, fake_f, knn_radii(fake_f, k))
    return precision, recall


def equal_per_class(real_y: torch.Tensor, fake_y: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(real indices, fake indices) of each class of the real images, the same number of each:
    the first min(n_real, n_fake) of the class (both are random draws). k-NN precision and
    recall depend on how many points each set has (its k-NN radii shrink as it grows): on sets
    of unequal size one is biased against the other."""
    real_y, fake_y = real_y.cpu(), fake_y.cpu()
    out = []
    for c in torch.unique(real_y).tolist():
        r, f = torch.nonzero(real_y == c).flatten(), torch.nonzero(fake_y == c).flatten()
        m = min(len(r), len(f))
        out.append((r[:m], f[:m]))
    return out


def nn_distance(
    query: torch.Tensor,
    ref: torch.Tensor,
    prep: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Each query image's L2 distance to its nearest `ref` image. `ref` is read `chunk` images
    at a time, each made float by `prep` (e.g. uint8 -> [0, 1] at the GAN's size) when given:
    a reference of tens of thousands of large images (a semi-supervised GAN's pool) never
    exists as one float tensor."""
    q = query.flatten(1).float()
    best = torch.full((len(q),), float("inf"), device=q.device)
    for j in range(0, len(ref), chunk):
        r = ref[j : j + chunk]
        r = (prep(r) if prep is not None else r).flatten(1).float()
        for i in range(0, len(q), 1000):
            d = torch.cdist(q[i : i + 1000], r).min(dim=1).values
            best[i : i + 1000] = torch.minimum(best[i : i + 1000], d)
    return best


def gan_quality(
    features: FeatureNet,
    real_test: torch.Tensor,
    real_test_y: torch.Tensor,
    fake: torch.Tensor,
    fake_y: torch.Tensor,
    train: torch.Tensor,
    k: int = 3,
    prefix: str = "val/gan_",
    train_prep: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """All images float in [0, 1], [N, C, H, W], at the GAN's resolution, on the device the
    features are computed on. `real_test` are the real images compared against (never the
    training ones): keys are `<prefix><metric>`, e.g. val/gan_fid for the val split (a chooser
    may read it), test/gan_fid for the test split. FID and KID use every fake (more fakes: less
    noise in their side's statistics); precision and recall (overall and per class) use as many
    fakes of each class as there are real images of it (equal_per_class): `<prefix>n_real`,
    `n_fake` and `n_precision_recall` (images in each of its two sets) say how many."""
    out: dict[str, float] = {}
    dev = real_test.device
    fid = FrechetInceptionDistance(feature=features, reset_real_features=True).to(dev)
    n = min(len(real_test), len(fake))
    kid = KernelInceptionDistance(feature=features, subset_size=min(500, n), subsets=20).to(dev)
    for i in range(0, len(real_test), 500):
        fid.update(real_test[i : i + 500], real=True)
        kid.update(real_test[i : i + 500], real=True)
    for i in range(0, len(fake), 500):
        fid.update(fake[i : i + 500], real=False)
        kid.update(fake[i : i + 500], real=False)
    out[f"{prefix}fid"] = fid.compute().item()
    kid_mean, kid_std = kid.compute()
    out[f"{prefix}kid"], out[f"{prefix}kid_std"] = kid_mean.item(), kid_std.item()

    real_f, fake_f = batched(features, real_test).float(), batched(features, fake).float()
    pairs = [(r.to(dev), f.to(dev)) for r, f in equal_per_class(real_test_y, fake_y)]
    ri, fi = torch.cat([r for r, _ in pairs]), torch.cat([f for _, f in pairs])
    out[f"{prefix}precision"], out[f"{prefix}recall"] = precision_recall(real_f[ri], fake_f[fi], k)
    out[f"{prefix}n_real"], out[f"{prefix}n_fake"] = len(real_test), len(fake)
    out[f"{prefix}n_precision_recall"] = len(ri)
    # per class: collapse inside a class (every "3" the same "3") shows as low recall there
    recalls = [precision_recall(real_f[r], fake_f[f], k)[1] for r, f in pairs if len(r) > k]
    if recalls:
        out[f"{prefix}recall_per_class_mean"] = sum(recalls) / len(recalls)
        out[f"{prefix}recall_per_class_min"] = min(recalls)
    # memorization: how close samples sit to the few training images, vs real test images
    d_fake = nn_distance(fake, train, train_prep)  # `train` made float a chunk at a time
    d_test = nn_distance(real_test[: len(fake)], train, train_prep)
    out[f"{prefix}nn_dist_fake_to_train"] = d_fake.mean().item()
    out[f"{prefix}nn_dist_real_to_train"] = d_test.mean().item()
    out[f"{prefix}memorization_ratio"] = (d_fake.mean() / d_test.mean().clamp(min=1e-8)).item()
    out[f"{prefix}frac_fake_closer_than_any_real"] = (d_fake < d_test.min()).float().mean().item()
    return out
