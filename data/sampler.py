"""The training sampler: a per-epoch shuffle that is the same whatever the number of processes."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffle ``size`` indices with a generator seeded by ``(seed, epoch)`` and deal them to ranks.

    Rank ``r`` of ``num_replicas`` takes every ``num_replicas``-th index from position ``r`` (as
    ``DistributedSampler``), so the per-rank batches of a step together are exactly the single-process batch
    of that step when the global batch is split evenly. ``start`` skips this rank's first indices: a run
    resumed in the middle of an epoch continues where it stopped.

    Args:
        size: dataset length.
        seed: shuffle seed.
        num_replicas, rank: the process group (1, 0 without DDP).
        shuffle: permute (True) or keep dataset order.
        drop_last: drop the tail so every rank gets the same count; otherwise pad by wrapping around.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.size = size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        per_rank = size // num_replicas if drop_last else math.ceil(size / num_replicas)
        self.num_samples = per_rank

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation; ``start`` skips that many of this rank's indices."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """``(epoch, index)`` keys: the epoch seeds each sample's augmentation (``DetectionDataset``), and travels
        with the index to loader workers that persist across epochs."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            indices = torch.randperm(self.size, generator=generator).tolist()
        else:
            indices = list(range(self.size))
        total = self.num_samples * self.num_replicas
        if total > len(indices):
            indices += (indices * math.ceil(total / max(len(indices), 1)))[: total - len(indices)]
        mine = indices[:total][self.rank :: self.num_replicas][self.start :]
        return iter([(self.epoch, i) for i in mine])

    def __len__(self) -> int:
        return self.num_samples - self.start
