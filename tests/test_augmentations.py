"""SSDAugmentation and BaseTransform: properties over thousands of draws, the crop IoU test, and equality
with a straightforward implementation that builds the whole expand canvas."""

import cv2
import numpy as np
import pytest
import torch

from layers.box_utils import iou
from tests.reference import plain_iou
from utils.augmentations import CAFFE_MEAN_BGR, BaseTransform, SSDAugmentation, iou_numpy


def random_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    height, width = int(rng.integers(20, 160)), int(rng.integers(20, 160))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    count = int(rng.integers(0, 6))  # zero boxes included
    xy = rng.uniform(0, [width - 2, height - 2], (count, 2))
    wh = rng.uniform(1, [width, height], (count, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).astype(np.float32)
    return image, boxes, rng.integers(0, 20, count)


def test_iou_numpy_equals_box_utils_iou() -> None:
    rng = np.random.default_rng(3)
    corners = [rng.uniform(0, 100, (count, 2)) for count in (5, 7)]
    boxes_a, boxes_b = (np.concatenate([xy, xy + rng.uniform(1, 60, xy.shape)], 1).astype(np.float32) for xy in corners)
    boxes_b[0] = boxes_b[1]  # identical boxes: IoU 1
    expected = iou(torch.from_numpy(boxes_a), torch.from_numpy(boxes_b)).numpy()
    np.testing.assert_allclose(iou_numpy(boxes_a, boxes_b), expected, rtol=1e-6, atol=0)
    assert iou_numpy(boxes_b, boxes_b)[0, 1] == 1.0


def test_properties_over_thousands_of_draws() -> None:
    aug = SSDAugmentation(size=64)
    rng = np.random.default_rng(0)
    kept_some = dropped_some = 0
    for _ in range(3000):
        image, boxes, labels = random_sample(rng)
        out, out_boxes, out_labels = aug(image, boxes, labels, rng=rng)
        assert out.shape == (3, 64, 64) and out.dtype == np.float32 and out.flags.c_contiguous
        assert out_boxes.dtype == np.float32 and out_boxes.shape == (len(out_labels), 4)
        assert out_labels.dtype == np.int64
        assert len(out_labels) <= len(labels)
        assert set(out_labels.tolist()) <= set(labels.tolist())
        assert (out_boxes >= 0).all() and (out_boxes <= 1).all()  # never leaves the image
        assert (out_boxes[:, 2] > out_boxes[:, 0]).all() and (
            out_boxes[:, 3] > out_boxes[:, 1]
        ).all()  # never degenerate
        # Pixel values stay within [0, 255] - mean.
        assert out.min() >= -max(CAFFE_MEAN_BGR) - 1e-3 and out.max() <= 255 - min(CAFFE_MEAN_BGR) + 1e-3
        kept_some += len(out_labels) == len(labels) and len(labels) > 0
        dropped_some += len(out_labels) < len(labels)
    assert kept_some > 100 and dropped_some > 100  # both outcomes happen


@pytest.mark.parametrize("min_iou", [0.3, 0.7, 0.9])
def test_crop_meets_its_minimum_iou(min_iou: float) -> None:
    """ssd.pytorch's `overlap.min() < min_iou and max_iou < overlap.max()` never rejected a crop."""
    aug = SSDAugmentation(size=64, crop_modes=(min_iou,))
    rng = np.random.default_rng(1)
    boxes = np.array([[30, 40, 90, 120], [100, 10, 140, 50]], np.float32)
    whole = 0
    for _ in range(500):
        rect, keep = aug.sample_crop(boxes, 160, 140, rng)
        if rect == (0, 0, 160, 140):
            whole += 1
            continue
        assert plain_iou(torch.from_numpy(boxes), torch.tensor([rect], dtype=torch.float32)).max() >= min_iou
        assert keep.any()
    assert whole < 500


def test_crop_keeps_boxes_whose_centre_is_inside() -> None:
    aug = SSDAugmentation(size=64, crop_modes=(None,))
    rng = np.random.default_rng(2)
    boxes = rng.uniform(0, 100, (8, 2)).astype(np.float32)
    boxes = np.concatenate([boxes, boxes + 30], axis=1)
    for _ in range(200):
        (x0, y0, x1, y1), keep = aug.sample_crop(boxes, 130, 130, rng)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
        assert np.array_equal(keep, inside)
        assert 0.3 * 130 - 1 <= x1 - x0 <= 130 and 0.5 <= (y1 - y0) / (x1 - x0) <= 2.05


def straightforward(aug: SSDAugmentation, image, boxes, labels, rng):
    """The same draws in the paper's order, on the whole image and a fully built expand canvas."""
    boxes = boxes.astype(np.float32)
    height, width = image.shape[:2]
    left = top = 0
    canvas_w, canvas_h = width, height
    if rng.random() < 0.5:
        ratio = rng.uniform(1.0, aug.max_expand)
        canvas_w, canvas_h = int(width * ratio), int(height * ratio)
        left, top = int(rng.uniform(0, canvas_w - width)), int(rng.uniform(0, canvas_h - height))
        boxes = boxes + np.array([left, top, left, top], np.float32)
    (x0, y0, x1, y1), keep = aug.sample_crop(boxes, canvas_w, canvas_h, rng)
    distorted = aug.photometric(image, rng)  # per-pixel: the whole image gives the same pixels as the patch
    canvas = np.empty((canvas_h, canvas_w, 3), np.uint8)
    canvas[:] = aug.fill
    canvas[top : top + height, left : left + width] = distorted
    crop = canvas[y0:y1, x0:x1]
    boxes = np.clip(boxes[keep], [x0, y0, x0, y0], [x1, y1, x1, y1]) - [x0, y0, x0, y0]
    flip = rng.random() < 0.5
    if flip:
        crop = crop[:, ::-1]
        boxes = np.stack([(x1 - x0) - boxes[:, 2], boxes[:, 1], (x1 - x0) - boxes[:, 0], boxes[:, 3]], axis=1)
    resized = cv2.resize(np.ascontiguousarray(crop), (aug.size, aug.size), interpolation=cv2.INTER_LINEAR)
    out = resized[:, :, ::-1].astype(np.float32) - aug.mean[::-1]
    return out.transpose(2, 0, 1), boxes / [x1 - x0, y1 - y0, x1 - x0, y1 - y0], labels[keep]


def test_fused_pipeline_equals_the_straightforward_one() -> None:
    aug = SSDAugmentation(size=96)
    for seed in range(300):
        image, boxes, labels = random_sample(np.random.default_rng(10_000 + seed))
        out, out_boxes, out_labels = aug(image, boxes, labels, rng=np.random.default_rng(seed))
        ref, ref_boxes, ref_labels = straightforward(aug, image, boxes, labels, np.random.default_rng(seed))
        # OpenCV's uint8 HSV->BGR rounds the SIMD body and the scalar tail of a row differently (one level,
        # up to two after a later x1.5 contrast), and warpAffine's fixed-point bilinear weights differ from
        # resize's by one level. Nothing else may differ.
        np.testing.assert_allclose(out, ref, atol=3)
        assert np.abs(out - ref).mean() < 0.5
        np.testing.assert_allclose(out_boxes, ref_boxes, atol=1e-5)
        np.testing.assert_array_equal(out_labels, ref_labels)


def test_seeded_generators_reproduce_draws() -> None:
    image, boxes, labels = random_sample(np.random.default_rng(3))
    aug = SSDAugmentation(size=64)
    a = aug(image, boxes, labels, rng=np.random.default_rng(7))
    b = aug(image, boxes, labels, rng=np.random.default_rng(7))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_base_transform_is_ssd_pytorch_preprocessing() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out, boxes, labels = BaseTransform(300)(image, np.array([[5.0, 10.0, 53.0, 37.0]]), np.array([2]))
    expected = cv2.resize(image, (300, 300)).astype(np.float32) - np.array([104, 117, 123], np.float32)
    np.testing.assert_allclose(out, expected[:, :, ::-1].transpose(2, 0, 1), atol=1e-4)
    np.testing.assert_allclose(boxes, [[5 / 53, 10 / 37, 1.0, 1.0]], rtol=1e-6)
    assert labels.tolist() == [2]
    with_std = BaseTransform(300, mean=(0, 0, 0), std=(2, 2, 2))(image)[0]
    np.testing.assert_allclose(with_std, cv2.resize(image, (300, 300))[:, :, ::-1].transpose(2, 0, 1) / 2, atol=1e-4)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected an \\[H, W, 3\\] BGR image"):
        BaseTransform()(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="boxes"):
        SSDAugmentation()(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 4)), np.zeros(3))
