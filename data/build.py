"""Build a dataset from a ``--dataset`` name, a root folder and a split."""

from __future__ import annotations

from pathlib import Path

from data.base import DetectionDataset, Transform
from data.config import DatasetPreset
from data.voc import VOCDetection, VOCFormatDataset

SPLITS = ("train", "test")


def parse_voc_image_sets(text: str) -> list[tuple[str, str]]:
    """``"2007:trainval,2012:trainval"`` -> ``[("2007", "trainval"), ("2012", "trainval")]``."""
    pairs = []
    for item in text.split(","):
        year, _, split = item.strip().partition(":")
        if not year or not split:
            raise ValueError(f"VOC image set {item!r} must look like YEAR:SPLIT, e.g. 2007:test")
        pairs.append((year, split))
    return pairs


def build_dataset(
    preset: DatasetPreset,
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    image_set: str | None = None,
    keep_difficult: bool = False,
    skip_bad: bool = False,
    seed: int = 0,
) -> DetectionDataset:
    """The dataset of ``preset`` under ``root``.

    Args:
        preset: from :func:`data.config.get_preset`.
        root: VOCdevkit folder (VOC), COCO folder (COCO), or a VOC-format folder (everything else).
        split: ``"train"`` or ``"test"``, mapped to the preset's image sets (``preset.train_split`` and
            ``preset.test_split``: VOC 07+12 trainval and 2007 test, COCO train2017 and val2017, ...).
        image_set: overrides that mapping: ``"2007:test"`` (VOC), ``"val2014"`` (COCO), or a split file
            name under ``ImageSets/Main`` (VOC-format folders).

    Raises:
        ValueError: ``split`` is not train or test, or the preset has no such split and ``image_set`` is None.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_set = image_set or preset.image_set(split)
    if image_set is None:
        raise ValueError(f"--dataset {preset.name} has no {split} split of its own (docs/datasets.md); name a split "
                         f"file of {Path(root) / 'ImageSets' / 'Main'} with --image_set")  # fmt: skip
    common = {"transform": transform, "skip_bad": skip_bad, "seed": seed}
    if preset.name == "VOC":
        sets = parse_voc_image_sets(image_set)
        return VOCDetection(root, sets, keep_difficult=keep_difficult, class_names=preset.class_names, **common)
    if preset.name == "COCO":
        from data.coco import COCODetection  # pycocotools is only needed here

        return COCODetection(root, image_set, class_names=preset.class_names, **common)
    return VOCFormatDataset([(root, image_set)], preset.class_names, keep_difficult=keep_difficult,
                            rename=preset.rename, drop=preset.drop, **common)  # fmt: skip
