"""Unlabeled images: the target domain of domain adaptation.

A target folder is any folder of images (every image file under it, subfolders included), or a VOC-format folder
(``JPEGImages/``, ``ImageSets/Main/<split>.txt``) whose ``Annotations/`` are never opened: the target's labels take no
part in training. Its samples are image views only (see ``utils.augmentations.TargetViews``), and its order continues
across the source's epochs (:class:`ContinuingSampler`), so the two streams can have any lengths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from data.base import IMAGE_SUFFIXES, read_image
from data.voc import find_image, image_set_file, read_image_set

logger = logging.getLogger(__name__)

ViewTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# The split of a target folder whose images adaptation reads: the unlabeled training images (Foggy Cityscapes train
# is the converter's trainval split). A VOC-format folder without trainval.txt gives its train.txt: Clipart1k,
# Watercolor2k and Comic2k ship train.txt and test.txt only (naoto0804/cross-domain-detection datasets/README.md:36),
# and their train split is the target images of czzbb/I3Net (data/water.py:97 image_sets=[('2007', 'train')],
# likewise cliaprt.py:95 and comic.py:97). A val.txt is never read: it is the labelled split that training scores.
TARGET_SPLIT = "trainval"
TRAINVAL_PARTS = ("train",)


def folder_images(folder: Path) -> list[Path]:
    """Every image file (:data:`data.base.IMAGE_SUFFIXES`, any case) under ``folder``, subfolders included, hidden
    files and folders left out, sorted by path."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def target_images(folder: Path, split: str) -> list[Path]:
    """The images of ``folder``'s ``split``.

    - A VOC-format folder (it has ``ImageSets/Main/``): the ids of ``<split>.txt`` in ``JPEGImages/``; for
      ``trainval`` where the folder has no trainval.txt, those of its train.txt (its val.txt is scored, never adapted to).
    - Any other folder: every image file under it (:func:`folder_images`), whatever ``split``.

    Raises:
        FileNotFoundError: the folder does not exist, holds no image, lacks the split file, or an image is missing.
        ValueError: a split file is malformed.
    """
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{folder} {what}; give a folder of images or a VOC-format folder")
    listings = folder / "ImageSets" / "Main"
    if not listings.is_dir():
        paths = folder_images(folder)
        if not paths:
            raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of images "
                                    "or a VOC-format folder")  # fmt: skip
        logger.info("%s: %d images (a plain folder: every image under it)", folder, len(paths))
        return paths
    splits = [split]
    if split == "trainval" and not (listings / "trainval.txt").is_file():
        splits = [part for part in TRAINVAL_PARTS if (listings / f"{part}.txt").is_file()] or splits
        logger.info("%s has no trainval.txt: reading %s", listings, " and ".join(f"{s}.txt" for s in splits))
    return [
        find_image(folder, image_id) for part in splits for image_id in read_image_set(image_set_file(folder, part))
    ]


class UnlabeledImages(Dataset):
    """The images of (folder, split) pairs, without annotations.

    Args:
        sources: ``(folder, split)`` pairs: a VOC-format folder and the split it gives, or any folder of images
            (:func:`target_images`).
        transform: ``(uint8 [H, W, 3] BGR image, rng) -> float32 [V, 3, S, S]`` views.
        seed: with the pass over the data and the index, seeds each sample's views.

    Raises:
        FileNotFoundError, ValueError: a folder, split file or image is missing, a folder holds no image, or a split
            file is malformed.

    A key is an index, or ``(cycle, index)`` for the ``cycle``-th pass over the images (what
    :class:`ContinuingSampler` yields): the views of a sample depend on the key alone, whatever the workers.
    """

    def __init__(self, sources: Sequence[tuple[str | Path, str]], transform: ViewTransform, seed: int = 0) -> None:
        self.transform = transform
        self.seed = seed
        self.paths: list[Path] = []
        for folder, split in sources:
            self.paths += target_images(Path(folder), split)

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
