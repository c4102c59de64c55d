"""Default boxes ("priors") of SSD, SSD §2.2 "Choosing scales and aspect ratios for default boxes"."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PriorConfig:
    """Where the priors sit and how large they are, for one input size.

    Sizes are in input pixels, as in Caffe SSD's prototxt and ssd.pytorch's ``data/config.py``.
    Source layer ``k`` has a ``feature_maps[k]``² grid with cell pitch ``steps[k]``; each cell holds a
    square prior of side ``min_sizes[k]``, one of side ``sqrt(min_sizes[k] * max_sizes[k])``, and two
    priors ``(min·√r, min/√r)`` and ``(min/√r, min·√r)`` per aspect ratio ``r``.
    """

    image_size: int
    feature_maps: tuple[int, ...]
    steps: tuple[int, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[int, ...], ...]
    clip: bool = True

    def __post_init__(self) -> None:
        lengths = {
            len(self.feature_maps),
            len(self.steps),
            len(self.min_sizes),
            len(self.max_sizes),
            len(self.aspect_ratios),
        }
        if len(lengths) != 1:
            raise ValueError(
                f"PriorConfig fields must have one entry per source layer, got lengths "
                f"feature_maps={len(self.feature_maps)} steps={len(self.steps)} min_sizes={len(self.min_sizes)} "
                f"max_sizes={len(self.max_sizes)} aspect_ratios={len(self.aspect_ratios)}"
            )

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        """Priors per feature-map cell of each source layer: 2 squares + 2 per aspect ratio."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_priors(self) -> int:
        """P, the total number of priors."""
        return sum(f * f * n for f, n in zip(self.feature_maps, self.boxes_per_location, strict=True))


def prior_boxes(config: PriorConfig) -> Tensor:
    """All priors of ``config``, in the order the network's heads emit predictions.

    The order is source layer, then row ``i``, then column ``j``, then the box shapes of one cell
    (small square, large square, then each aspect ratio and its reciprocal), matching ssd.pytorch's
    ``PriorBox`` and the ``permute(0, 2, 3, 1)`` of the heads.

    Returns:
        Tensor[P, 4]: cxcywh in [0, 1], float32. With ``config.clip`` every coordinate is clamped to
        [0, 1] in this cxcywh form (as ssd.pytorch does).
    """
    per_layer: list[Tensor] = []
    for k, size in enumerate(config.feature_maps):
        # Cell centres at (j + 0.5) / f_k, where f_k = image_size / step is the grid pitch in cells.
        f_k = config.image_size / config.steps[k]
        offsets = (torch.arange(size, dtype=torch.float64) + 0.5) / f_k
        cy, cx = torch.meshgrid(offsets, offsets, indexing="ij")  # [f, f] each

        small = config.min_sizes[k] / config.image_size
        large = math.sqrt(small * config.max_sizes[k] / config.image_size)
        shapes = [(small, small), (large, large)]
        for ratio in config.aspect_ratios[k]:
            root = math.sqrt(ratio)
            shapes += [(small * root, small / root), (small / root, small * root)]
        wh = torch.tensor(shapes, dtype=torch.float64)  # [A, 2]

        centres = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # [f*f, 1, 2]
        boxes = torch.cat(
            (centres.expand(-1, len(shapes), 2), wh.expand(centres.shape[0], -1, 2)), dim=-1
        )  # [f*f, A, 4]
        per_layer.append(boxes.reshape(-1, 4))
    priors = torch.cat(per_layer).float()  # [P, 4]
    if config.clip:
        priors.clamp_(min=0.0, max=1.0)
    return priors
