"""PASCAL VOC and any VOC-format folder (Cityscapes/Foggy after conversion, Shapes, users' own data).

A VOC-format folder holds ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt`` and
``JPEGImages/<id>.jpg`` (or ``.png``). Box corners in the XML are 1-based pixels; they are read as XML - 1,
so boxes here are 0-based like every other pixel box in the project.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.base import IMAGE_SUFFIXES, Annotation, DetectionDataset, Transform, clean_boxes, image_size
from data.config import VOC_CLASSES

logger = logging.getLogger(__name__)


class UnknownClassError(ValueError):
    """An annotation names a class outside the class list: a configuration error, never skipped."""


def parse_voc_xml(path: Path, class_index: dict[str, int], image_size: tuple[int, int] | None = None) -> Annotation:
    """Parse one VOC annotation file.

    Args:
        image_size: ``(width, height)`` of the decoded image. When given it wins over the XML's ``<size>``,
            which annotation tools sometimes get wrong (or write for the stored, un-rotated EXIF image); a
            disagreement is warned about once, naming the file.

    Raises:
        ValueError: malformed or truncated XML, a missing field, or a class not in ``class_index``; the
            message names the file.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"annotation {path} is malformed or truncated XML ({error}); fix or remove it") from error
    try:
        size = root.find("size")
        width = int(float(size.findtext("width")))  # type: ignore[union-attr, arg-type]
        height = int(float(size.findtext("height")))  # type: ignore[union-attr, arg-type]
        names, boxes, difficult = [], [], []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            box = obj.find("bndbox")
            coords = [float(box.findtext(tag)) - 1.0 for tag in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr, arg-type]
            names.append(name)
            boxes.append(coords)
            difficult.append(int(float(obj.findtext("difficult") or 0)) == 1)
    except (AttributeError, TypeError, ValueError) as error:
        raise ValueError(
            f"annotation {path} lacks a field or has a non-numeric one ({error}); fix or remove it"
        ) from error
    if image_size is not None:
        if (width, height) != tuple(image_size):
            logger.warning(
                "%s: <size> says %dx%d but the image is %dx%d; using the image's size", path, width, height, *image_size
            )
        width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"annotation {path} gives image size {width}x{height}; fix its <size> field")

    labels = []
    for name in names:
        key = name.lower()
        if key not in class_index:
            raise UnknownClassError(
                f"annotation {path} has an object of class {name!r}, which is not among the {len(class_index)} "
                f"classes ({', '.join(class_index)}); pass the right --dataset or --classes file"
            )
        labels.append(class_index[key])
    # VOC pixels are 0..W-1 once shifted to 0-based, so that is where clipping stops.
    clipped, keep = clean_boxes(np.array(boxes, np.float32).reshape(-1, 4), width, height, path, width - 1, height - 1)
    return Annotation(
        image_id=path.stem,
        width=width,
        height=height,
        boxes=clipped,
        labels=np.array(labels, np.int64)[keep],
        difficult=np.array(difficult, bool)[keep],
    )


def read_image_set(listing: Path) -> list[str]:
    """The image ids of a VOC split file (``ImageSets/Main/<split>.txt``): one id per line.

    Raises:
        ValueError: the file is empty, or a line holds more than one word (an id with a space, or a per-class
            split file's "id label" line); the message names the line.
    """
    image_ids = []
    for number, line in enumerate(listing.read_text(encoding="utf-8-sig").splitlines(), start=1):
        words = line.split()
        if len(words) > 1:
            raise ValueError(
                f"{listing}, line {number}: {line.strip()!r} is not one image id; VOC split files hold one id per "
                "line, and ids cannot contain spaces (rename such files)"
            )
        image_ids += words
    if not image_ids:
        raise ValueError(f"image set {listing} is empty; list one image id per line")
    return image_ids


