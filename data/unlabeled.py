"""Unlabeled images: the target domain of domain adaptation.

A target folder is VOC-format (``JPEGImages/``, ``ImageSets/Main/<split>.txt``), but its ``Annotations/`` are never
opened: the target's labels take no part in training. Its samples are image views only (see
``utils.augmentations.TargetViews``), and its order continues across the source's epochs
(:class:`ContinuingSampler`), so the two streams can have any lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from data.base import read_image
from data.voc import find_image, read_image_set

ViewTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# The split of a target folder whose images adaptation reads: the unlabeled training images (Foggy Cityscapes train
# is the converter's trainval split).
TARGET_SPLIT = "trainval"


class UnlabeledImages(Dataset):
    """The images of VOC-format (folder, split) pairs, without annotations.

    Args:
        sources: ``(folder, split)`` pairs; ``split`` names ``ImageSets/Main/<split>.txt``.
        transform: ``(uint8 [H, W, 3] BGR image, rng) -> float32 [V, 3, S, S]`` views.
        seed: with the pass over the data and the index, seeds each sample's views.

    Raises:
        FileNotFoundError, ValueError: a folder, split file or image is missing, or a split file is malformed.

    A key is an index, or ``(cycle, index)`` for the ``cycle``-th pass over the images (what
    :class:`ContinuingSampler` yields): the views of a sample depend on the key alone, whatever the workers.
    """

    def __init__(self, sources: Sequence[tuple[str | Path, str]], transform: ViewTransform, seed: int = 0) -> None:
        self.transform = transform
        self.seed = seed
        self.paths: list[Path] = []
        for folder, split in sources:
            folder = Path(folder)
            if not folder.is_dir():
                what = "is a file" if folder.exists() else "does not exist"
                raise FileNotFoundError(f"{folder} {what}; give a VOC-format folder (JPEGImages/, ImageSets/Main/)")
            listing = folder / "ImageSets" / "Main" / f"{split}.txt"
            if not listing.is_file():
                raise FileNotFoundError(
                    f"image set {listing} does not exist; is {folder} a VOC-format folder with split {split!r}?"
                )
            self.paths += [find_image(folder, image_id) for image_id in read_image_set(listing)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> Tensor:
        cycle, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng((self.seed, cycle, index))
        return torch.from_numpy(self.transform(read_image(self.paths[index]), rng))


class ContinuingSampler(Sampler[tuple[int, int]]):
    """The target's ``(cycle, index)`` keys for training steps ``start .. start + steps - 1``.

    Step ``s`` takes the global batch at positions ``[k * B, (k + 1) * B)`` of pass ``cycle = s // K`` over the
    images, a permutation seeded by ``(seed, cycle)``, where ``K = len // B`` steps fit in a pass and ``k = s % K``;
    rank ``r`` of ``num_replicas`` takes every ``num_replicas``-th key of that batch from position ``r``, as
    :class:`data.sampler.EpochSampler` deals them. So the keys of a step depend on the step alone: a resumed run
    meets the same target images as an uninterrupted one, and N processes together meet those of one.

    Args:
        size: number of target images (at least ``batch_size``).
        batch_size: B, the global target batch.
        seed: with the pass number, seeds each pass's permutation.
        num_replicas, rank: the process group (1, 0 without DDP).
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if size < batch_size:
            raise ValueError(f"the target set has {size} images, fewer than the batch of {batch_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.steps_per_cycle = size // batch_size
        self.start, self.steps = 0, 0

    def set_steps(self, start: int, steps: int) -> None:
        """Yield the keys of training steps ``start .. start + steps - 1`` on the next iteration."""
        self.start, self.steps = start, steps

    def permutation(self, cycle: int) -> list[int]:
        """The order of the images in pass ``cycle``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + cycle)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        cycle, order = -1, []
        for step in range(self.start, self.start + self.steps):
            if step // self.steps_per_cycle != cycle:
                cycle = step // self.steps_per_cycle
                order = self.permutation(cycle)
            first = (step % self.steps_per_cycle) * self.batch_size
            for index in order[first : first + self.batch_size][self.rank :: self.num_replicas]:
                yield cycle, index

    def __len__(self) -> int:
        return self.steps * (self.batch_size // self.num_replicas)
