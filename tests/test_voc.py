"""VOC and VOC-format loaders on fixtures written as real VOCdevkit folders, including bad data."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.base import detection_collate
from data.config import VOC_CLASSES
from data.voc import VOCDetection, VOCFormatDataset, parse_voc_xml
from layers.multibox_loss import MultiBoxLoss
from ssd import build_ssd
from tests.fixtures import write_image, write_voc_folder
from utils.augmentations import SSDAugmentation
from utils.transforms import BaseTransform


@pytest.fixture
def devkit(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit"
    write_voc_folder(root / "VOC2007", "trainval", {
        "000005": (60, 40, [("chair", (10, 5, 30, 35), 0), ("chair", (35, 8, 55, 30), 1)]),
        "000007": (50, 50, [("car", (1, 1, 50, 50), 0)]),
        "000009": (64, 48, []),  # no objects: a background-only sample
    })  # fmt: skip
    write_voc_folder(root / "VOC2007", "test", {"000001": (40, 30, [("dog", (5, 5, 20, 25), 0)])})
    write_voc_folder(
        root / "VOC2012", "trainval", {"2008_000001": (30, 30, [("person", (2, 3, 28, 29), 0)])}, suffix=".png"
    )
    return root


def test_default_image_sets_are_07_plus_12_trainval(devkit: Path) -> None:
    dataset = VOCDetection(devkit)
    assert dataset.ids == ["000005", "000007", "000009", "2008_000001"]
    assert len(VOCDetection(devkit, [("2007", "test")])) == 1


def test_pull_anno_is_xml_minus_one_with_difficult_flags(devkit: Path) -> None:
    anno = VOCDetection(devkit).pull_anno(0)
    assert (anno.width, anno.height) == (60, 40)
    np.testing.assert_array_equal(anno.boxes, [[9, 4, 29, 34], [34, 7, 54, 29]])
    assert anno.labels.tolist() == [VOC_CLASSES.index("chair")] * 2
    assert anno.difficult.tolist() == [False, True]


def test_samples_follow_the_schema(devkit: Path) -> None:
    dataset = VOCDetection(devkit, transform=BaseTransform(300))
    image, target = dataset[0]
    assert image.shape == (3, 300, 300) and image.dtype == torch.float32
    assert target.shape == (1, 5)  # the difficult chair is dropped
    torch.testing.assert_close(target[0], torch.tensor([9 / 60, 4 / 40, 29 / 60, 34 / 40, 8.0]))
    assert VOCDetection(devkit, transform=BaseTransform(300), keep_difficult=True)[0][1].shape == (2, 5)
    _, empty = dataset[2]
    assert empty.shape == (0, 5)
    raw, _ = VOCDetection(devkit)[0]
    bgr = dataset.pull_image(0)
    torch.testing.assert_close(raw, torch.from_numpy(bgr[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)))


def test_out_of_bounds_boxes_are_clipped(devkit: Path) -> None:
    anno = VOCDetection(devkit).pull_anno(1)  # car at (1, 1, 50, 50) in a 50x50 image: 0-based (0, 0, 49, 49)
    np.testing.assert_array_equal(anno.boxes, [[0, 0, 49, 49]])
    folder = devkit / "VOC2007"
    (folder / "Annotations" / "000007.xml").write_text(
        (folder / "Annotations" / "000007.xml")
        .read_text()
        .replace("<xmax>50</xmax>", "<xmax>90</xmax>")
        .replace("<ymin>1</ymin>", "<ymin>-7</ymin>")
    )
    np.testing.assert_array_equal(VOCDetection(devkit).pull_anno(1).boxes, [[0, 0, 49, 49]])


def test_degenerate_and_inverted_boxes_are_dropped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "custom"
    write_voc_folder(
        folder,
        "trainval",
        {"a": (40, 40, [("cat", (5, 5, 5, 20), 0), ("cat", (30, 30, 10, 35), 0), ("cat", (2, 2, 20, 20), 0)])},
    )
    with caplog.at_level(logging.WARNING):
        dataset = VOCFormatDataset([(folder, "trainval")], ["cat"])
    assert dataset.pull_anno(0).boxes.tolist() == [[1, 1, 19, 19]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "a.xml" in warnings[0] and "2 degenerate" in warnings[0]


def test_unknown_class_names_file_and_class(tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    write_voc_folder(folder, "trainval", {"a": (40, 40, [("zebra", (5, 5, 20, 20), 0)])})
    for skip_bad in (False, True):
        with pytest.raises(ValueError, match=r"a\.xml has an object of class 'zebra'"):
            VOCFormatDataset([(folder, "trainval")], ["cat", "dog"], skip_bad=skip_bad)


def test_class_names_match_case_insensitively(tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    write_voc_folder(folder, "trainval", {"a": (40, 40, [("Traffic Sign", (5, 5, 20, 20), 0)])})
    assert VOCFormatDataset([(folder, "trainval")], ["traffic sign"]).pull_anno(0).labels.tolist() == [0]


def test_truncated_xml_and_missing_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "custom"
    write_voc_folder(
        folder, "trainval", {"good": (40, 40, [("cat", (5, 5, 20, 20), 0)]), "cut": (40, 40, []), "lost": (40, 40, [])}
    )
    xml = folder / "Annotations" / "cut.xml"
    xml.write_text(xml.read_text()[:50])
    with pytest.raises(ValueError, match=r"cut\.xml is malformed or truncated XML"):
        VOCFormatDataset([(folder, "trainval")], ["cat"])
    xml.unlink()
    write_voc_folder(folder, "other", {"cut": (40, 40, [])})  # restore, then lose an image instead
    (folder / "JPEGImages" / "lost.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/lost\.jpg \(or \.png\) does not exist"):
        VOCFormatDataset([(folder, "trainval")], ["cat"])
    with caplog.at_level(logging.WARNING):
        dataset = VOCFormatDataset([(folder, "trainval")], ["cat"], skip_bad=True)
    assert dataset.ids == ["good", "cut"]
    assert any("lost" in r.getMessage() for r in caplog.records)


def test_corrupt_image_is_named_or_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "custom"
    write_voc_folder(folder, "trainval", {"broken": (40, 40, [("cat", (5, 5, 20, 20), 0)]), "fine": (40, 40, [])})
    (folder / "JPEGImages" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    # The image's header is read when the dataset is built (for its true size), so a bad file is named at once.
    with pytest.raises(ValueError, match=r"broken\.jpg is corrupt or not an image"):
        VOCFormatDataset([(folder, "trainval")], ["cat"], transform=BaseTransform(64))
    with caplog.at_level(logging.WARNING):
        dataset = VOCFormatDataset([(folder, "trainval")], ["cat"], transform=BaseTransform(64), skip_bad=True)
    assert dataset.ids == ["fine"] and any("broken.jpg" in r.getMessage() for r in caplog.records)
    # A file that breaks after the dataset was built fails when it is loaded.
    (folder / "JPEGImages" / "broken.jpg").write_bytes((folder / "JPEGImages" / "fine.jpg").read_bytes())
    dataset = VOCFormatDataset([(folder, "trainval")], ["cat"], transform=BaseTransform(64))
    (folder / "JPEGImages" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg is corrupt or not an image"):
        dataset[0]
    dataset.skip_bad = True
    with caplog.at_level(logging.WARNING):
        image, target = dataset[0]  # falls through to the next readable sample
    assert image.shape == (3, 64, 64) and target.shape == (0, 5)


def test_missing_root_and_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="VOC root .* does not exist"):
        VOCDetection(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"image set .*trainval\.txt does not exist"):
        VOCFormatDataset([(tmp_path / "empty", "trainval")], ["cat"])
    listing = tmp_path / "empty" / "ImageSets" / "Main" / "trainval.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        VOCFormatDataset([(tmp_path / "empty", "trainval")], ["cat"])


def test_parse_rejects_a_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "x.xml"
    path.write_text("<annotation><object><name>cat</name></object></annotation>")
    with pytest.raises(ValueError, match=r"x\.xml lacks a field"):
        parse_voc_xml(path, {"cat": 0})


def test_background_only_images_train(devkit: Path) -> None:
    dataset = VOCDetection(devkit, transform=SSDAugmentation(300))
    images, targets = next(iter(DataLoader(dataset, batch_size=4, collate_fn=detection_collate)))
    assert images.shape == (4, 3, 300, 300)
    assert any(t.shape[0] == 0 for t in targets)
    model = build_ssd(300, 21, width=0.125)
    loss_l, loss_c = MultiBoxLoss(21)(*model(images), model.priors, targets)
    assert torch.isfinite(loss_l) and torch.isfinite(loss_c)


def test_augmentation_is_reproducible_across_worker_counts_and_epochs(devkit: Path) -> None:
    # train.py's loader: the sampler's (epoch, index) keys seed each sample's augmentation, so workers (persistent
    # across epochs, as train.py's are) give the batches the main process gives, and each epoch its own draws.
    from data.sampler import EpochSampler

    def epochs(workers: int) -> list[list[torch.Tensor]]:
        dataset = VOCDetection(devkit, transform=SSDAugmentation(64), seed=3)
        sampler = EpochSampler(len(dataset), seed=3)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers,
                            collate_fn=detection_collate, persistent_workers=workers > 0)  # fmt: skip
        result = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            result.append([images for images, _ in loader])
        return result

    single, double = epochs(0), epochs(2)
    for a, b in zip(sum(single, []), sum(double, []), strict=True):
        assert torch.equal(a, b)
    # A key gives the same sample every time; the same image in another epoch is drawn differently.
    dataset = VOCDetection(devkit, transform=SSDAugmentation(64), seed=3)
    assert torch.equal(dataset[(1, 0)][0], dataset[(1, 0)][0])
    assert not torch.equal(dataset[(0, 0)][0], dataset[(1, 0)][0])


def test_png_images_load(tmp_path: Path) -> None:
    folder = tmp_path / "pngs"
    write_voc_folder(folder, "test", {"p": (20, 10, [("cat", (2, 2, 8, 8), 0)])}, suffix=".png")
    write_image(folder / "JPEGImages" / "unused.jpg", 5, 5)
    dataset = VOCFormatDataset([(folder, "test")], ["cat"])
    assert dataset.image_path(0).suffix == ".png" and dataset.pull_image(0).shape == (10, 20, 3)
