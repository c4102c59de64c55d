"""SSDAugmentation: properties over thousands of draws, the crop IoU test, the paper's crop
samplers against Caffe SSD's loop, and equality with a straightforward implementation that builds the whole
expand canvas."""

import math

import cv2
import numpy as np
import pytest
import torch

from layers.box_utils import iou
from tests.reference import plain_iou
from utils.augmentations import PAPER_CROP_MODES, SSD_PYTORCH_CROP_MODES, SSDAugmentation, iou_numpy
from utils.transforms import CAFFE_MEAN_BGR

SAMPLERS = ["paper", "ssd_pytorch"]


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


@pytest.mark.parametrize("crop_samplers", SAMPLERS)
def test_properties_over_thousands_of_draws(crop_samplers: str) -> None:
    aug = SSDAugmentation(size=64, crop_samplers=crop_samplers)
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


@pytest.mark.parametrize("crop_samplers", SAMPLERS)
@pytest.mark.parametrize("min_iou", [0.3, 0.5, 0.7, 0.9])
def test_crop_meets_its_minimum_iou(min_iou: float, crop_samplers: str) -> None:
    """ssd.pytorch's `overlap.min() < min_iou and max_iou < overlap.max()` never rejected a crop."""
    aug = SSDAugmentation(size=64, crop_samplers=crop_samplers, crop_modes=(min_iou,))
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


@pytest.mark.parametrize("crop_samplers", SAMPLERS)
def test_crop_keeps_boxes_whose_centre_is_inside(crop_samplers: str) -> None:
    aug = SSDAugmentation(size=64, crop_samplers=crop_samplers, crop_modes=(None,))
    rng = np.random.default_rng(2)
    boxes = rng.uniform(0, 100, (8, 2)).astype(np.float32)
    boxes = np.concatenate([boxes, boxes + 30], axis=1)
    for _ in range(200):
        (x0, y0, x1, y1), keep = aug.sample_crop(boxes, 130, 130, rng)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
        assert np.array_equal(keep, inside) and keep.any()


def test_default_crop_samplers_are_the_papers() -> None:
    """SSD §2.2 and Caffe SSD's ssd_pascal.py: the whole image, minimum IoU 0.1, 0.3, 0.5, 0.7, 0.9, and a
    patch without constraint; ssd.pytorch's set (without 0.5) stays available."""
    assert PAPER_CROP_MODES == ("whole", 0.1, 0.3, 0.5, 0.7, 0.9, None)
    assert SSD_PYTORCH_CROP_MODES == ("whole", 0.1, 0.3, 0.7, 0.9, None)
    aug = SSDAugmentation()
    assert (aug.crop_samplers, aug.crop_modes, aug.crop_trials) == ("paper", PAPER_CROP_MODES, 50)
    assert SSDAugmentation(crop_samplers="ssd_pytorch").crop_modes == SSD_PYTORCH_CROP_MODES
    with pytest.raises(ValueError, match="crop_samplers must be one of .*got 'caffe'"):
        SSDAugmentation(crop_samplers="caffe")


def caffe_sample_crop(boxes: np.ndarray, width: int, height: int, modes: tuple, trials: int, rng):
    """Caffe SSD's GenerateBatchSamples and random pick, sampler by sampler and trial by trial (SampleBBox,
    SatisfySampleConstraint), with the project's rule that a patch keeps an object. It takes the same draws
    as SSDAugmentation.sample_crop: all scales, then aspect ratios, x and y offsets, then the pick."""
    samplers = [mode for mode in modes if mode != "whole"]
    shape = (len(samplers), trials)
    scales, aspects = rng.uniform(0.3, 1.0, shape), rng.uniform(0.5, 2.0, shape)
    x_draws, y_draws = rng.random(shape), rng.random(shape)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sampled = [(0, 0, width, height)] if "whole" in modes else []
    for i, min_iou in enumerate(samplers):
        for t in range(trials):
            scale = scales[i, t]
            aspect = min(max(aspects[i, t], scale**2), 1 / scale**2)
            w, h = scale * math.sqrt(aspect), scale / math.sqrt(aspect)
            x_off, y_off = x_draws[i, t] * (1 - w), y_draws[i, t] * (1 - h)
            corners = (x_off * width, y_off * height, (x_off + w) * width, (y_off + h) * height)
            x0, y0, x1, y1 = (int(min(max(v, 0), side)) for v, side in zip(corners, (width, height) * 2, strict=True))
            if x1 <= x0 or y1 <= y0:
                continue
            inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
            if len(boxes) and not inside.any():
                continue
            rect = np.array([[x0, y0, x1, y1]], np.float32)
            if min_iou is not None and (len(boxes) == 0 or iou_numpy(rect, boxes).max() < min_iou):
                continue
            sampled.append((x0, y0, x1, y1))
            break  # max_sample 1
    return sampled[int(rng.integers(len(sampled)))] if sampled else (0, 0, width, height)


