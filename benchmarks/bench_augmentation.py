"""(f) SSDAugmentation images/s on one core, 500x375 input, against a straightforward per-step pipeline.

The baseline is the classic implementation (ssd.pytorch's structure): float32 image, each step a full
pass, HSV on the whole image, the whole expand canvas built then cropped. It makes the same random choices
(the same crop sampler, --crop_samplers, default the paper's), so both do the same augmentation.

    python -m benchmarks.bench_augmentation --threads 1
    python -m benchmarks.bench_augmentation --threads 1 --crop_samplers ssd_pytorch
"""

from __future__ import annotations

import cv2
import numpy as np

from benchmarks.common import get_args_parser, measure, report, setup
from utils.augmentations import CROP_SAMPLERS, SSDAugmentation


class PerStepAugmentation:
    """The straightforward pipeline: photometric (float32, whole image), expand, crop, mirror, resize, mean."""

    def __init__(
        self, size: int = 300, mean: tuple[float, ...] = (104.0, 117.0, 123.0), crop_samplers: str = "paper"
    ) -> None:
        self.size = size
        self.mean = np.array(mean, np.float32)
        # Only its crop sampler, for identical crop semantics.
        self.sampler = SSDAugmentation(size, crop_samplers=crop_samplers)

    def __call__(self, image, boxes, labels, rng):
        image = image.astype(np.float32)
        if rng.random() < 0.5:
            image += rng.uniform(-32, 32)
        contrast_first = rng.random() < 0.5
        if contrast_first and rng.random() < 0.5:
            image *= rng.uniform(0.5, 1.5)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        if rng.random() < 0.5:
            image[:, :, 1] *= rng.uniform(0.5, 1.5)
        if rng.random() < 0.5:
            image[:, :, 0] = np.mod(image[:, :, 0] + rng.uniform(-18, 18), 360.0)
        image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
        if not contrast_first and rng.random() < 0.5:
            image *= rng.uniform(0.5, 1.5)
        if rng.random() < 0.5:
            image = image[:, :, rng.permutation(3)]
        height, width = image.shape[:2]
        if rng.random() < 0.5:
            ratio = rng.uniform(1, 4)
            left, top = int(rng.uniform(0, width * ratio - width)), int(rng.uniform(0, height * ratio - height))
            canvas = np.empty((int(height * ratio), int(width * ratio), 3), np.float32)
            canvas[:, :] = self.mean
            canvas[top : top + height, left : left + width] = image
            image, boxes = canvas, boxes + [left, top, left, top]
        (x0, y0, x1, y1), keep = self.sampler.sample_crop(boxes, image.shape[1], image.shape[0], rng)
        image = image[y0:y1, x0:x1]
        boxes = np.clip(boxes[keep], [x0, y0, x0, y0], [x1, y1, x1, y1]) - [x0, y0, x0, y0]
        if rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = np.stack([(x1 - x0) - boxes[:, 2], boxes[:, 1], (x1 - x0) - boxes[:, 0], boxes[:, 3]], 1)
        boxes = boxes / [x1 - x0, y1 - y0, x1 - x0, y1 - y0]
        image = cv2.resize(np.ascontiguousarray(image), (self.size, self.size)) - self.mean
        return np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)), boxes, labels[keep]


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--crop_samplers", choices=sorted(CROP_SAMPLERS), default="paper")
    parser.set_defaults(threads=1, number=200, rounds=7)
    args = parser.parse_args()
    device = setup(args)
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (9, 9), 3)  # photo-like, not white noise
    boxes = np.array([[48, 240, 195, 371], [8, 12, 352, 498 - 150], [300, 50, 480, 200]], np.float32)
    labels = np.array([11, 14, 6])
    fused = SSDAugmentation(300, crop_samplers=args.crop_samplers)
    per_step = PerStepAugmentation(300, crop_samplers=args.crop_samplers)
    rngs = {"SSDAugmentation": np.random.default_rng(1), "per-step baseline": np.random.default_rng(1)}
    results = measure(
        {
            "per-step baseline": lambda: per_step(image, boxes, labels, rngs["per-step baseline"]),
            "SSDAugmentation": lambda: fused(image, boxes, labels, rng=rngs["SSDAugmentation"]),
        },
        rounds=args.rounds,
        warmup=args.warmup,
        number=args.number,
    )
    report("augmentation", results, "per-step baseline", args, device)


if __name__ == "__main__":
    main()
