"""SSD's training augmentation (SSD §2.2 "Data augmentation", §3.6) and the views of unlabeled target images for
domain adaptation. Their inputs and outputs are those of every transform (see :mod:`utils.transforms`).

:class:`SSDAugmentation` is the paper's pipeline: photometric distortion, expand ("zoom out"), random
sample crop ("zoom in"), horizontal mirror, resize, mean subtraction. The crop follows SSD §2.2 and Caffe
SSD by default (``crop_samplers="paper"``) or ssd.pytorch (``"ssd_pytorch"``); see
:meth:`SSDAugmentation.sample_crop`. Its speed comes from three choices that leave the result unchanged:

* the geometry (expand placement, crop rectangle) is drawn first, so the photometric steps, which act on
  each pixel alone, run only on the part of the image that survives the crop;
* the expand canvas is never built: when the crop window reaches into the filler, one ``cv2.warpAffine``
  samples the patch straight into the output with the mean as its border (the same bilinear sampling as
  resizing the canvas, up to OpenCV's fixed-point rounding);
* brightness, contrast, saturation and hue run on uint8 images through lookup tables, as Caffe SSD does
  (values saturate at 0 and 255).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from utils.transforms import CAFFE_MEAN_BGR, check_sample, resize_normalise

# Random sample crop modes: "whole" the whole image, a number the minimum IoU a patch must reach with some
# object, None a patch without IoU constraint. SSD §2.2 and Caffe SSD's ssd_pascal.py batch_sampler use
# these seven; ssd.pytorch's RandomSampleCrop leaves out 0.5.
PAPER_CROP_MODES: tuple[float | str | None, ...] = ("whole", 0.1, 0.3, 0.5, 0.7, 0.9, None)
SSD_PYTORCH_CROP_MODES: tuple[float | str | None, ...] = ("whole", 0.1, 0.3, 0.7, 0.9, None)
# --crop_samplers: the crop rule and its modes (SSDAugmentation.sample_crop says how they differ).
CROP_SAMPLERS: dict[str, tuple[float | str | None, ...]] = {
    "paper": PAPER_CROP_MODES,
    "ssd_pytorch": SSD_PYTORCH_CROP_MODES,
}
_CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_IDENTITY = np.arange(256, dtype=np.float32)


def _centres_inside(boxes: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Whether each box's centre lies strictly inside each rectangle: boxes [N, 4] xyxy, corners [T] -> [T, N]."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
    return (
        (centres[None, :, 0] > x0[:, None]) & (centres[None, :, 1] > y0[:, None])
        & (centres[None, :, 0] < x1[:, None]) & (centres[None, :, 1] < y1[:, None])
    )  # fmt: skip


def iou_numpy(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """:func:`layers.box_utils.iou` in numpy, for the crop sampler's per-sample arrays (a tensor round trip costs
    more than this IoU there; tests/test_augmentations.py checks that both agree).

    Args:
        boxes_a (ndarray[N, 4]): xyxy.
        boxes_b (ndarray[M, 4]): xyxy.

    Returns:
        ndarray[N, M] in [0, 1].
    """
    lt = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])  # [N, M, 2]
    inter = np.clip(rb - lt, 0, None).prod(axis=2)  # [N, M]
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


class SSDAugmentation:
    """The SSD training augmentation.

    Args:
        size: output side (300 or 512).
        mean: per-channel mean in BGR order, 0-255 units.
        std: optional per-channel std in BGR order, 0-255 units.
        max_expand: largest zoom-out factor per side (SSD: 4, i.e. up to 16x the image area).
        crop_samplers: ``"paper"`` (SSD §2.2, Caffe SSD) or ``"ssd_pytorch"``, a key of :data:`CROP_SAMPLERS`:
            the crop rule of :meth:`sample_crop` and its default modes.
        crop_trials: crop rectangles tried per mode (Caffe SSD's max_trials).
        crop_modes: the modes :meth:`sample_crop` uses; default: those of ``crop_samplers``.
        seed: seed of the generator used when ``__call__`` gets no ``rng``.
    """

    def __init__(
        self,
        size: int = 300,
        mean: tuple[float, ...] = CAFFE_MEAN_BGR,
        std: tuple[float, ...] | None = None,
        max_expand: float = 4.0,
        crop_samplers: str = "paper",
        crop_trials: int = 50,
        crop_modes: tuple[float | str | None, ...] | None = None,
        seed: int | None = None,
    ) -> None:
        if crop_samplers not in CROP_SAMPLERS:
            raise ValueError(f"crop_samplers must be one of {sorted(CROP_SAMPLERS)}, got {crop_samplers!r}")
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.inv_std = None if std is None else 1.0 / np.asarray(std, dtype=np.float32)
        self.fill = np.clip(np.round(self.mean), 0, 255).astype(np.uint8)
        self.max_expand = max_expand
        self.crop_samplers = crop_samplers
        self.crop_trials = crop_trials
        self.crop_modes = CROP_SAMPLERS[crop_samplers] if crop_modes is None else crop_modes
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng if rng is None else rng
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        check_sample(image, boxes, labels)
        height, width = image.shape[:2]

        # Geometry first. Expand: the image sits at (left, top) of a canvas up to max_expand times larger.
        left = top = 0
        canvas_w, canvas_h = width, height
        if rng.random() < 0.5:
            ratio = rng.uniform(1.0, self.max_expand)
            canvas_w, canvas_h = int(width * ratio), int(height * ratio)
            left, top = int(rng.uniform(0, canvas_w - width)), int(rng.uniform(0, canvas_h - height))
            boxes = boxes + np.array([left, top, left, top], dtype=np.float32)
        rect, keep = self.sample_crop(boxes, canvas_w, canvas_h, rng)
        x0, y0, x1, y1 = rect
        boxes, labels = boxes[keep], labels[keep]
        boxes = np.clip(boxes, [x0, y0, x0, y0], [x1, y1, x1, y1]) - np.array([x0, y0, x0, y0], dtype=np.float32)

        # The part of the original image inside the crop window, in image coordinates.
        ix0, iy0 = max(x0 - left, 0), max(y0 - top, 0)
        ix1, iy1 = min(x1 - left, width), min(y1 - top, height)
        patch = self.photometric(image[iy0:iy1, ix0:ix1], rng) if ix1 > ix0 and iy1 > iy0 else None
        crop_w, crop_h = x1 - x0, y1 - y0
        flip = rng.random() < 0.5
        if patch is not None and patch.shape[:2] == (crop_h, crop_w):  # the window lies inside the image
            resized = cv2.resize(patch, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            resized = cv2.flip(resized, 1) if flip else resized
        else:  # it reaches into the expand filler: sample the patch directly, the filler is the border
            resized = self._warp(patch, x0 - left, y0 - top, crop_w, crop_h, flip, width, height)

        relative = boxes / np.array([crop_w, crop_h, crop_w, crop_h], dtype=np.float32)
        if flip:
            relative = np.stack([1.0 - relative[:, 2], relative[:, 1], 1.0 - relative[:, 0], relative[:, 3]], axis=1)
        out = resize_normalise(resized, self.mean, self.inv_std, self.size)
        return out, relative.astype(np.float32).reshape(-1, 4), labels

    def _warp(
        self,
        patch: np.ndarray | None,
        window_x: int,
        window_y: int,
        crop_w: int,
        crop_h: int,
        flip: bool,
        width: int,
        height: int,
    ) -> np.ndarray:
        """Resize the window ``[window_x, window_x + crop_w) x [window_y, ...)`` (image coordinates, may reach
        outside the image) to ``size`` x ``size``, the area outside the image being the mean fill.

        Equals resizing the filled, pasted expand canvas (bilinear, pixel centres aligned as cv2.resize),
        up to OpenCV's fixed-point rounding, at the cost of the output alone whatever the expand factor.
        """
        size = self.size
        fill = tuple(float(v) for v in self.fill)
        if patch is None:
            return np.full((size, size, 3), self.fill, dtype=np.uint8)
        # cv2.resize replicates the window's edge pixels; where the patch touches the window's edge, a
        # one-pixel replicated margin does the same here. Elsewhere the border is the fill.
        pad_left, pad_top = int(window_x >= 0), int(window_y >= 0)
        pad_right, pad_bottom = int(window_x + crop_w <= width), int(window_y + crop_h <= height)
        if pad_left or pad_top or pad_right or pad_bottom:
            patch = cv2.copyMakeBorder(patch, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REPLICATE)
        # The (padded) patch starts here in image coordinates.
        px, py = max(window_x, 0) - pad_left, max(window_y, 0) - pad_top
        sx, sy = crop_w / size, crop_h / size
        # Output pixel u samples window x = (u + 0.5) * sx - 0.5 (mirrored: crop_w - 1 - that), i.e. patch
        # x = window x + window_x - px.
        if flip:
            row_x = [-sx, 0.0, crop_w - 0.5 - 0.5 * sx + window_x - px]
        else:
            row_x = [sx, 0.0, 0.5 * sx - 0.5 + window_x - px]
        matrix = np.array([row_x, [0.0, sy, 0.5 * sy - 0.5 + window_y - py]])
        return cv2.warpAffine(
            patch, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=fill,
        )  # fmt: skip

    def sample_crop(
        self, boxes: np.ndarray, width: int, height: int, rng: np.random.Generator
    ) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Draw a crop rectangle of a ``width`` x ``height`` canvas (SSD §2.2 "randomly sample a patch").

        Each mode of ``self.crop_modes`` is a sampler: "whole" gives the whole canvas; the others try up to
        ``crop_trials`` random patches. A patch passes when some object reaches the mode's minimum IoU with
        it (Caffe SSD's SatisfySampleConstraint; ssd.pytorch's own test never rejected anything) and, as in
        ssd.pytorch, some object's centre lies inside it: a crop keeps the objects whose centre it holds
        (Caffe's emit_type CENTER; Caffe keeps a crop that holds none, and then learns nothing from it).

        * ``"paper"`` (Caffe SSD's ssd_pascal.py): each sampler keeps its first passing patch, and one of the
          passing patches and the whole canvas is drawn uniformly (GenerateBatchSamples, then a random
          pick). A patch has a scale s in [0.3, 1] and an aspect ratio a in [0.5, 2] clipped to
          [s^2, 1/s^2], and sides ``s * sqrt(a)`` x ``s / sqrt(a)`` of the canvas' (SampleBBox). In an image
          without objects only the unconstrained sampler (None) can pass.
        * ``"ssd_pytorch"`` (RandomSampleCrop): one mode is drawn at a time; after ``crop_trials``
          rejections another is drawn. A patch has each side in [0.3, 1] of the canvas' and a pixel aspect
          ratio h/w in [0.5, 2]. In an image without objects every mode crops.

        Returns:
            ``(x0, y0, x1, y1)`` integer pixel rectangle, and the bool mask [N] of boxes kept (centre inside).
        """
        if self.crop_samplers == "paper":
            return self._sample_crop_paper(boxes, width, height, rng)
        return self._sample_crop_ssd_pytorch(boxes, width, height, rng)

    def _sample_crop_paper(
        self, boxes: np.ndarray, width: int, height: int, rng: np.random.Generator
    ) -> tuple[tuple[int, int, int, int], np.ndarray]:
        modes = [mode for mode in self.crop_modes if mode != "whole"]
        # Every trial of every sampler at once; a sampler's first passing trial is the one Caffe's loop keeps.
        shape = (len(modes), self.crop_trials)
        scale = rng.uniform(0.3, 1.0, shape)
        aspect = np.clip(rng.uniform(0.5, 2.0, shape), scale**2, 1 / scale**2)  # w and h stay <= 1
        w, h = scale * np.sqrt(aspect), scale / np.sqrt(aspect)  # [S, T], fractions of the canvas
        x_off, y_off = rng.random(shape) * (1 - w), rng.random(shape) * (1 - h)
        rects = np.stack([x_off * width, y_off * height, (x_off + w) * width, (y_off + h) * height], axis=-1)
        rects = np.clip(rects, 0, [width, height, width, height]).astype(np.int64).reshape(-1, 4)  # [S*T, 4]
        x0, y0, x1, y1 = rects.T
        min_iou = np.repeat([-1.0 if mode is None else float(mode) for mode in modes], self.crop_trials)  # [S*T]
        ok = (x1 > x0) & (y1 > y0)  # [S*T]
        if len(boxes) == 0:
            ok &= min_iou < 0  # no object can reach a minimum IoU
            inside = np.zeros((len(rects), 0), dtype=bool)
        else:
            ok &= (min_iou < 0) | (iou_numpy(rects.astype(np.float32), boxes).max(axis=1) >= min_iou)
            inside = _centres_inside(boxes, x0, y0, x1, y1)  # [S*T, N]
            ok &= inside.any(axis=1)
        ok = ok.reshape(shape)  # [S, T]
        found = np.flatnonzero(ok.any(axis=1))  # the samplers that found a patch
        first = found * self.crop_trials + ok[found].argmax(axis=1)  # each one's first patch, a row of rects
        candidates = [-1] * ("whole" in self.crop_modes) + first.tolist()  # -1: the whole canvas
        pick = candidates[int(rng.integers(len(candidates)))] if candidates else -1
        if pick < 0:
            return (0, 0, width, height), np.ones(len(boxes), dtype=bool)
        return (int(x0[pick]), int(y0[pick]), int(x1[pick]), int(y1[pick])), inside[pick]

    def _sample_crop_ssd_pytorch(
        self, boxes: np.ndarray, width: int, height: int, rng: np.random.Generator
    ) -> tuple[tuple[int, int, int, int], np.ndarray]:
        everything = (0, 0, width, height), np.ones(len(boxes), dtype=bool)
        for _ in range(16):  # bounded: with the default modes a "whole" draw ends it with probability 1/6
            mode = self.crop_modes[int(rng.integers(len(self.crop_modes)))]
            if mode == "whole":
                return everything
            # All trials of this mode at once; the first that passes is the one a sequential loop would take.
            trials = self.crop_trials
            w, h = rng.uniform(0.3 * width, width, trials), rng.uniform(0.3 * height, height, trials)
            x0 = (rng.random(trials) * (width - w)).astype(np.int64)
            y0 = (rng.random(trials) * (height - h)).astype(np.int64)
            x1, y1 = (x0 + w).astype(np.int64), (y0 + h).astype(np.int64)
            ok = (h / w >= 0.5) & (h / w <= 2.0) & (x1 > x0) & (y1 > y0)  # [T]
            if len(boxes) == 0:
                inside = np.zeros((trials, 0), dtype=bool)
            else:
                rects = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)  # [T, 4]
                if mode is not None:
                    ok &= iou_numpy(rects, boxes).max(axis=1) >= mode  # [T]
                inside = _centres_inside(boxes, x0, y0, x1, y1)  # [T, N]
                ok &= inside.any(axis=1)
            if ok.any():
                k = int(np.argmax(ok))
                return (int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k])), inside[k]
        return everything

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random brightness (±32), contrast (x0.5-1.5), saturation (x0.5-1.5), hue (±18°) and channel swap.

        Contrast comes before or after the HSV steps with equal chance (SSD's Caffe recipe). Each step
        happens with probability 1/2. Returns a uint8 [h, w, 3] BGR image, which is ``image`` itself when no
        step fired (callers only read it).
        """
        lut = _IDENTITY
        if rng.random() < 0.5:
            lut = np.clip(lut + rng.uniform(-32, 32), 0, 255)
        contrast_first = rng.random() < 0.5
        if contrast_first and rng.random() < 0.5:
            lut = np.clip(lut * rng.uniform(0.5, 1.5), 0, 255)
        image = cv2.LUT(image, lut.astype(np.uint8)) if lut is not _IDENTITY else image

        saturate = rng.random() < 0.5
        alpha = rng.uniform(0.5, 1.5) if saturate else 1.0
        shift_hue = rng.random() < 0.5
        delta = rng.uniform(-18, 18) if shift_hue else 0.0
        if saturate or shift_hue:
            hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)  # uint8 hue is degrees / 2, in [0, 180)
            hue = np.round(np.mod(_IDENTITY + delta / 2, 180))
            hue[180:] = _IDENTITY[180:]  # unused codes
            hsv_lut = np.stack([np.mod(hue, 180), np.clip(_IDENTITY * alpha, 0, 255), _IDENTITY], axis=1)
            hsv = cv2.LUT(hsv, hsv_lut.astype(np.uint8).reshape(256, 1, 3))
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

        if not contrast_first and rng.random() < 0.5:
            image = cv2.LUT(image, np.clip(_IDENTITY * rng.uniform(0.5, 1.5), 0, 255).astype(np.uint8))
        if rng.random() < 0.5:
            order = _CHANNEL_ORDERS[int(rng.integers(len(_CHANNEL_ORDERS)))]
            image = image[:, :, order]
        return image


# Unbiased Teacher's strong augmentation (Liu et al., ICLR 2021, appendix; Adaptive Teacher uses the same) erases
# three rectangles with these (probability, area range, aspect range), each filled with noise.
CUTOUT_STEPS: tuple[tuple[float, tuple[float, float], tuple[float, float]], ...] = (
    (0.7, (0.05, 0.2), (0.3, 3.3)),
    (0.5, (0.02, 0.2), (0.1, 6.0)),
    (0.3, (0.02, 0.2), (0.05, 8.0)),
)


_NO_BOXES = np.zeros((0, 4), dtype=np.float32)
_NO_LABELS = np.zeros(0, dtype=np.int64)


def _listed(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else values.tolist()


class TargetViews:
    """The views of an unlabeled target image for domain adaptation: no boxes in, none out.

    Three kinds of view, returned in the order ``views`` names them:

    * ``"weak"``: the image resized to ``size`` and mirrored with probability 1/2 (the teacher's input).
    * ``"strong"``: the weak view with photometric changes only (SSD's colour distortion, greyscale with
      probability 0.2, a Gaussian blur of sigma 0.1-2 with probability 0.5, and :data:`CUTOUT_STEPS`), so a box
      found on the weak view lies at the same place on the strong one (Adaptive Teacher's weak/strong pair,
      Li et al., CVPR 2022, §3.2). It needs the weak view before it.
    * ``"augmented"``: the source's training augmentation (``augmentation``), without boxes. A domain classifier
      compares it with the augmented source images: both domains are recoloured, expanded, cropped and mirrored
      alike (DA-Faster treats both domains alike; a resized target image beside expanded, cropped and recoloured
      source images lets the classifier learn the augmentation instead). Not exactly alike: without boxes only the
      unconstrained crop sampler applies, so a target image is cropped less often than a source image, whose
      crops also follow its objects.

    Args:
        size, mean, std: as :class:`utils.transforms.BaseTransform`.
        views: the kinds returned, from ``"weak"``, ``"strong"`` and ``"augmented"``.
        flip: mirror the weak view with probability 1/2 (off: the weak view is the test-time input).
        augmentation: the source's :class:`SSDAugmentation`, for ``"augmented"``.

    ``__call__(image, rng)`` takes uint8 [H, W, 3] BGR and returns float32 [V, 3, size, size], V = len(views).
    """

    def __init__(
        self,
        size: int = 300,
        mean: tuple[float, ...] = CAFFE_MEAN_BGR,
        std: tuple[float, ...] | None = None,
        views: tuple[str, ...] = ("weak",),
        flip: bool = True,
        augmentation: SSDAugmentation | None = None,
    ) -> None:
        unknown = sorted(set(views) - {"weak", "strong", "augmented"})
        if unknown or not views:
            raise ValueError(f"target views {list(views)}: give one or more of 'weak', 'strong', 'augmented'")
        if "strong" in views and "weak" not in views[: views.index("strong")]:
            raise ValueError(f"target views {list(views)}: the strong view is made from a weak view before it")
        self.size = size
        self.views = tuple(views)
        self.flip = flip
        self.mean = np.asarray(mean, dtype=np.float32)
        self.inv_std = None if std is None else 1.0 / np.asarray(std, dtype=np.float32)
        if "augmented" in views:
            if augmentation is None:
                raise ValueError("the 'augmented' target view needs the source's augmentation")
            # The augmentation normalises its own output: it must be this object's normalisation.
            theirs = (augmentation.size, augmentation.mean.tolist(), _listed(augmentation.inv_std))
            if theirs != (size, self.mean.tolist(), _listed(self.inv_std)):
                raise ValueError(f"the source's augmentation makes {augmentation.size}-pixel views with mean "
                                 f"{augmentation.mean.tolist()}; these target views need {size} and mean {list(mean)}, "
                                 "with the same std")  # fmt: skip
        self.augmentation = augmentation
        self._distort = SSDAugmentation(size, mean, std)  # its photometric step only

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        outputs: list[np.ndarray] = []
        weak: np.ndarray | None = None
        for kind in self.views:
            if kind == "augmented":
                assert self.augmentation is not None  # checked in __init__
                outputs.append(self.augmentation(image, _NO_BOXES, _NO_LABELS, rng)[0])  # [3, S, S]
                continue
            if kind == "weak":
                weak = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
                if self.flip and rng.random() < 0.5:
                    weak = cv2.flip(weak, 1)
                view = weak
            else:
                assert weak is not None  # __init__ puts a weak view before a strong one
                view = self.strong_view(weak, rng)
            outputs.append(resize_normalise(view, self.mean, self.inv_std, self.size))
        return np.stack(outputs)

    def strong_view(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Photometric changes of a uint8 [h, w, 3] BGR image; no pixel moves."""
        image = self._distort.photometric(image, rng).copy()  # may be ``image`` itself, which stays the weak view
        if rng.random() < 0.2:
            image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        if rng.random() < 0.5:
            image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.1, 2.0))
        height, width = image.shape[:2]
        for probability, (area_low, area_high), (aspect_low, aspect_high) in CUTOUT_STEPS:
            if rng.random() >= probability:
                continue
            area = rng.uniform(area_low, area_high) * height * width
            aspect = math.exp(rng.uniform(math.log(aspect_low), math.log(aspect_high)))
            h = min(height, max(1, int(round(math.sqrt(area * aspect)))))
            w = min(width, max(1, int(round(math.sqrt(area / aspect)))))
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            image[y : y + h, x : x + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        return image
