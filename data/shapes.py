"""A synthetic VOC-format detection dataset of coloured shapes, for the demo, the tests and CPU runs.

Each image is ``size`` x ``size`` with 1-6 objects (circle, square, triangle, star) of 20-150 px, random
colours and rotations, partial overlaps (at most 25% of the smaller box hidden, so every label stays decidable), on a noisy gradient background with line clutter. Everything is
drawn from a generator seeded by (seed, split, index), so the same command writes the same files.

    python -m data.shapes --out data/shapes --train 2000 --test 300 --seed 0

writes ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/{trainval,test}.txt``;
``--video clip.mp4 --train 0 --test 0`` writes only a clip of moving shapes.

    python -m data.shapes --out data/shapes_fog --train 2000 --test 300 --seed 0 --fog 0.02

writes a domain shift that a CPU can show, the shapes' counterpart of Cityscapes -> Foggy Cityscapes: the same
scenes twice, ``clean/`` (the labelled source domain) and ``foggy/`` (the target domain; its test split is the
adaptation test set), with identical annotations and split files, plus ``fog.json`` with the fog's constants. The
scenes there stand on a ground plane (:func:`draw_scene`): far objects sit higher, are smaller, and fade more.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from data.config import SHAPES_CLASSES
from data.voc import write_voc_annotation

MIN_SIZE, MAX_SIZE = 20, 150
MAX_OBJECTS = 6
MAX_COVERED = 0.25  # at most this fraction of the smaller of two boxes may lie under the other
SPLITS = {"trainval": 0, "test": 1, "val": 2}  # each split's images are drawn from a generator of their own

# The fog scenes' ground plane, seen by a level camera (draw_scene). Depths are in metres; sizes in pixels.
HORIZON = 0.3  # the horizon row, as a fraction of the image side from the top
D_NEAR = 24.0  # depth of the ground at the bottom edge of the image
D_MAX = 300.0  # depth of the sky, and the cap of the ground's depth near the horizon
# Extent of an object standing on the bottom edge, before the MAX_SIZE clip. With D_NEAR it puts the farthest objects,
# SCENE_MIN_SIZE across, at S_NEAR * D_NEAR / SCENE_MIN_SIZE = 127.5 m, where beta 0.02 (Foggy Cityscapes' densest fog)
# leaves t = exp(-2.55) ~ 0.08 (a contrast of 120 grey levels becomes 9: faint, as far cars are in Foggy Cityscapes),
# objects of 60 px t ~ 0.26 and the nearest (150 px, 27 m) t ~ exp(-0.54) ~ 0.58.
S_NEAR = 170.0
SCENE_MIN_SIZE = 32  # the smallest (farthest) objects of a scene, larger than draw_sample's, so fog, not size, decides
SIZE_JITTER = 0.15  # objects' real sizes differ: each extent is the perspective's times U(1 - 0.15, 1 + 0.15)
AIRLIGHT_RANGE = (0.75, 0.95)  # the atmospheric light's grey level, a fraction of 255, drawn once per image
FOG_GENERATOR_VERSION = 5  # recorded in fog.json; raise it whenever draw_scene or add_fog draws differently
_AIRLIGHT_STREAM = 7  # a fourth seed word: the airlight has its own generator, so clean scenes ignore the fog


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


def _outline(kind: str, cx: float, cy: float, extent: float, angle: float) -> tuple[np.ndarray | None, np.ndarray]:
    """A shape's polygon (as :func:`_polygon`; None for a circle) and its exact box (ndarray[4], pixel xyxy)."""
    polygon = _polygon(kind, cx, cy, extent, angle)
    if polygon is None:
        box = np.array([cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2])
    else:
        box = np.concatenate([polygon.min(0), polygon.max(0)])
    return polygon, box


def _contrasting_colour(
    rng: np.random.Generator, image: np.ndarray, box: np.ndarray, also_from: np.ndarray | None = None
) -> tuple[float, float, float]:
    """A fill colour far (>= 120 in BGR) from the mean of ``image`` (uint8 [H, W, 3]) under ``box`` (pixel xyxy), so
    every object stays visible, and as far from ``also_from`` (ndarray[3] BGR) when given."""
    x0, y0, x1, y1 = (int(v) for v in np.clip(box, 0, image.shape[0] - 1))
    under = image[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).mean(0)
    avoid = [under] if also_from is None else [under, also_from]
    colour = rng.uniform(0, 255, 3)
    while min(np.linalg.norm(colour - other) for other in avoid) < 120:
        colour = rng.uniform(0, 255, 3)
    return tuple(float(c) for c in colour)


