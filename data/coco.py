"""MS COCO detection through pycocotools, for the 2014 and 2017 layouts.

Layout: ``<root>/annotations/instances_<image_set>.json`` with images in ``<root>/<image_set>/`` (2017 and
2014 as unzipped) or ``<root>/images/<image_set>/`` (ssd.pytorch's layout). The 80 category ids (1..90 with
gaps) are mapped to contiguous labels 0..79 in id order; ``category_ids[label]`` maps back.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from data.base import Annotation, DetectionDataset, Transform, clean_boxes

logger = logging.getLogger(__name__)


class COCODetection(DetectionDataset):
    """COCO ``instances`` detection.

    Crowd annotations (``iscrowd=1``) are not training targets; they appear in ``pull_anno`` with
    ``difficult=True``. Boxes are converted from xywh to xyxy and clipped. Images without annotations are
    background-only samples.

    Args:
        root: the COCO folder.
        image_set: e.g. ``train2017``, ``val2017``, ``train2014``, ``val2014``.
        class_names: optional; must have one name per category in the file.
    """

    def __init__(
        self,
        root: str | Path,
        image_set: str = "train2017",
        transform: Transform | None = None,
        class_names: Sequence[str] | None = None,
        skip_bad: bool = False,
        seed: int = 0,
    ) -> None:
        root = Path(root)
        annotation_file = root / "annotations" / f"instances_{image_set}.json"
        if not annotation_file.is_file():
            raise FileNotFoundError(
                f"COCO annotations {annotation_file} do not exist; download with data/scripts/COCO2017.sh"
            )
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            try:
                self.coco = COCO(str(annotation_file))
            except (AssertionError, ValueError, KeyError, TypeError) as error:  # pycocotools asserts on bad files
                raise ValueError(f"{annotation_file} is not a COCO instances file ({error})") from error
        self.category_ids = sorted(self.coco.getCatIds())
        file_names = tuple(self.coco.loadCats(cid)[0]["name"] for cid in self.category_ids)
        if class_names is not None and len(class_names) != len(file_names):
            raise ValueError(
                f"{annotation_file} has {len(file_names)} categories but {len(class_names)} class names were given"
            )
        super().__init__(class_names or file_names, transform, False, skip_bad, seed)
        self.annotation_file = annotation_file
        self.label_of = {cid: label for label, cid in enumerate(self.category_ids)}
        self.image_dir = next(
            (d for d in (root / image_set, root / "images" / image_set) if d.is_dir()), root / image_set
        )
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"COCO image folder {root / image_set} (or {root / 'images' / image_set}) does not exist"
            )
        self.coco_ids: list[int] = sorted(self.coco.getImgIds())
        self.ids = [str(i) for i in self.coco_ids]

    def image_path(self, index: int) -> Path:
        info = self.coco.loadImgs(self.coco_ids[index])[0]
        return self.image_dir / info["file_name"]

    def pull_anno(self, index: int) -> Annotation:
        image_id = self.coco_ids[index]
        info = self.coco.loadImgs(image_id)[0]
        width, height = int(info["width"]), int(info["height"])
        records = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        if not records:
            return Annotation.empty(str(image_id), width, height)
        xywh = np.array([r["bbox"] for r in records], np.float32).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes, keep = clean_boxes(xyxy, width, height, f"{self.annotation_file} image {image_id}")
        labels = np.array([self.label_of[r["category_id"]] for r in records], np.int64)[keep]
        crowd = np.array([bool(r.get("iscrowd", 0)) for r in records], bool)[keep]
        return Annotation(str(image_id), width, height, boxes, labels, crowd)