def test_paper_crop_equals_caffes_sampler_loop() -> None:
    aug = SSDAugmentation(size=64)
    for seed in range(300):
        _, boxes, _ = random_sample(np.random.default_rng(20_000 + seed))
        width, height = (int(v) for v in np.random.default_rng(seed).integers(40, 400, 2))
        rect, keep = aug.sample_crop(boxes, width, height, np.random.default_rng(seed))
        assert rect == caffe_sample_crop(boxes, width, height, PAPER_CROP_MODES, 50, np.random.default_rng(seed))
        x0, y0, x1, y1 = rect
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        expected = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
        assert np.array_equal(keep, expected if rect != (0, 0, width, height) else np.ones(len(boxes), bool))


def test_patch_shapes_follow_each_sampler() -> None:
    """Caffe: scale s in [0.3, 1], aspect in [0.5, 2] relative to the canvas, clipped to [s^2, 1/s^2]. On a
    4:1 canvas its patches can be flatter than 1:2 in pixels and narrower than 0.3 of a side, which
    ssd.pytorch's (each side in [0.3, 1], pixel aspect in [0.5, 2]) never are."""
    width, height, no_boxes = 400, 100, np.zeros((0, 4), np.float32)
    shapes = {}
    for crop_samplers in SAMPLERS:
        aug = SSDAugmentation(size=64, crop_samplers=crop_samplers, crop_modes=(None,))  # every patch passes
        rng = np.random.default_rng(5)
        rects = np.array([aug.sample_crop(no_boxes, width, height, rng)[0] for _ in range(2000)])
        shapes[crop_samplers] = (rects[:, 2] - rects[:, 0]) / width, (rects[:, 3] - rects[:, 1]) / height
    w, h = shapes["paper"]  # fractions of the canvas' sides, each within a pixel (both corners are truncated)
    w_low, h_low, w_high, h_high = w - 1 / width, h - 1 / height, w + 1 / width, h + 1 / height
    assert (w_high * h_high >= 0.3**2).all() and (w * h <= 1).all()
    assert (w_high / h_low >= 0.5).all() and (w_low / h_high <= 2).all()
    assert (h * height / (w * width) < 0.5).mean() > 0.5 and (w < 0.3).any()
    w, h = shapes["ssd_pytorch"]
    assert (w >= 0.3 - 1 / width).all() and (h >= 0.3 - 1 / height).all()
    ratio = h * height / (w * width)
    assert (ratio >= 0.5 - 0.02).all() and (ratio <= 2 + 0.02).all()


@pytest.mark.parametrize(("crop_samplers", "whole_share"), [("paper", 1 / 2), ("ssd_pytorch", 1 / 6)])
def test_images_without_objects(crop_samplers: str, whole_share: float) -> None:
    """Paper: only the unconstrained sampler passes (no object reaches a minimum IoU), so the whole image
    and one patch are the candidates; ssd.pytorch draws one of its six modes."""
    aug = SSDAugmentation(size=64, crop_samplers=crop_samplers)
    rng = np.random.default_rng(6)
    rects = [aug.sample_crop(np.zeros((0, 4), np.float32), 200, 150, rng) for _ in range(1200)]
    assert all(keep.shape == (0,) for _, keep in rects)
    whole = np.mean([rect == (0, 0, 200, 150) for rect, _ in rects])
    assert abs(whole - whole_share) < 0.05


def test_old_checkpoints_resume_with_ssd_pytorch_crops(tmp_path) -> None:
    """A checkpoint written before --crop_samplers existed trained with ssd.pytorch's samplers; new runs
    default to the paper's."""
    import train
    from utils.engine.config import TrainConfig
    from utils.engine.distributed import DistInfo
    from utils.engine.resume import resolve_run

    parser = train.get_args_parser()
    defaults = vars(parser.parse_args([]))
    assert defaults["crop_samplers"] == "paper"
    old_args = {k: v for k, v in defaults.items() if k != "crop_samplers"}
    torch.save({"optimizer": {}, "args": old_args}, tmp_path / "old.pth")
    torch.save({"optimizer": {}, "args": {**old_args, "crop_samplers": "paper"}}, tmp_path / "new.pth")
    for name, expected in (("old.pth", "ssd_pytorch"), ("new.pth", "paper")):
        resume = TrainConfig.from_dict(vars(parser.parse_args(["--resume", str(tmp_path / name)])))
        settings, _, _ = resolve_run(resume, frozenset({"resume"}), TrainConfig.from_dict(defaults),
                                     torch.device("cpu"), DistInfo())  # fmt: skip
        assert isinstance(settings, TrainConfig) and settings.crop_samplers == expected


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


@pytest.mark.parametrize("crop_samplers", SAMPLERS)
def test_fused_pipeline_equals_the_straightforward_one(crop_samplers: str) -> None:
    aug = SSDAugmentation(size=96, crop_samplers=crop_samplers)
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


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected an \\[H, W, 3\\] BGR image"):
        SSDAugmentation()(np.zeros((10, 10), np.uint8), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match="boxes"):
        SSDAugmentation()(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 4)), np.zeros(3))