def _paint(
    canvas: np.ndarray, polygon: np.ndarray | None, cx: float, cy: float, extent: float, fill: tuple[float, ...]
) -> None:
    """Fill a shape from :func:`_outline` into ``canvas`` in place, anti-aliased at 1/16 px: an image (uint8
    [H, W, 3], ``fill`` BGR) or a coverage mask (uint8 [H, W], ``fill`` = (255,))."""
    if polygon is None:
        centre = (int(round(cx * 16)), int(round(cy * 16)))
        cv2.circle(canvas, centre, int(round(extent / 2 * 16)), fill, -1, cv2.LINE_AA, shift=4)
    else:
        cv2.fillPoly(canvas, [np.round(polygon * 16).astype(np.int32)], fill, cv2.LINE_AA, shift=4)


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
            polygon, box = _outline(SHAPES_CLASSES[label], cx, cy, extent, angle)
            if all(_overlap_over_smaller(box, other) <= MAX_COVERED for other in boxes):
                break
        else:
            continue
        _paint(image, polygon, cx, cy, extent, _contrasting_colour(rng, image, box))
        boxes.append(box)
        labels.append(label)
    boxes_array = np.clip(np.array(boxes, np.float32).reshape(-1, 4), 0, size - 1)
    return image, boxes_array, np.array(labels, np.int64)


class _Standing(NamedTuple):
    """A shape placed in a ground-plane scene, before it is painted."""

    bottom: float  # the row its box bottom, and so its foot on the ground, lies at
    label: int
    cx: float
    cy: float
    extent: float
    polygon: np.ndarray | None
    box: np.ndarray  # [4] pixel xyxy


def ground_depth(rows: np.ndarray | float, size: int) -> np.ndarray:
    """Depth of what a level camera sees at image row ``rows`` of a ``size``-pixel image of flat ground.

    A ground point at depth d projects ``f * h / d`` rows below the horizon row ``y_h = HORIZON * size`` (f the focal
    length in pixels, h the camera's height), so d(y) = D_NEAR * (size - y_h) / (y - y_h), D_NEAR at the bottom edge.

    Args:
        rows (ndarray[...] or float): row coordinates, 0 at the top edge.

    Returns:
        ndarray[...] float64 metres in (0, D_MAX]; D_MAX (the sky) at and above the horizon.
    """
    horizon = HORIZON * size
    below = np.asarray(rows, np.float64) - horizon
    depth = D_NEAR * (size - horizon) / np.maximum(below, 1e-9)  # the floor only keeps the sky rows finite
    return np.where(below > 0, np.minimum(depth, D_MAX), D_MAX)


