"""The synthetic shapes generator: determinism, the CLI's layout, and the stated object statistics."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from data.config import SHAPES_CLASSES
from data.shapes import MAX_SIZE, MIN_SIZE, draw_sample, generate
from data.voc import VOCFormatDataset

ROOT = Path(__file__).resolve().parent.parent


def test_cli_writes_voc_splits(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "data.shapes", "--out", str(tmp_path / "shapes"), "--train", "12", "--test", "4", "--seed", "0"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "wrote 12 train and 4 test images" in result.stdout
    main = tmp_path / "shapes" / "ImageSets" / "Main"
    assert len((main / "trainval.txt").read_text().split()) == 12 and len((main / "test.txt").read_text().split()) == 4
    train = VOCFormatDataset([(tmp_path / "shapes", "trainval")], SHAPES_CLASSES)
    test = VOCFormatDataset([(tmp_path / "shapes", "test")], SHAPES_CLASSES)
    assert not set(train.ids) & set(test.ids)


def test_same_seed_same_files(tmp_path: Path) -> None:
    generate(tmp_path / "a", 5, 2, seed=4)
    generate(tmp_path / "b", 5, 2, seed=4)
    generate(tmp_path / "c", 5, 2, seed=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a/JPEGImages/trainval_000000.jpg").read_bytes() != (
        tmp_path / "c/JPEGImages/trainval_000000.jpg"
    ).read_bytes()


def test_object_statistics_over_many_images() -> None:
    counts, sizes, per_image, overlapping = np.zeros(len(SHAPES_CLASSES)), [], [], 0
    for index in range(300):
        image, boxes, labels = draw_sample(np.random.default_rng((0, 0, index)))
        assert image.shape == (300, 300, 3) and image.dtype == np.uint8
        assert ((boxes >= 0) & (boxes <= 299)).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        per_image.append(len(labels))
        np.add.at(counts, labels, 1)
        sizes.extend(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist())
        for i in range(len(boxes)):
            for j in range(i):
                w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                overlapping += w > 0 and h > 0
    assert min(per_image) >= 1 and max(per_image) == 6
    assert (counts > 0.2 * counts.sum() / len(SHAPES_CLASSES)).all()  # every class is common
    assert MIN_SIZE * 0.75 <= min(sizes) and max(sizes) <= MAX_SIZE + 2
    assert overlapping > 50  # objects do overlap
    # The background is noisy: neighbouring pixels of an empty corner differ.
    assert np.abs(np.diff(image[:20, :20].astype(int), axis=1)).mean() > 2
