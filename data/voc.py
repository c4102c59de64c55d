"""PASCAL VOC and any VOC-format folder (Cityscapes/Foggy after conversion, Shapes, users' own data).

A VOC-format folder holds ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt`` and
``JPEGImages/<id>.jpg`` (or ``.png``). Box corners in the XML are 1-based pixels; they are read as XML - 1,
so boxes here are 0-based like every other pixel box in the project.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data.base import IMAGE_SUFFIXES, Annotation, DetectionDataset, Transform, clean_boxes, image_size
from data.config import VOC_CLASSES, annotation_labels

logger = logging.getLogger(__name__)


class UnknownClassError(ValueError):
    """An annotation names a class outside the class list (and outside the names the preset drops): a configuration
    error, never skipped."""


def unknown_class_message(path: Path, name: str, class_index: Mapping[str, int | None]) -> str:
    """What an annotation of an unexpected class ``name`` says: the classes, the names renamed to one, and the names
    whose boxes are dropped (``class_index`` lists each class's own name before its renames, as
    :func:`data.config.annotation_labels` does)."""
    classes: dict[int, str] = {}
    renamed, dropped = [], []
    for key, label in class_index.items():
        if label is None:
            dropped.append(key)
        elif label in classes:
            renamed.append(f"{key} -> {classes[label]}")
        else:
            classes[label] = key
    message = f"annotation {path} has an object of class {name!r}, which is not among the {len(classes)} classes"
    message += f" ({', '.join(classes.values())})"
    if renamed:
        message += f", the names read as one of them ({', '.join(renamed)})"
    if dropped:
        message += f" nor among the names whose boxes this dataset drops ({', '.join(dropped)})"
    return message + "; pass the right --dataset or --classes file"


def parse_voc_xml(
    path: Path, class_index: Mapping[str, int | None], image_size: tuple[int, int] | None = None
) -> Annotation:
    """Parse one VOC annotation file.

    Args:
        class_index: lower-case annotation name -> 0-based label, or None for a name whose boxes are dropped
            (:func:`data.config.annotation_labels`).
        image_size: ``(width, height)`` of the decoded image. When given it wins over the XML's ``<size>``,
            which annotation tools sometimes get wrong (or write for the stored, un-rotated EXIF image); a
            disagreement is warned about once, naming the file.

    Raises:
        ValueError: malformed or truncated XML, a missing field, or a name not in ``class_index``
            (:class:`UnknownClassError`); the message names the file.
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

    labels, read = [], []
    for k, name in enumerate(names):
        key = name.lower()
        if key not in class_index:
            raise UnknownClassError(unknown_class_message(path, name, class_index))
        label = class_index[key]
        if label is not None:  # None: a name whose boxes the preset drops
            labels.append(label)
            read.append(k)
    boxes, difficult = [boxes[k] for k in read], [difficult[k] for k in read]
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


def image_set_file(folder: Path, split: str) -> Path:
    """``folder/ImageSets/Main/<split>.txt``.

    Raises:
        FileNotFoundError: it does not exist; the message lists the split files the folder has.
    """
    listing = folder / "ImageSets" / "Main" / f"{split}.txt"
    if listing.is_file():
        return listing
    found = sorted(p.stem for p in listing.parent.glob("*.txt")) if listing.parent.is_dir() else []
    shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    hint = f" Its ImageSets/Main has {shown}" if found else ""
    raise FileNotFoundError(
        f"image set {listing} does not exist; is {folder} a VOC-format folder with split {split!r}?{hint}"
    )


def read_image_set(listing: Path) -> list[str]:
    """The image ids of a VOC split file (``ImageSets/Main/<split>.txt``): one id per line. An id written with its
    image suffix (``3384827.jpg``, as SWDA's Sim10k lists show: VisionLearningGroup/DA_Detection README.md:27) is
    read without it.

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
        image_ids += [strip_image_suffix(word) for word in words]
    if not image_ids:
        raise ValueError(f"image set {listing} is empty; list one image id per line")
    return image_ids


def strip_image_suffix(image_id: str) -> str:
    """``3384827.jpg`` -> ``3384827``: an id without its image suffix (:data:`data.base.IMAGE_SUFFIXES`, any case)."""
    suffix = Path(image_id).suffix
    return image_id[: -len(suffix)] if suffix and suffix.lower() in IMAGE_SUFFIXES else image_id


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
        rename, drop: other annotation names that become a class, and those whose boxes are dropped (a preset's,
            :class:`data.config.DatasetPreset`); any other name is an :class:`UnknownClassError`.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str | Path, str]],
        class_names: Sequence[str],
        transform: Transform | None = None,
        keep_difficult: bool = False,
        skip_bad: bool = False,
        seed: int = 0,
        rename: Sequence[tuple[str, str]] = (),
        drop: Sequence[str] = (),
    ) -> None:
        super().__init__(class_names, transform, keep_difficult, skip_bad, seed)
        self.class_index = annotation_labels(self.class_names, rename, drop)
        self._paths: list[Path] = []
        self._annotations: list[Annotation] = []
        for folder, split in sources:
            self._add_split(Path(folder), split)

    def _add_split(self, folder: Path, split: str) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {folder} does not exist; check --dataset_root")
        image_ids = read_image_set(image_set_file(folder, split))
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
