"""Convert Cityscapes (and Foggy Cityscapes) to VOC-format folders for detection.

Reads ``gtFine/{train,val}/<city>/*_gtFine_polygons.json`` and keeps the 8 instance classes (person, rider,
car, truck, bus, train, motorcycle, bicycle). Each box is its polygon's extent clipped to the image; boxes
left empty are dropped. Crowd polygons ("cargroup", ...) are not objects of these classes and are skipped.

Writes, for Cityscapes and (when ``leftImg8bit_foggy`` exists) Foggy Cityscapes at one ``--beta``, a folder
with ``Annotations/``, ``JPEGImages/`` (the PNGs, copied unchanged) and ``ImageSets/Main/trainval.txt``
(Cityscapes train) and ``test.txt`` (Cityscapes val). Both folders share the same annotations. Rerunning is
safe: files already in place are kept.

    python -m utils.prepare_cityscapes_to_voc --cityscapes-root data/cityscapes \
        --out-dir data/cityscapes_in_voc --foggy-out-dir data/foggy_cityscapes_in_voc --beta 0.02

``python utils/prepare_cityscapes_to_voc.py ...``, the command ssd.pytorch's fork documents, runs the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file (the fork's command), Python puts utils/ on sys.path, not the repository: run this file as the
    # module it is instead, with the same interpreter, arguments and working directory, the repository on the path.
    _path = [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.execve(sys.executable, [sys.executable, "-m", "utils.prepare_cityscapes_to_voc", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": os.pathsep.join(_path)})  # fmt: skip

from tqdm import tqdm

from data.config import CITYSCAPES_CLASSES
from data.voc import write_voc_annotation
from utils.cli import run_cli

logger = logging.getLogger(__name__)

SPLITS = {"train": "trainval", "val": "test"}  # Cityscapes split -> VOC image set
POLYGON_SUFFIX = "_gtFine_polygons.json"


@dataclass
class Target:
    """One output folder: where its images come from and what was written."""

    name: str
    out_dir: Path
    image_dir: Path
    image_suffix: str
    ids: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS.values()})
    missing: list[Path] = field(default_factory=list)


def polygon_boxes(record: dict, source: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    """The kept ``(class, (xmin, ymin, xmax, ymax))`` of one gtFine polygons record, 0-based pixels."""
    try:
        width, height = int(record["imgWidth"]), int(record["imgHeight"])
        objects = record["objects"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{source} lacks imgWidth/imgHeight/objects ({error}); is it a gtFine polygons file?"
        ) from error
    boxes = []
    for obj in objects:
        label = obj.get("label")
        if label not in CITYSCAPES_CLASSES:
            continue
        points = obj.get("polygon") or []
        if not points:
            continue
        xs = [float(p[0]) for p in points]
        ys = [float(p[1]) for p in points]
        x0, x1 = max(min(xs), 0.0), min(max(xs), width - 1.0)
        y0, y1 = max(min(ys), 0.0), min(max(ys), height - 1.0)
        if x1 > x0 and y1 > y0:
            boxes.append((label, (x0, y0, x1, y1)))
    return boxes


def place_image(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` unless an identical-size copy is already there."""
    if destination.is_file() and destination.stat().st_size == source.stat().st_size:
        return
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(destination)


def convert(
    cityscapes_root: Path, out_dir: Path, foggy_out_dir: Path | None, beta: str
) -> tuple[list[Target], Counter]:
    """Convert both splits into each target folder; returns the targets and object counts per (split, class)."""
    gt_root = cityscapes_root / "gtFine"
    if not gt_root.is_dir():
        raise FileNotFoundError(f"{gt_root} does not exist; unzip gtFine_trainvaltest.zip under --cityscapes-root")
    targets = [Target("Cityscapes", out_dir, cityscapes_root / "leftImg8bit", "_leftImg8bit.png")]
    if foggy_out_dir is not None:
        foggy_images = cityscapes_root / "leftImg8bit_foggy"
        if foggy_images.is_dir():
            targets.append(
                Target("Foggy Cityscapes", foggy_out_dir, foggy_images, f"_leftImg8bit_foggy_beta_{beta}.png")
            )
        else:
            logger.warning("%s does not exist: Foggy Cityscapes is skipped", foggy_images)
    for target in targets:
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (target.out_dir / sub).mkdir(parents=True, exist_ok=True)

    counts: Counter = Counter()
    for split, image_set in SPLITS.items():
        files = sorted((gt_root / split).glob(f"*/*{POLYGON_SUFFIX}"))
        if not files:
            logger.warning("no %s files under %s", POLYGON_SUFFIX, gt_root / split)
        for path in tqdm(files, desc=f"{split}", unit="img"):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON ({error}); re-extract gtFine") from error
            boxes = polygon_boxes(record, path)
            image_id = path.name[: -len(POLYGON_SUFFIX)]
            city = path.parent.name
            for label, _ in boxes:
                counts[split, label] += 1
            for target in targets:
                source = target.image_dir / split / city / f"{image_id}{target.image_suffix}"
                if not source.is_file():
                    target.missing.append(source)
                    continue
                place_image(source, target.out_dir / "JPEGImages" / f"{image_id}.png")
                write_voc_annotation(
                    target.out_dir / "Annotations" / f"{image_id}.xml",
                    f"{image_id}.png",
                    int(record["imgWidth"]),
                    int(record["imgHeight"]),
                    boxes,
                    folder=target.name,
                )
                target.ids[image_set].append(image_id)
    for target in targets:
        for image_set, ids in target.ids.items():
            (target.out_dir / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
    return targets, counts


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert Cityscapes and Foggy Cityscapes to VOC format.")
    parser.add_argument("--cityscapes-root", "--cityscapes_root", default="data/cityscapes", type=Path,
                        help="folder holding gtFine/, leftImg8bit/ and optionally leftImg8bit_foggy/")  # fmt: skip
    parser.add_argument("--out-dir", "--out_dir", default="data/cityscapes_in_voc", type=Path)
    parser.add_argument("--foggy-out-dir", "--foggy_out_dir", default="data/foggy_cityscapes_in_voc", type=Path)
    parser.add_argument("--beta", default="0.02", help="fog density of the Foggy images: 0.005, 0.01 or 0.02")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        float(args.beta)
    except ValueError:
        raise ValueError(f"--beta must be a number such as 0.02, got {args.beta!r}") from None
    targets, counts = convert(args.cityscapes_root, args.out_dir, args.foggy_out_dir, args.beta)
    for split in SPLITS:
        per_class = ", ".join(f"{name} {counts[split, name]}" for name in CITYSCAPES_CLASSES)
        print(f"{split} ({SPLITS[split]}): {per_class}")
    status = 0
    for target in targets:
        sizes = ", ".join(f"{len(ids)} {image_set}" for image_set, ids in target.ids.items())
        print(f"{target.name}: {target.out_dir} ({sizes})")
        if target.missing:
            status = 1
            print(
                f"{target.name}: {len(target.missing)} image(s) missing, left out of the image sets:", file=sys.stderr
            )
            for path in target.missing:
                print(f"  {path}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