def draw_scene(rng: np.random.Generator, size: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw one scene of shapes standing on a ground plane, with its depth map, for :func:`add_fog`.

    An object whose box bottom is at row y_b stands at depth d(y_b) (:func:`ground_depth`) over its whole drawn
    area, and perspective scales it: extent = S_NEAR * D_NEAR / d(y_b) times U(1 - SIZE_JITTER, 1 + SIZE_JITTER),
    clipped to [SCENE_MIN_SIZE, MAX_SIZE] and to y_b - y_h, so every box lies below the horizon (an object no taller
    than the camera is high; this clip binds only on images under 280 px). Bottoms are drawn where
    the perspective extent is at least SCENE_MIN_SIZE, hence no object lies beyond S_NEAR * D_NEAR / SCENE_MIN_SIZE metres.
    Objects are painted far to near, so a nearer one hides what it covers, and as in :func:`draw_sample` at most
    MAX_COVERED of the smaller of two boxes lies under the other.

    Returns:
        image (uint8 [size, size, 3] BGR, no fog), boxes (float32 [N, 4] 0-based pixel xyxy, the shapes' exact
        extents, far to near), labels (int64 [N], indices into ``SHAPES_CLASSES``) with N in 1..6, and depth
        (float32 [size, size] metres in (0, D_MAX]).
    """
    image = _background(rng, size)
    horizon = HORIZON * size
    depth = np.repeat(ground_depth(np.arange(size), size)[:, None], size, axis=1).astype(np.float32)  # [H, W]
    # The farthest bottom row: where the perspective extent falls to SCENE_MIN_SIZE, or SCENE_MIN_SIZE below the horizon.
    top_bottom = horizon + max(SCENE_MIN_SIZE, (size - horizon) * SCENE_MIN_SIZE / S_NEAR)
    placed: list[_Standing] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(30):
            label = int(rng.integers(len(SHAPES_CLASSES)))
            bottom = rng.uniform(top_bottom, size - 2)
            perspective = S_NEAR * D_NEAR / float(ground_depth(bottom, size))
            extent = perspective * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
            extent = float(np.clip(extent, SCENE_MIN_SIZE, min(MAX_SIZE, bottom - horizon)))
            angle = rng.uniform(0, 2 * math.pi) if SHAPES_CLASSES[label] != "square" else rng.uniform(-0.35, 0.35)
            half = extent / 2 + 2
            cx = rng.uniform(half, size - half)
            # Outline the shape once at cy = 0 to learn how far its box reaches below its centre, then stand it on
            # the ground: its box bottom, not its centre, is what lies at row `bottom`.
            _, box = _outline(SHAPES_CLASSES[label], cx, 0.0, extent, angle)
            cy = bottom - box[3]
            polygon, box = _outline(SHAPES_CLASSES[label], cx, cy, extent, angle)
            if all(_overlap_over_smaller(box, other.box) <= MAX_COVERED for other in placed):
                break
        else:
            continue
        placed.append(_Standing(bottom, label, cx, cy, extent, polygon, box))
    placed.sort(key=lambda shape: shape.bottom)  # far (small bottom row) to near
    mask = np.zeros((size, size), np.uint8)
    airlight_grey = np.full(3, np.mean(AIRLIGHT_RANGE) * 255)
    for shape in placed:
        # Fog pulls a far object and the farther ground behind it towards the airlight, by different amounts; a
        # colour near the airlight's grey would then fade into the ground, so it keeps away from that grey too.
        fill = _contrasting_colour(rng, image, shape.box, airlight_grey)
        _paint(image, shape.polygon, shape.cx, shape.cy, shape.extent, fill)
        mask[:] = 0
        _paint(mask, shape.polygon, shape.cx, shape.cy, shape.extent, (255,))
        depth[mask > 127] = ground_depth(shape.bottom, size)  # pixels mostly covered by the shape take its depth
    boxes = np.clip(np.array([shape.box for shape in placed], np.float32).reshape(-1, 4), 0, size - 1)
    return image, boxes, np.array([shape.label for shape in placed], np.int64), depth


def add_fog(image: np.ndarray, depth: np.ndarray, beta: float, airlight: float) -> np.ndarray:
    """Render homogeneous fog with Koschmieder's law, as Foggy Cityscapes does (Sakaridis et al., "Semantic Foggy
    Scene Understanding with Synthetic Data", IJCV 2018):

        I = J * t + A * (1 - t),  t = exp(-beta * d)

    Args:
        image (ndarray[H, W, 3] uint8): J, the fog-free image.
        depth (ndarray[H, W] float): d, the distance from the camera in metres, >= 0.
        beta: the attenuation coefficient in 1/m (Foggy Cityscapes: 0.005, 0.01, 0.02; visibility = ln(20) / beta).
        airlight: A, the atmospheric light's grey level in [0, 255], the same in every channel.

    Returns:
        ndarray[H, W, 3] uint8: I, rounded and clipped; equal to ``image`` where t = 1, ``airlight`` where t -> 0.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"add_fog needs a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
    if depth.shape != image.shape[:2]:
        raise ValueError(
            f"add_fog needs a depth map of the image's size {list(image.shape[:2])}, got {list(depth.shape)}"
        )
    transmission = np.exp(-beta * depth.astype(np.float64))[..., None]  # [H, W, 1]
    foggy = image.astype(np.float64) * transmission + airlight * (1 - transmission)  # [H, W, 3]
    return np.clip(np.round(foggy), 0, 255).astype(np.uint8)


def fog_airlight(seed: int, split: str, index: int) -> float:
    """The atmospheric light of image ``index`` of ``split``: a grey level in ``AIRLIGHT_RANGE`` * 255, drawn from its
    own generator so that the clean scenes, drawn from (seed, split, index), are the same for every fog."""
    rng = np.random.default_rng((seed, SPLITS[split], index, _AIRLIGHT_STREAM))
    return float(rng.uniform(*AIRLIGHT_RANGE) * 255)


def generate(
    out: str | Path,
    num_train: int,
    num_test: int,
    seed: int = 0,
    size: int = 300,
    fog: float | None = None,
    num_val: int = 0,
) -> dict[str, int]:
    """Write the dataset under ``out``; returns the number of objects per class.

    Without ``fog``, one VOC folder of :func:`draw_sample` images. With ``fog`` (beta in 1/m), two folders with the
    same :func:`draw_scene` scenes, annotations and split files: ``out/clean`` and ``out/foggy`` (the scenes under
    :func:`add_fog`), and ``out/fog.json`` with beta and the constants that made them. ``num_val`` images of a
    ``val`` split (other scenes than trainval's and test's): a labelled split of the target for a benchmark's
    choices, so that the test split is read for the final table only.
    """
    out = Path(out)
    roots = [out] if fog is None else [out / "clean", out / "foggy"]
    for root in roots:
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (root / sub).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(SHAPES_CLASSES, 0)
    for split, count in (("trainval", num_train), ("test", num_test), ("val", num_val)):
        if split == "val" and not count:
            continue
        ids = []
        for index in range(count):
            rng = np.random.default_rng((seed, SPLITS[split], index))
            if fog is None:
                image, boxes, labels = draw_sample(rng, size)
                images = [image]
            else:
                image, boxes, labels, depth = draw_scene(rng, size)
                images = [image, add_fog(image, depth, fog, fog_airlight(seed, split, index))]
            image_id = f"{split}_{index:06d}"
            objects = [(SHAPES_CLASSES[label], box) for label, box in zip(labels, boxes, strict=True)]
            for root, picture in zip(roots, images, strict=True):
                path = root / "JPEGImages" / f"{image_id}.jpg"
                if not cv2.imwrite(str(path), picture, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                    raise OSError(f"could not write {path}")
                write_voc_annotation(
                    root / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", size, size, objects, folder="shapes"
                )
            for label in labels:
                counts[SHAPES_CLASSES[label]] += 1
            ids.append(image_id)
        for root in roots:
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    for root in roots:
        (root / "classes.txt").write_text("".join(f"{name}\n" for name in SHAPES_CLASSES))
    if fog is not None:
        (out / "fog.json").write_text(json.dumps(fog_settings(fog, seed, size), indent=2) + "\n")
    return counts


def fog_settings(beta: float, seed: int, size: int) -> dict[str, object]:
    """What ``fog.json`` records: enough to state the fog in a table and to redraw the images."""
    return {
        "beta_per_m": beta,
        "visibility_m": math.log(20) / beta,  # the meteorological optical range, where contrast falls to 5%
        "law": "I = J*t + A*(1 - t), t = exp(-beta*d) (Koschmieder; Sakaridis et al., IJCV 2018)",
        "airlight_range": list(AIRLIGHT_RANGE),  # fractions of 255, one grey level per image
        "horizon": HORIZON,
        "d_near_m": D_NEAR,
        "d_max_m": D_MAX,
        "s_near_px": S_NEAR,
        "size_jitter": SIZE_JITTER,
        "object_size_px": [SCENE_MIN_SIZE, MAX_SIZE],
        "generator_version": FOG_GENERATOR_VERSION,
        "seed": seed,
        "size": size,
    }


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
    parser.add_argument("--val", type=NON_NEGATIVE_INT, default=0,
                        help="images in ImageSets/Main/val.txt (a labelled split for choices; with --fog, the target's)")  # fmt: skip
    parser.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    parser.add_argument("--size", type=bounded(int, MAX_SIZE + 8, MAX_IMAGE_SIZE), default=300,
                        help="image side in pixels")  # fmt: skip
    parser.add_argument("--fog", type=bounded(float, 0, 1, low_open=True), default=None, metavar="BETA",
                        help="write OUT/clean and OUT/foggy, the same ground-plane scenes without and with fog of "
                             "this attenuation (1/m; Foggy Cityscapes uses 0.005, 0.01, 0.02)")  # fmt: skip
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
        counts = generate(args.out, args.train, args.test, args.seed, args.size, args.fog, args.val)
        if args.fog is None:
            print(f"wrote {args.train} train and {args.test} test images to {args.out}; objects: {counts}")
        else:
            print(
                f"wrote {args.train} train, {args.val} val and {args.test} test images each to {out / 'clean'} and "
                f"{out / 'foggy'} (fog beta {args.fog}, {out / 'fog.json'}); objects in each: {counts}"
            )
    if args.video:
        print(f"wrote {write_video(args.video, args.frames, seed=args.seed)} ({args.frames} frames)")
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
