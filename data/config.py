"""Typed presets: prior layouts by family and size, and datasets by name.

A model's priors are chosen by name (``prior_config("VOC", 300)``) or by a dataset preset, never guessed
from the number of classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layers.prior_box import PriorConfig

_ASPECT_300 = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
_ASPECT_512 = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))

# SSD300 sizes are ssd.pytorch's data/config.py; SSD512 sizes are Caffe SSD's ssd_pascal_512.py
# (min_ratio 15, max_ratio 90) and ssd_coco_512.py (min_ratio 10), as in the paper's released models.
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
}
PRIOR_FAMILIES = tuple(sorted({family for family, _ in PRIOR_CONFIGS}))


def prior_config(family: str, size: int) -> PriorConfig:
    """The prior layout of ``family`` ("VOC" or "COCO") for an SSD of input ``size`` (300 or 512)."""
    key = (family.upper(), size)
    if key not in PRIOR_CONFIGS:
        raise ValueError(
            f"no prior preset for family {family!r} at size {size}; choose a family from {PRIOR_FAMILIES} "
            f"and a size from (300, 512)"
        )
    return PRIOR_CONFIGS[key]


VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# The 8 instance classes of the Cityscapes detection benchmark (as used for Cityscapes -> Foggy Cityscapes).
CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")

SHAPES_CLASSES = ("circle", "square", "triangle", "star")


@dataclass(frozen=True)
class DatasetPreset:
    """What a dataset name fixes: its foreground classes and the prior family its models use.

    Args:
        name: the ``--dataset`` value.
        class_names: foreground classes; the network's class ``c`` is ``class_names[c - 1]``.
        prior_family: key into :data:`PRIOR_CONFIGS`.
    """

    name: str
    class_names: tuple[str, ...]
    prior_family: str = "VOC"

    @property
    def num_classes(self) -> int:
        """C, including the background."""
        return len(self.class_names) + 1

    def priors(self, size: int) -> PriorConfig:
        return prior_config(self.prior_family, size)


DATASETS: dict[str, DatasetPreset] = {
    "VOC": DatasetPreset("VOC", VOC_CLASSES, "VOC"),
    # COCO's category ids (1..90 with gaps) are mapped to labels 0..79 by data/coco.py, from the file.
    "COCO": DatasetPreset("COCO", COCO_CLASSES, "COCO"),
    # Cityscapes objects are small; the COCO family has the smaller first prior (21 px at SSD300). The
    # fork's released Cityscapes weights were also trained with these priors (picked there by its
    # `num_classes == 21` test), so they evaluate correctly only with this choice.
    "Cityscapes": DatasetPreset("Cityscapes", CITYSCAPES_CLASSES, "COCO"),
    "FoggyCityscapes": DatasetPreset("FoggyCityscapes", CITYSCAPES_CLASSES, "COCO"),
    "Shapes": DatasetPreset("Shapes", SHAPES_CLASSES, "VOC"),
}


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Read one class name per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file {path} does not exist; write one class name per line")
    names = tuple(
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    if not names:
        raise ValueError(f"class-names file {path} lists no classes; write one class name per line")
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class-names file {path} repeats {duplicates}; each class must appear once")
    return names


def get_preset(name: str, classes_file: str | Path | None = None, prior_family: str = "VOC") -> DatasetPreset:
    """The preset for ``--dataset name``; ``Custom`` reads its classes from ``classes_file``."""
    if name.lower() == "custom":
        if classes_file is None:
            raise ValueError("--dataset Custom needs --classes <file> with one class name per line")
        return DatasetPreset("Custom", read_class_names(classes_file), prior_family)
    by_lower = {key.lower(): preset for key, preset in DATASETS.items()}
    if name.lower() not in by_lower:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + ['Custom']}")
    preset = by_lower[name.lower()]
    if classes_file is not None:
        return DatasetPreset(preset.name, read_class_names(classes_file), preset.prior_family)
    return preset
