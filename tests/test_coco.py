"""COCO loader on a tiny instances JSON: id mapping, crowd, xywh->xyxy, empty images, both layouts."""

from pathlib import Path

import numpy as np
import pytest
import torch

from data.build import build_dataset
from data.coco import COCODetection
from data.config import DatasetPreset
from tests.fixtures import write_coco
from utils.transforms import BaseTransform

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]
IMAGES = [
    {"id": 42, "file_name": "000000000042.jpg", "width": 64, "height": 48},
    {"id": 7, "file_name": "000000000007.jpg", "width": 32, "height": 32},  # no annotations
    {"id": 99, "file_name": "000000000099.jpg", "width": 40, "height": 40},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 42, "category_id": 90, "bbox": [10, 5, 20, 30], "iscrowd": 0, "area": 600},
    {"id": 2, "image_id": 42, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 1, "area": 3072},
    {
        "id": 3,
        "image_id": 99,
        "category_id": 3,
        "bbox": [30, 30, 20, 20],
        "iscrowd": 0,
        "area": 400,
    },  # runs off the image
    {"id": 4, "image_id": 99, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0, "area": 0},  # zero width
]


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    write_coco(tmp_path / "coco", "val2017", IMAGES, ANNOTATIONS, CATEGORIES)
    return tmp_path / "coco"


def test_ids_map_to_contiguous_labels(coco_root: Path) -> None:
    dataset = COCODetection(coco_root, "val2017")
    assert dataset.class_names == ("person", "car", "toothbrush")
    assert dataset.category_ids == [1, 3, 90]
    assert dataset.ids == ["7", "42", "99"]


def test_xywh_to_xyxy_crowd_and_clipping(coco_root: Path) -> None:
    dataset = COCODetection(coco_root, "val2017")
    anno = dataset.pull_anno(1)  # image 42
    np.testing.assert_array_equal(anno.boxes, [[10, 5, 30, 35], [0, 0, 64, 48]])
    assert anno.labels.tolist() == [2, 0] and anno.difficult.tolist() == [False, True]
    clipped = dataset.pull_anno(2)  # image 99: the car is clipped, the zero-width person dropped
    np.testing.assert_array_equal(clipped.boxes, [[30, 30, 40, 40]])
    assert clipped.labels.tolist() == [1]


def test_training_targets_skip_crowd_and_handle_empty_images(coco_root: Path) -> None:
    dataset = COCODetection(coco_root, "val2017", transform=BaseTransform(64))
    image, target = dataset[1]
    assert image.shape == (3, 64, 64)
    torch.testing.assert_close(target, torch.tensor([[10 / 64, 5 / 48, 30 / 64, 35 / 48, 2.0]]))
    assert dataset[0][1].shape == (0, 5)


def test_2014_layout_with_images_folder(tmp_path: Path) -> None:
    write_coco(tmp_path / "coco", "train2014", IMAGES[:1], ANNOTATIONS[:1], CATEGORIES, nested=True)
    preset = DatasetPreset("COCO", ("Person", "Car", "Brush"), "COCO")
    dataset = build_dataset(preset, tmp_path / "coco", "train", image_set="train2014", transform=BaseTransform(32))
    assert dataset.image_path(0) == tmp_path / "coco" / "images" / "train2014" / "000000000042.jpg"
    assert dataset[0][1].shape == (1, 5)
    assert dataset.class_names == ("Person", "Car", "Brush")  # the preset's names win over the file's


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json do not exist"):
        COCODetection(tmp_path, "val2017")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a COCO instances file"):
        COCODetection(tmp_path, "val2017")