def find_image(folder: Path, image_id: str) -> Path:
    """The image file of ``image_id`` in a VOC-format folder's ``JPEGImages/``, whatever its suffix
    (:data:`data.base.IMAGE_SUFFIXES`, either case)."""
    for suffix in IMAGE_SUFFIXES:
        for spelled in (suffix, suffix.upper()):
            candidate = folder / "JPEGImages" / f"{image_id}{spelled}"
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"image {folder / 'JPEGImages' / image_id}.jpg (or .png) does not exist")


class VOCFormatDataset(DetectionDataset):
    """Any number of (VOC-format folder, split) pairs, read as one dataset.

    Annotations are parsed once, at construction, so a bad file is reported before training starts.

    Args:
        sources: ``(folder, split)`` pairs; ``split`` names ``ImageSets/Main/<split>.txt``.
        class_names: foreground classes (matched case-insensitively to the XML ``<name>``).
        transform, keep_difficult, skip_bad, seed: see :class:`data.base.DetectionDataset`.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str | Path, str]],
        class_names: Sequence[str],
        transform: Transform | None = None,
        keep_difficult: bool = False,
        skip_bad: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(class_names, transform, keep_difficult, skip_bad, seed)
        self.class_index = {name.lower(): i for i, name in enumerate(self.class_names)}
        self._paths: list[Path] = []
        self._annotations: list[Annotation] = []
        for folder, split in sources:
            self._add_split(Path(folder), split)

    def _add_split(self, folder: Path, split: str) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {folder} does not exist; check --dataset_root")
        listing = folder / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(
                f"image set {listing} does not exist; is {folder} a VOC-format folder with split {split!r}?"
            )
        image_ids = read_image_set(listing)
        for image_id in image_ids:
            try:
                image_path = find_image(folder, image_id)
                size = image_size(image_path)
                annotation = parse_voc_xml(folder / "Annotations" / f"{image_id}.xml", self.class_index, size)
            except UnknownClassError:
                raise
            except (FileNotFoundError, ValueError) as error:
                if not self.skip_bad:
                    raise
                logger.warning("skipping %s: %s", image_id, error)
                continue
            self.ids.append(image_id)
            self._paths.append(image_path)
            self._annotations.append(annotation)

    def image_path(self, index: int) -> Path:
        return self._paths[index]

    def pull_anno(self, index: int) -> Annotation:
        return self._annotations[index]


class VOCDetection(VOCFormatDataset):
    """PASCAL VOC from a ``VOCdevkit`` folder: ``VOCdevkit/VOC2007``, ``VOCdevkit/VOC2012``.

    Args:
        root: the VOCdevkit folder.
        image_sets: ``(year, split)`` pairs; the default is the paper's 07+12 trainval.
    """

    def __init__(
        self,
        root: str | Path,
        image_sets: Sequence[tuple[str, str]] = (("2007", "trainval"), ("2012", "trainval")),
        transform: Transform | None = None,
        keep_difficult: bool = False,
        class_names: Sequence[str] = VOC_CLASSES,
        skip_bad: bool = False,
        seed: int = 0,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"VOC root {root} does not exist; download with data/scripts/VOC2007.sh")
        sources = [(root / f"VOC{year}", split) for year, split in image_sets]
        super().__init__(sources, class_names, transform, keep_difficult, skip_bad, seed)


def write_voc_annotation(
    path: str | Path,
    filename: str,
    width: int,
    height: int,
    objects: Sequence[tuple[str, Sequence[float]]],
    difficult: Sequence[bool] | None = None,
    folder: str = "VOC",
) -> None:
    """Write a VOC annotation file atomically.

    Args:
        path: the ``.xml`` file to write.
        filename: the image file name recorded in ``<filename>``.
        width, height: image size in pixels.
        objects: ``(class_name, (xmin, ymin, xmax, ymax))`` with 0-based pixel corners; they are written
            1-based, as the VOC devkit expects.
        difficult: optional flag per object.
        folder: the dataset name recorded in ``<folder>``.
    """
    path = Path(path)
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for k, (name, box) in enumerate(objects):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if difficult is not None and difficult[k] else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = str(int(round(value)) + 1)
    ET.indent(root)
    tmp = path.with_name(f".{path.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=False)
    tmp.replace(path)
