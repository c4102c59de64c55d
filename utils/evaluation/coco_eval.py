"""COCO box AP through pycocotools' COCOeval (AP, AP50, AP75, small/medium/large)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_results(
    image_ids: Sequence[int],
    boxes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    category_ids: Sequence[int],
) -> list[dict]:
    """Detections in the COCO results format.

    Args:
        image_ids: COCO image id per image.
        boxes: per image [K, 4] pixel xyxy; labels: per image [K] 0-based contiguous; scores: per image [K].
        category_ids: ``category_ids[label]`` is the COCO category id.
    """
    results = []
    for image_id, image_boxes, image_labels, image_scores in zip(image_ids, boxes, labels, scores, strict=True):
        for (x0, y0, x1, y1), label, score in zip(
            image_boxes.tolist(), image_labels.tolist(), image_scores.tolist(), strict=True
        ):
            results.append({"image_id": int(image_id), "category_id": int(category_ids[label]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})  # fmt: skip
    return results


def eval_coco(coco_gt, results: list[dict], image_ids: Sequence[int] | None = None) -> dict:
    """Run COCOeval on ``results`` against the ``pycocotools.coco.COCO`` ground truth.

    Returns:
        ``{"AP": ..., "AP50": ..., ..., "per_class_ap": [K], "summary": the text COCOeval prints}``; AP values
        in [0, 1] (-1 where COCOeval has no ground truth for an area range; nan per class without any).
    """
    num_categories = len(coco_gt.getCatIds())
    if not results:
        logger.warning("no detections: every COCO AP is 0")
        return {**dict.fromkeys(STAT_NAMES, 0.0), "per_class_ap": [0.0] * num_categories, "summary": "no detections"}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=True)}
    # precision [T IoUs, R recalls, K classes, A areas, M max-dets]: area "all", 100 detections.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = [float(p[p > -1].mean()) if (p > -1).any() else float("nan") for p in np.moveaxis(precision, 2, 0)]
    summary = "\n".join(line for line in buffer.getvalue().splitlines() if line.startswith(" Average"))
    return {**stats, "per_class_ap": per_class, "summary": summary}
