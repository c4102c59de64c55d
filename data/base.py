"""What every detection dataset shares: the sample schema, image reading, bad-sample policy and collate.

A sample is ``(image, target)``:

* ``image`` (Tensor[3, H, W], float32): the transform's output (RGB, normalised); without a transform,
  the original RGB image with values in 0-255;
* ``target`` (Tensor[N, 5], float32): rows ``(xmin, ymin, xmax, ymax, label)``, relative xyxy and 0-based
  foreground label (see ``layers/box_utils.py``); N may be 0.

``pull_image(i)`` and ``pull_anno(i)`` give the original BGR image and its full annotation (pixel
coordinates, difficult flags) for evaluation and drawing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)


EXIF_ORIENTATION = 0x0112  # EXIF tag: 5-8 mean the stored image is transposed (rotated by 90 or 270 degrees)
# Image files this project reads, in lower case (a file's suffix is compared lower-cased). cv2.imread reads them all.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class Transform(Protocol):
    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass
class Annotation:
    """The ground truth of one image, in pixels.

    Attributes:
        image_id: the dataset's name for the image (VOC file stem, COCO integer id as a string).
        width, height: image size in pixels.
        boxes (ndarray[N, 4] float32): xyxy, 0-based pixels, clipped to the image.
        labels (ndarray[N] int64): 0-based foreground class index.
        difficult (ndarray[N] bool): VOC "difficult" (COCO: ``iscrowd``); ignored by the metrics.
    """

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray

    @staticmethod
    def empty(image_id: str, width: int, height: int) -> Annotation:
        return Annotation(
            image_id, width, height, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
        )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 [H, W, 3] BGR; a missing or undecodable file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ValueError(f"image {path} is corrupt or not an image; replace it or pass skip_bad=True to skip it")
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` decodes it, from the file's header alone.

    OpenCV applies a JPEG's EXIF orientation when decoding, so an image stored rotated by 90 degrees comes
    out with width and height swapped; so does this size.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's errors for unreadable or truncated headers
        raise ValueError(f"image {path} is corrupt or not an image ({error}); replace it or skip it") from error
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def clean_boxes(
    boxes: np.ndarray,
    width: float,
    height: float,
    source: str | Path,
    max_x: float | None = None,
    max_y: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``boxes`` [N, 4] (pixel xyxy) to the image and find the degenerate ones.

    Out-of-bounds boxes are clipped to ``[0, max_x] x [0, max_y]`` (default: width, height). Boxes with no
    area after clipping (inverted, zero-size, or wholly outside) are dropped with one warning naming
    ``source``.

    Returns:
        The clipped boxes [M, 4] float32 and the bool mask [N] of those kept.
    """
    max_x = width if max_x is None else max_x
    max_y = height if max_y is None else max_y
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    clipped = np.clip(boxes, 0, [max_x, max_y, max_x, max_y]).astype(np.float32)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    if not keep.all():
        logger.warning(
            "%s: dropped %d degenerate or inverted box(es): %s", source, int((~keep).sum()), boxes[~keep].tolist()
        )
    return clipped[keep], keep


class DetectionDataset(Dataset):
    """Base class. Subclasses fill ``self.ids`` and implement :meth:`image_path` and :meth:`pull_anno`.

    Args:
        class_names: foreground classes, in label order.
        transform: ``(image, boxes, labels, rng) -> (image, boxes, labels)``, e.g. ``SSDAugmentation``.
        keep_difficult: keep "difficult" objects in training targets (they are always in ``pull_anno``).
        skip_bad: skip missing/corrupt images and malformed annotations with a warning instead of raising.
        seed: with the epoch and the index of a sample's key (:meth:`__getitem__`), seeds its augmentation, so
            a run is reproducible whatever the number of loader workers.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        transform: Transform | None = None,
        keep_difficult: bool = False,
        skip_bad: bool = False,
        seed: int = 0,
    ) -> None:
        self.class_names = tuple(class_names)
        self.transform = transform
        self.keep_difficult = keep_difficult
        self.skip_bad = skip_bad
        self.seed = seed
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def pull_anno(self, index: int) -> Annotation:
        raise NotImplementedError

    def pull_image(self, index: int) -> np.ndarray:
        """The original image, uint8 [H, W, 3] BGR."""
        return read_image(self.image_path(index))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Sample ``key``: ``(epoch, index)``, as ``data.sampler.EpochSampler`` gives them (the epoch changes the
        augmentation's draws, and travels with the index to loader workers that persist across epochs), or an
        index alone, for epoch 0."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                return self._load(current, epoch)
            except (ValueError, FileNotFoundError) as error:
                if not self.skip_bad:
                    raise
                logger.warning("skipping sample %d: %s", current, error)
        raise ValueError(f"every sample of this {type(self).__name__} is unreadable")

    def _load(self, index: int, epoch: int) -> tuple[Tensor, Tensor]:
        image = self.pull_image(index)
        anno = self.pull_anno(index)
        keep = np.ones(len(anno.labels), bool) if self.keep_difficult else ~anno.difficult
        boxes, labels = anno.boxes[keep], anno.labels[keep]
        height, width = image.shape[:2]
        if self.transform is not None:
            rng = np.random.default_rng((self.seed, epoch, index))
            out, rel_boxes, labels = self.transform(image, boxes, labels, rng=rng)
            image_tensor = torch.from_numpy(out)
        else:
            rel_boxes = boxes / np.array([width, height, width, height], np.float32)
            image_tensor = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))).float()
        target = np.concatenate(
            [np.asarray(rel_boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.float32).reshape(-1, 1)], axis=1
        )
        return image_tensor, torch.from_numpy(target)


def detection_collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
    """Stack images into Tensor[B, 3, H, W] and keep targets as a list of B tensors [N_i, 5]."""
    images = torch.stack([image for image, _ in batch])
    targets = [target for _, target in batch]
    return images, targets
