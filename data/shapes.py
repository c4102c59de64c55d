"""A synthetic VOC-format detection dataset of coloured shapes, for the demo, the tests and CPU runs.

Each image is ``size`` x ``size`` with 1-6 objects (circle, square, triangle, star) of 20-150 px, random
colours and rotations, partial overlaps (at most 25% of the smaller box hidden, so every label stays decidable), on a noisy gradient background with line clutter. Everything is
drawn from a generator seeded by (seed, split, index), so the same command writes the same files.

    python -m data.shapes --out data/shapes --train 2000 --test 300 --seed 0

writes ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/{trainval,test}.txt``;
``--video clip.mp4 --train 0 --test 0`` writes only a clip of moving shapes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from data.config import SHAPES_CLASSES
from data.voc import write_voc_annotation

MIN_SIZE, MAX_SIZE = 20, 150
MAX_OBJECTS = 6
MAX_COVERED = 0.25  # at most this fraction of the smaller of two boxes may lie under the other
SPLITS = {"trainval": 0, "test": 1}


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray | None:
    """Vertices [V, 2] of a shape centred on its box at (cx, cy), whose box's longer side is ``size``;
    None for a circle."""
    if kind == "circle":
        return None
    if kind == "square":
        radius, corners = size / math.sqrt(2), [math.pi / 4 + k * math.pi / 2 for k in range(4)]
        points = [(radius * math.cos(a + angle), radius * math.sin(a + angle)) for a in corners]
    elif kind == "triangle":
        radius = size / math.sqrt(3)
        points = [
            (radius * math.cos(a + angle), radius * math.sin(a + angle))
            for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        ]
    elif kind == "star":
        outer, inner = size / 2, size / 2 * 0.45
        points = [
            ((outer if k % 2 == 0 else inner) * math.cos(-math.pi / 2 + k * math.pi / 5 + angle),
             (outer if k % 2 == 0 else inner) * math.sin(-math.pi / 2 + k * math.pi / 5 + angle))
            for k in range(10)
        ]  # fmt: skip
    else:
        raise ValueError(f"unknown shape {kind!r}")
    vertices = np.array(points, np.float64)
    low, high = vertices.min(0), vertices.max(0)
    vertices = (vertices - (low + high) / 2) * (size / (high - low).max())  # rotation changes the extent
    return vertices + [cx, cy]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-colour gradient with Gaussian noise and random line clutter, uint8 [size, size, 3]."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0, 1, size)
    t = np.clip(0.5 + (np.cos(theta) * (ramp[None, :] - 0.5) + np.sin(theta) * (ramp[:, None] - 0.5)), 0, 1)
    image = c0 + (c1 - c0) * t[..., None]
    image += rng.normal(0, rng.uniform(4, 18), image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 7))):
        p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(
            image, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, int(rng.integers(1, 4)), cv2.LINE_AA
        )
    return image


def _overlap_over_smaller(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area, not IoU: it bounds how much of either shape is hidden.

    Args:
        a, b (ndarray[4]): pixel xyxy.

    Returns:
        float in [0, 1]; 1 when one box lies inside the other, whatever their sizes.
    """
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def draw_sample(rng: np.random.Generator, size: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image.

    Returns:
        image (uint8 [size, size, 3] BGR), boxes (float [N, 4] 0-based pixel xyxy, the shapes' exact extents)
        and labels (int64 [N], indices into ``SHAPES_CLASSES``), N in 1..6.
    """
    image = _background(rng, size)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(30):
            label = int(rng.integers(len(SHAPES_CLASSES)))
            extent = rng.uniform(MIN_SIZE, MAX_SIZE)
            angle = rng.uniform(0, 2 * math.pi) if SHAPES_CLASSES[label] != "square" else rng.uniform(-0.35, 0.35)
            half = extent / 2 + 2
            cx, cy = rng.uniform(half, size - half), rng.uniform(half, size - half)
            polygon = _polygon(SHAPES_CLASSES[label], cx, cy, extent, angle)
            if polygon is None:
                box = np.array([cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2])
            else:
                box = np.concatenate([polygon.min(0), polygon.max(0)])
            if all(_overlap_over_smaller(box, other) <= MAX_COVERED for other in boxes):
                break
        else:
            continue
        # A colour far from the background under the shape, so every object stays visible.
        x0, y0, x1, y1 = (int(v) for v in np.clip(box, 0, size - 1))
        under = image[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).mean(0)
        colour = rng.uniform(0, 255, 3)
        while np.linalg.norm(colour - under) < 120:
            colour = rng.uniform(0, 255, 3)
        fill = tuple(float(c) for c in colour)
        if polygon is None:
            centre = (int(round(cx * 16)), int(round(cy * 16)))
            cv2.circle(image, centre, int(round(extent / 2 * 16)), fill, -1, cv2.LINE_AA, shift=4)
        else:
            cv2.fillPoly(image, [np.round(polygon * 16).astype(np.int32)], fill, cv2.LINE_AA, shift=4)
        boxes.append(box)
        labels.append(label)
    boxes_array = np.clip(np.array(boxes, np.float32).reshape(-1, 4), 0, size - 1)
    return image, boxes_array, np.array(labels, np.int64)


def generate(out: str | Path, num_train: int, num_test: int, seed: int = 0, size: int = 300) -> dict[str, int]:
    """Write the dataset under ``out``; returns the number of objects per class."""
    out = Path(out)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(SHAPES_CLASSES, 0)
    for split, count in (("trainval", num_train), ("test", num_test)):
        ids = []
        for index in range(count):
            rng = np.random.default_rng((seed, SPLITS[split], index))
            image, boxes, labels = draw_sample(rng, size)
            image_id = f"{split}_{index:06d}"
            if not cv2.imwrite(str(out / "JPEGImages" / f"{image_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f"could not write {out / 'JPEGImages' / image_id}.jpg")
            objects = [(SHAPES_CLASSES[label], box) for label, box in zip(labels, boxes, strict=True)]
            write_voc_annotation(
                out / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", size, size, objects, folder="shapes"
            )
            for label in labels:
                counts[SHAPES_CLASSES[label]] += 1
            ids.append(image_id)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in SHAPES_CLASSES))
    return counts


def write_video(
    path: str | Path, num_frames: int = 60, fps: float = 12.0, width: int = 480, height: int = 320, seed: int = 0
) -> Path:
    """A clip of 3-5 shapes gliding and turning over a noisy background, bouncing off the borders (mp4)."""
    rng = np.random.default_rng((seed, 2))
    background = _background(rng, max(width, height))[:height, :width]
    objects = []
    for _ in range(int(rng.integers(3, 6))):
        extent = rng.uniform(40, 110)
        objects.append({
            "kind": SHAPES_CLASSES[int(rng.integers(len(SHAPES_CLASSES)))],
            "extent": extent,
            "xy": rng.uniform([extent, extent], [width - extent, height - extent]),
            "velocity": rng.uniform(-6, 6, 2),
            "angle": rng.uniform(0, 2 * math.pi),
            "spin": rng.uniform(-0.08, 0.08),
            "colour": tuple(float(c) for c in rng.uniform(0, 255, 3)),
        })  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for _ in range(num_frames):
            frame = background.copy()
            for obj in objects:
                half = obj["extent"] / 2
                for axis, limit in ((0, width), (1, height)):  # bounce off the borders
                    if not half <= obj["xy"][axis] + obj["velocity"][axis] <= limit - half:
                        obj["velocity"][axis] *= -1
                obj["xy"] = obj["xy"] + obj["velocity"]
                obj["angle"] += obj["spin"] if obj["kind"] != "square" else 0.0
                polygon = _polygon(obj["kind"], *obj["xy"], obj["extent"], obj["angle"])
                if polygon is None:
                    centre = tuple(int(round(v * 16)) for v in obj["xy"])
                    cv2.circle(frame, centre, int(round(half * 16)), obj["colour"], -1, cv2.LINE_AA, shift=4)
                else:
                    cv2.fillPoly(frame, [np.round(polygon * 16).astype(np.int32)], obj["colour"], cv2.LINE_AA, shift=4)
            video.write(frame)
    finally:
        video.release()
    return path


MAX_IMAGE_SIZE = 4096  # larger sides only exhaust memory; SSD resizes every image to 300 or 512 anyway


def get_args_parser() -> argparse.ArgumentParser:
    from utils.cli import NON_NEGATIVE_INT, POSITIVE_INT, bounded

    parser = argparse.ArgumentParser(description="Write the synthetic shapes dataset in VOC format.")
    parser.add_argument("--out", default="data/shapes", help="output folder (must be empty or new)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    parser.add_argument("--train", type=NON_NEGATIVE_INT, default=2000, help="images in ImageSets/Main/trainval.txt")
    parser.add_argument("--test", type=NON_NEGATIVE_INT, default=300, help="images in ImageSets/Main/test.txt")
    parser.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    parser.add_argument("--size", type=bounded(int, MAX_SIZE + 8, MAX_IMAGE_SIZE), default=300,
                        help="image side in pixels")  # fmt: skip
    parser.add_argument("--video", default=None, help="also write a clip of moving shapes to this .mp4 file")
    parser.add_argument("--frames", type=POSITIVE_INT, default=60, help="frames of the --video clip (12 fps)")
    return parser


def main(args: argparse.Namespace) -> int:
    if not (args.train or args.test or args.video):
        raise ValueError("nothing to write: give --train and/or --test above 0, or --video")
    out = Path(args.out)
    if (args.train or args.test) and not args.overwrite:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a folder")
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(
                f"--out {out} is not empty; it may hold a dataset. Choose a new folder, or pass --overwrite to replace "
                "same-named files there"
            )
    if args.train or args.test:
        counts = generate(args.out, args.train, args.test, args.seed, args.size)
        print(f"wrote {args.train} train and {args.test} test images to {args.out}; objects: {counts}")
    if args.video:
        print(f"wrote {write_video(args.video, args.frames, seed=args.seed)} ({args.frames} frames)")
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
