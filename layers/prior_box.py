"""Default boxes ("priors") of SSD, SSD §2.2 "Choosing scales and aspect ratios for default boxes"."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class PriorConfig:
    """Where the priors sit and how large they are, for one input size.

    Sizes are in input pixels, as in Caffe SSD's prototxt and ssd.pytorch's ``data/config.py``.
    Source layer ``k`` has a ``feature_maps[k]``² grid with cell pitch ``steps[k]``; each cell holds a
    square prior of side ``min_sizes[k]``, one of side ``sqrt(min_sizes[k] * max_sizes[k])``, and two
    priors ``(min·√r, min/√r)`` and ``(min/√r, min·√r)`` per aspect ratio ``r``.

    ``steps=None`` makes every grid span the image exactly (pitch ``image_size / feature_maps[k]``), as
    torchvision's ``DefaultBoxGenerator`` does without steps (SSDLite's 3x3 map at 320 has no integer pitch).

    ``clip`` clamps the priors to [0, 1] in cxcywh form: all four coordinates (ssd.pytorch, NVIDIA's SSD300), or
    with ``clip_centres=False`` the widths and heights only (torchvision's ``DefaultBoxGenerator``). They differ
    where a centre lies outside the image: at SSD300 the 10x10 map's last row and column, (9 + 0.5) / (300 / 32).
    """

    image_size: int
    feature_maps: tuple[int, ...]
    steps: tuple[int, ...] | None
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[int, ...], ...]
    clip: bool = True
    clip_centres: bool = True

    def __post_init__(self) -> None:
        lengths = {
            len(self.feature_maps),
            len(self.steps if self.steps is not None else self.feature_maps),
            len(self.min_sizes),
            len(self.max_sizes),
            len(self.aspect_ratios),
        }
        if len(lengths) != 1:
            raise ValueError(
                f"PriorConfig fields must have one entry per source layer, got lengths "
                f"feature_maps={len(self.feature_maps)} steps={len(self.steps or ())} min_sizes={len(self.min_sizes)} "
                f"max_sizes={len(self.max_sizes)} aspect_ratios={len(self.aspect_ratios)}"
            )

    def grid_pitch(self, k: int) -> float:
        """``f_k`` of SSD §2.2: the grid of source layer ``k`` in cells per image side (centres at (j + 0.5) / f_k)."""
        return self.feature_maps[k] if self.steps is None else self.image_size / self.steps[k]

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        """Priors per feature-map cell of each source layer: 2 squares + 2 per aspect ratio."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_priors(self) -> int:
        """P, the total number of priors."""
        return sum(f * f * n for f, n in zip(self.feature_maps, self.boxes_per_location, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain containers (tuples as lists once JSON-encoded), for checkpoints and exported files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriorConfig:
        """Inverse of :meth:`to_dict`; fields that older checkpoints lack take their defaults."""
        return cls(
            image_size=int(data["image_size"]),
            feature_maps=tuple(data["feature_maps"]),
            steps=None if data["steps"] is None else tuple(data["steps"]),
            min_sizes=tuple(data["min_sizes"]),
            max_sizes=tuple(data["max_sizes"]),
            aspect_ratios=tuple(tuple(ratios) for ratios in data["aspect_ratios"]),
            clip=bool(data.get("clip", True)),
            clip_centres=bool(data.get("clip_centres", True)),
        )


def prior_boxes(config: PriorConfig) -> Tensor:
    """All priors of ``config``, in the order the network's heads emit predictions.

    The order is source layer, then row ``i``, then column ``j``, then the box shapes of one cell
    (small square, large square, then each aspect ratio and its reciprocal), matching ssd.pytorch's
    ``PriorBox`` and the ``permute(0, 2, 3, 1)`` of the heads.

    Returns:
        Tensor[P, 4]: cxcywh, float32. With ``config.clip`` every coordinate (or, without ``clip_centres``,
        every width and height) is clamped to [0, 1] in this cxcywh form (as ssd.pytorch does).
    """
    per_layer: list[Tensor] = []
    for k, size in enumerate(config.feature_maps):
        # Cell centres at (j + 0.5) / f_k, where f_k = image_size / step is the grid pitch in cells.
        f_k = config.grid_pitch(k)
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
        clipped = priors if config.clip_centres else priors[:, 2:]
        clipped.clamp_(min=0.0, max=1.0)
    return priors


_ASPECT_300 = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
_ASPECT_SSDLITE = ((2, 3),) * 6
_ASPECT_512 = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))

# SSD300 sizes are ssd.pytorch's data/config.py; SSD512 sizes are Caffe SSD's ssd_pascal_512.py
# (min_ratio 15, max_ratio 90) and ssd_coco_512.py (min_ratio 10), as in the paper's released models.
# ("COCO", 300) is also NVIDIA's ResNet-50 SSD300 (dboxes300_coco). ("TORCHVISION", 300) is torchvision's
# ssd300_vgg16: COCO's sizes (scales 0.07, 0.15, ..., 1.05 x 300 px) with the centres left unclipped (114 priors
# of the 10x10 map lie at x or y = 1.0133). ("SSDLITE", 320) is torchvision's ssdlite320_mobilenet_v3_large: scales
# 0.2 + 0.75 k / 5 (min_ratio 0.2, max_ratio 0.95) and 1.0 for the last s'_k, ratios 2 and 3 on all six maps,
# grids spanning the image (tests/test_prior_box.py pins both against DefaultBoxGenerator).
PRIOR_CONFIGS: dict[tuple[str, int], PriorConfig] = {
    ("VOC", 300): PriorConfig(
        image_size=300,
        feature_maps=(38, 19, 10, 5, 3, 1),
        steps=(8, 16, 32, 64, 100, 300),
        min_sizes=(30, 60, 111, 162, 213, 264),
        max_sizes=(60, 111, 162, 213, 264, 315),
        aspect_ratios=_ASPECT_300,
    ),
    ("COCO", 300): PriorConfig(
        image_size=300,
        feature_maps=(38, 19, 10, 5, 3, 1),
        steps=(8, 16, 32, 64, 100, 300),
        min_sizes=(21, 45, 99, 153, 207, 261),
        max_sizes=(45, 99, 153, 207, 261, 315),
        aspect_ratios=_ASPECT_300,
    ),
    ("VOC", 512): PriorConfig(
        image_size=512,
        feature_maps=(64, 32, 16, 8, 4, 2, 1),
        steps=(8, 16, 32, 64, 128, 256, 512),
        min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
        max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
        aspect_ratios=_ASPECT_512,
    ),
    ("COCO", 512): PriorConfig(
        image_size=512,
        feature_maps=(64, 32, 16, 8, 4, 2, 1),
        steps=(8, 16, 32, 64, 128, 256, 512),
        min_sizes=(20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
        max_sizes=(51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72),
        aspect_ratios=_ASPECT_512,
    ),
    ("TORCHVISION", 300): PriorConfig(
        image_size=300,
        feature_maps=(38, 19, 10, 5, 3, 1),
        steps=(8, 16, 32, 64, 100, 300),
        min_sizes=(21, 45, 99, 153, 207, 261),
        max_sizes=(45, 99, 153, 207, 261, 315),
        aspect_ratios=_ASPECT_300,
        clip_centres=False,
    ),
    ("SSDLITE", 320): PriorConfig(
        image_size=320,
        feature_maps=(20, 10, 5, 3, 2, 1),
        steps=None,
        min_sizes=(64, 112, 160, 208, 256, 304),
        max_sizes=(112, 160, 208, 256, 304, 320),
        aspect_ratios=_ASPECT_SSDLITE,
        clip_centres=False,
    ),
}
PRIOR_FAMILIES = tuple(sorted({family for family, _ in PRIOR_CONFIGS}))


def prior_config(family: str, size: int) -> PriorConfig:
    """The prior layout of ``family`` (one of :data:`PRIOR_FAMILIES`) for an SSD of input ``size``."""
    key = (family.upper(), size)
    if key not in PRIOR_CONFIGS:
        presets = ", ".join(f"{f} at {s}" for f, s in sorted(PRIOR_CONFIGS))
        raise ValueError(f"no prior preset for family {family!r} at size {size}; the presets are {presets}")
    return PRIOR_CONFIGS[key]
