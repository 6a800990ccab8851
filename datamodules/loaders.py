"""How a split's tensors become batches: one indexing op per batch (IndexedTensors), the
epoch order that depends only on (seed, epoch) and makes exact step budgets (EpochSampler),
batches sliced on the split's device (DeviceBatches), and evaluation shards under DDP
(ShardSampler)."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from datamodules.split import Batch, Split


class IndexedTensors(torch.utils.data.Dataset):
    """Batches are sliced from tensors with one indexing op (`__getitems__`), no per-image
    Python work and no collation; works with any sampler."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        if isinstance(i, torch.Tensor):  # a batch of indices already on the split's device
            return self._take(i)
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> Batch:
        return self._take(torch.as_tensor(idx, device=self.split.y.device))

    def _take(self, i: torch.Tensor) -> Batch:
        s = self.split
        return Batch(
            s.x[i],
            s.y[i],
            s.group[i] if s.group is not None else None,
            s.soft[i] if s.soft is not None else None,
            s.fixed[i] if s.fixed is not None else None,
        )


def _identity(batch):
    return batch


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (or weighted, with replacement) order that depends only on (seed, epoch).
    Lightning calls set_epoch before every epoch, resumed runs included. Starting an epoch also
    reseeds every RNG from (seed, epoch, rank), before the first batch is augmented:
    augmentation, dropout and GAN noise are a function of the epoch too, so a run resumed from a
    checkpoint continues exactly as the uninterrupted run would have.

    `epoch_samples` (None: one pass, n) fixes how many indices an epoch yields in all ranks
    together: epoch e takes positions [e*L, (e+1)*L) of one endless stream of passes, each pass a
    permutation seeded by (seed, pass) -- every image once per pass, however the passes fall on
    epochs. A step budget uses it to make every epoch the same whole number of full batches
    (see ImageDataModule.plan_epochs). Under DDP (world > 1) each rank takes every world-th index
    of the epoch's order, padded to equal length (every rank must run the same number of steps)."""

    def __init__(
        self,
        n: int,
        seed: int,
        weights: torch.Tensor | None = None,
        rank: int = 0,
        world: int = 1,
        epoch_samples: int | None = None,
    ):
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, 0
        self.rank, self.world = rank, world
        self.total = int(epoch_samples) if epoch_samples else n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.total / self.world)

    def _pass(self, k: int) -> torch.Tensor:
        # pass k of a one-pass-an-epoch run is epoch k's order, as it always was
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        return iter(self.order().tolist())

    def order(self) -> torch.Tensor:
        """This epoch's indices for this rank (and, first, every RNG reseeded for the epoch)."""
        s = self.seed * 1_000_003 + self.epoch
        pl.seed_everything((s + 7919 * self.rank) % (2**32), workers=True, verbose=False)
        m = self.total
        if self.weights is not None:
            g = torch.Generator().manual_seed(s)
            order = torch.multinomial(self.weights, m, replacement=True, generator=g)
        elif m == self.n:  # one pass an epoch
            order = self._pass(self.epoch)
        else:
            a = self.epoch * m
            first, last = a // self.n, (a + m - 1) // self.n
            stream = torch.cat([self._pass(k) for k in range(first, last + 1)])
            order = stream[a - first * self.n : a - first * self.n + m]
        if self.world > 1:
            total = len(self) * self.world
            reps = math.ceil(total / max(1, m))
            order = order.repeat(reps)[:total][self.rank :: self.world]
        return order


class DeviceBatches(torch.utils.data.Sampler):
    """Batches of indices sliced from the epoch's order after one copy of it to the split's
    device: no host index per batch (a per-step host->device copy is a stream sync). The same
    batches, in the same order, as a DataLoader of `sampler` with this batch size; Lightning's
    set_epoch reaches the epoch sampler through it."""

    def __init__(self, sampler: torch.utils.data.Sampler, batch_size: int, device):
        self.sampler, self.batch_size, self.device = sampler, int(batch_size), device

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        if hasattr(self.sampler, "order"):
            order = self.sampler.order()
        else:
            order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        order = order.to(self.device, non_blocking=True)
        for a in range(0, len(order), self.batch_size):
            yield order[a : a + self.batch_size]


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation order under DDP: rank r reads r, r+W, r+2W, ... -- no padding, so no image is
    counted twice; `gather_shards` puts the pieces back in dataset order."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))
