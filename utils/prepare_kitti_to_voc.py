"""Convert KITTI's 2D object training set to a VOC-format folder, the source of KITTI -> Cityscapes.

Reads ``training/label_2/<id>.txt`` and ``training/image_2/<id>.png`` (``data_object_label_2.zip`` and
``data_object_image_2.zip`` unzipped into ``--kitti_root``; a root that holds ``label_2/`` and ``image_2/`` directly
works too). Each label line has 15 fields, ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry``, where
``x1 y1 x2 y2`` are the 2D box's left, top, right and bottom in 0-based pixels (floats). Writes

- ``Annotations/<id>.xml``: every object but ``DontCare`` (regions left unlabelled), named by its KITTI type (``Car``,
  ``Van``, ...); the box clipped to the image and written as VOC's 1-based integer corners. What a preset keeps of
  them is the preset's choice (``--dataset KITTI``: Car only, data/config.py).
- ``JPEGImages/<id>.png``: the images, copied unchanged.
- ``ImageSets/Main/trainval.txt``: every labelled image (KITTI's test images have no labels).

A malformed line stops the conversion, before anything is written, with one error naming ``file:line``. Rerunning is
safe: files already in place are kept.

    python -m utils.prepare_kitti_to_voc --kitti_root data/kitti --out data/kitti_in_voc
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from data.base import image_size
from data.config import KITTI_TYPES
from data.voc import write_voc_annotation
from utils.cli import run_cli
from utils.prepare_cityscapes_to_voc import place_image

logger = logging.getLogger(__name__)

LABEL_FIELDS = ("type", "truncated", "occluded", "alpha", "x1", "y1", "x2", "y2", "h", "w", "l", "x", "y", "z", "ry")
IGNORED_TYPE = "DontCare"  # regions where objects were not labelled: no object, no box
IMAGE_SET = "trainval"

Box = tuple[float, float, float, float]


@dataclass
class Conversion:
    """What :func:`convert` wrote: the image ids, the objects per KITTI type, and the labels whose image is missing."""

    ids: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    missing: list[Path] = field(default_factory=list)


def parse_label_line(line: str, path: Path, number: int) -> tuple[str, Box] | None:
    """One label line as ``(type, (x1, y1, x2, y2))`` in 0-based pixels, None for a ``DontCare`` line.

    Raises:
        ValueError: not 15 fields, an unknown type, a non-numeric field, or a box whose right or bottom lies before
            its left or top; the message names ``path:number``.
    """
    words = line.split()
    where = f"{path}:{number}"
    if len(words) != len(LABEL_FIELDS):
        raise ValueError(f"{where}: {len(words)} fields, but a KITTI label line has {len(LABEL_FIELDS)} "
                         f"({' '.join(LABEL_FIELDS)}); fix or remove the line")  # fmt: skip
    kind = words[0]
    if kind not in KITTI_TYPES:
        raise ValueError(f"{where}: unknown object type {kind!r}; KITTI's are {', '.join(KITTI_TYPES)}")
    try:
        values = [float(word) for word in words[1:]]
    except ValueError:
        raise ValueError(f"{where}: a field is not a number ({line.strip()!r}); fix or remove the line") from None
    if kind == IGNORED_TYPE:
        return None
    x1, y1, x2, y2 = values[3:7]
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{where}: box ({x1}, {y1}, {x2}, {y2}) ends before it starts (fields 5-8 are left, top, "
                         "right, bottom); fix or remove the line")  # fmt: skip
    return kind, (x1, y1, x2, y2)


def read_label_file(path: Path) -> list[tuple[str, Box]]:
    """The objects of a ``label_2`` file but ``DontCare``: ``(type, (x1, y1, x2, y2))``, 0-based pixels as KITTI
    writes them. Blank lines are skipped."""
    objects = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() and (found := parse_label_line(line, path, number)) is not None:
            objects.append(found)
    return objects


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` clipped to the pixels of a ``width`` x ``height`` image, 0..W-1 and 0..H-1 (VOC's convention)."""
    x1, y1, x2, y2 = box
    return max(x1, 0.0), max(y1, 0.0), min(x2, width - 1.0), min(y2, height - 1.0)


def training_folders(kitti_root: Path) -> tuple[Path, Path]:
    """``(label_2, image_2)`` under ``kitti_root/training`` or ``kitti_root`` itself.

    Raises:
        FileNotFoundError: neither holds a ``label_2/`` folder.
    """
    for base in (kitti_root / "training", kitti_root):
        if (base / "label_2").is_dir():
            return base / "label_2", base / "image_2"
    raise FileNotFoundError(f"{kitti_root / 'training' / 'label_2'} does not exist; unzip data_object_label_2.zip and "
                            "data_object_image_2.zip under --kitti_root")  # fmt: skip


def convert(kitti_root: Path, out: Path) -> Conversion:
    """Write ``out``'s Annotations/, JPEGImages/ and ImageSets/Main/trainval.txt from KITTI's training set.

    Raises:
        FileNotFoundError: no label folder; ValueError: a malformed label line (naming ``file:line``).
    """
    label_dir, image_dir = training_folders(kitti_root)
    labels = sorted(label_dir.glob("*.txt"))
    if not labels:
        raise FileNotFoundError(f"{label_dir} holds no label files (<id>.txt); unzip data_object_label_2.zip there")
    # Every line is checked before anything is written, so a malformed one leaves no half-converted folder.
    objects_of = {label.stem: read_label_file(label) for label in labels}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    done = Conversion()
    for label in tqdm(labels, desc="KITTI", unit="img"):
        objects = objects_of[label.stem]
        image = image_dir / f"{label.stem}.png"
        if not image.is_file():
            done.missing.append(image)
            continue
        width, height = image_size(image)
        place_image(image, out / "JPEGImages" / image.name)
        boxes = [(kind, clip_box(box, width, height)) for kind, box in objects]
        write_voc_annotation(
            out / "Annotations" / f"{label.stem}.xml", image.name, width, height, boxes, folder="KITTI"
        )
        done.ids.append(label.stem)
        done.counts.update(kind for kind, _ in objects)
    (out / "ImageSets" / "Main" / f"{IMAGE_SET}.txt").write_text("".join(f"{i}\n" for i in done.ids))
    return done


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert KITTI's 2D object training set to a VOC-format folder.")
    parser.add_argument("--kitti_root", "--kitti-root", required=True, type=Path,
                        help="folder holding training/label_2/ and training/image_2/")  # fmt: skip
    parser.add_argument("--out", "--out_dir", "--out-dir", dest="out", required=True, type=Path,
                        help="the VOC-format folder to write (e.g. data/kitti_in_voc)")  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> int:
    done = convert(args.kitti_root, args.out)
    per_type = ", ".join(f"{kind} {done.counts[kind]}" for kind in KITTI_TYPES if kind != IGNORED_TYPE)
    print(f"{args.out}: {len(done.ids)} images in ImageSets/Main/{IMAGE_SET}.txt; objects: {per_type} "
          f"({IGNORED_TYPE} regions not written)")  # fmt: skip
    if done.missing:
        print(f"{len(done.missing)} image(s) missing, left out of the image set:", file=sys.stderr)
        for path in done.missing:
            print(f"  {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
