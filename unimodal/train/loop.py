"""A resumable, infinite, rank-sharded data stream.

Each rank reads an endless stream of sample indices: epoch `e` is a permutation seeded by
(seed, e), padded by wrapping to a multiple of the world size (as DistributedSampler does) and
dealt out round-robin, so rank r takes positions r, r + W, ...; epochs are concatenated and the
stream is cut into micro batches of `batch_size`, which may straddle an epoch boundary. Batch k of
a rank therefore depends only on (seed, k, rank, world_size, len(dataset)): saving `loader.position`
(batches handed out so far) and passing it back as `start_position` resumes the exact data order,
even when the process was killed mid-epoch.

A dataset with `accepts_sample_seed = True` receives `(index, sample_seed)` keys, the seed being a
function of (seed, epoch, index) only, so random augmentations replay exactly on resume too.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unimodal.utils.distributed import DistInfo


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence), identical on every platform."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class ResumableBatchSampler(Sampler[list]):
    """Endless batches of this rank's indices, starting at batch `start_position`."""

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 start_position: int = 0, sample_seeds: bool = False, shuffle: bool = True):
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        if batch_size < 1 or start_position < 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler arguments: batch_size={batch_size}, start_position={start_position}, "
                             f"rank={rank}, world_size={world_size}")
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world = rank, world_size
        self.start_position = start_position
        self.sample_seeds, self.shuffle = sample_seeds, shuffle
        self.per_rank = -(-num_samples // world_size)  # ceil: every rank gets the same count
        self._cache: tuple[int, list[int]] | None = None

    def epoch_shard(self, epoch: int) -> list[int]:
        """This rank's indices for one epoch, in order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world
        order = (order * (-(-total // self.n)))[:total]  # pad by wrapping
        shard = order[self.rank::self.world]
        self._cache = (epoch, shard)
        return shard

    def batch(self, position: int) -> list:
        keys = []
        for j in range(position * self.batch_size, (position + 1) * self.batch_size):
            epoch, k = divmod(j, self.per_rank)
            idx = self.epoch_shard(epoch)[k]
            keys.append((idx, derive_seed(self.seed, epoch, idx)) if self.sample_seeds else idx)
        return keys

    def __iter__(self) -> Iterator[list]:
        position = self.start_position
        while True:
            yield self.batch(position)
            position += 1

    def __len__(self) -> int:  # an endless stream; DataLoader only needs this for len(loader)
        raise TypeError("ResumableBatchSampler is infinite")


class ResumableLoader:
    """Iterate to get batches; `position` = batches handed out so far (including the start)."""

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, start_position: int = 0,
                 dist: DistInfo | None = None, num_workers: int = 0, collate_fn: Callable | None = None,
                 shuffle: bool = True):
        dist = dist or DistInfo()
        self.sampler = ResumableBatchSampler(
            len(dataset), batch_size, seed=seed, rank=dist.rank, world_size=dist.world_size,
            start_position=start_position, sample_seeds=bool(getattr(dataset, "accepts_sample_seed", False)),
            shuffle=shuffle)
        self.position = start_position
        # Its own generator: creating a DataLoader iterator draws a base seed, and drawing it from the
        # global RNG would shift every later random number after a resume.
        self._loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=num_workers,
                                  collate_fn=collate_fn, pin_memory=dist.device.type == "cuda",
                                  persistent_workers=num_workers > 0,
                                  generator=torch.Generator().manual_seed(derive_seed(seed, dist.rank, 7)))

    def __iter__(self) -> Iterator[Any]:
        self.sampler.start_position = self.position  # a second `for` continues where the first stopped
        for batch in self._loader:
            self.position += 1
            yield batch


def infinite_loader(dataset: Dataset, batch_size: int, *, seed: int, start_position: int = 0,
                    dist: DistInfo | None = None, num_workers: int = 0, collate_fn: Callable | None = None,
                    shuffle: bool = True) -> ResumableLoader:
    """See the module docstring; store `loader.position` in the checkpoint to resume exactly."""
    return ResumableLoader(dataset, batch_size, seed=seed, start_position=start_position, dist=dist,
                           num_workers=num_workers, collate_fn=collate_fn, shuffle=shuffle)
