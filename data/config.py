"""Dataset presets, chosen by name: the class names and the prior family (a name from
:data:`layers.prior_box.PRIOR_FAMILIES`) of each dataset. A model's priors are never guessed from the number
of classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
# COCO's category id of each of COCO_CLASSES: 1..90 without the 10 ids that name no category in the released sets.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def coco_names_by_id() -> tuple[str, ...]:
    """The names of COCO category ids 1..90 (``names[id - 1]``), ``unused_<id>`` for the 10 ids without a category:
    the classes of a detector whose class ``c`` is category id ``c``, as torchvision's COCO models are."""
    by_id = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True))
    return tuple(by_id.get(i, f"unused_{i}") for i in range(1, 91))


# The 8 instance classes of the Cityscapes detection benchmark (as used for Cityscapes -> Foggy Cityscapes).
CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")

SHAPES_CLASSES = ("circle", "square", "triangle", "star")


@dataclass(frozen=True)
class DatasetPreset:
    """What a dataset name fixes: its foreground classes and the prior family its models use.

    Args:
        name: the ``--dataset`` value.
        class_names: foreground classes; the network's class ``c`` is ``class_names[c - 1]``.
        prior_family: a family of :data:`layers.prior_box.PRIOR_CONFIGS`.
    """

    name: str
    class_names: tuple[str, ...]
    prior_family: str = "VOC"

    @property
    def num_classes(self) -> int:
        """C, including the background."""
        return len(self.class_names) + 1


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
    """Read one class name per line (blank lines and ``#`` comments skipped; a UTF-8 byte-order mark is fine).

    Names are matched to annotations case-insensitively, so two names that differ only in case are refused, and
    so are names with a path separator (eval.py writes one results file per class, named after it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file {path} does not exist; write one class name per line")
    names = tuple(
        line.strip()
        for line in path.read_text(encoding="utf-8-sig").splitlines()
        if line.strip() and not line.startswith("#")
    )
    if not names:
        raise ValueError(f"class-names file {path} lists no classes; write one class name per line")
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(names):
        clashes = sorted({n for n in names if lowered.count(n.lower()) > 1})
        raise ValueError(
            f"class-names file {path} repeats {clashes} (names are matched case-insensitively); "
            "each class must appear once"
        )
    for name in names:
        if any(c in name for c in "/\\") or not name.isprintable():
            raise ValueError(
                f"class-names file {path}: class {name!r} contains a path separator or a control character; "
                "rename it (eval.py writes a results file named after each class)"
            )
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
