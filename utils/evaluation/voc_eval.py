"""PASCAL VOC detection AP, with the exact semantics of the official devkit and py-faster-rcnn's voc_eval.py.

Per class, detections of all images are ranked by score (descending; ties keep image order, then the
order within the image, as the devkit's stable sort of a results file written image by image). Each
detection is compared with the ground truth of its image it overlaps most:

* IoU is pixel-inclusive (+1 on widths and heights), by default;
* IoU > ``iou_thresh`` (strict) and the ground truth not yet taken: true positive;
* the ground truth already taken by a higher-ranked detection (a duplicate), or IoU <= threshold: false
  positive;
* the best ground truth is "difficult": the detection counts as neither.

AP is the 11-point interpolated precision (VOC2007, ``use_07_metric=True``) or the area under the monotone
precision envelope (VOC2010 and later). A class without (non-difficult) ground truth has AP nan; it is
left out of the mean and listed in ``"missing_classes"``.

Boxes are pixel xyxy and labels 0-based foreground indices (chainercv's interface with xyxy order). The
whole computation is vectorised: the only loop is over classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IoUConvention:
    """How detections are compared with the ground truth.

    Attributes:
        pixel_offset: added to widths and heights (1.0: the devkit's inclusive pixels; 0.0: continuous).
        detection_shift: added to every detection coordinate before matching.
        score_decimals, box_decimals: round scores and coordinates as a results file written with that
            many decimals would (None: full precision).
    """

    pixel_offset: float = 1.0
    detection_shift: float = 0.0
    score_decimals: int | None = None
    box_decimals: int | None = None


DEVKIT = IoUConvention(pixel_offset=1.0, detection_shift=0.0)
# ssd.pytorch's eval.py parses ground truth as XML - 1, writes detections to its results files with +1
# ("{:.3f}" scores, "{:.1f}" corners) and reads them back unchanged, then uses continuous IoU: its detections
# are scored 1 px off the ground truth, with rounded values. This is how its published 77.43 was measured.
SSD_PYTORCH = IoUConvention(pixel_offset=0.0, detection_shift=1.0, score_decimals=3, box_decimals=1)


_FAR_AWAY = -1e9  # padding box corner: no detection of a real image can touch it


def devkit_iou(dets: np.ndarray, gt_planes: np.ndarray, gt_area: np.ndarray, pixel_offset: float) -> np.ndarray:
    """The devkit's IoU on inclusive pixels (+1), which the VOC metric must reproduce: not box_utils.iou's.

    With ``pixel_offset`` 1 a box from x0 to x1 is ``x1 - x0 + 1`` wide. Each detection is compared with its
    own candidates, in the layout :func:`_class_curve` builds.

    Args:
        dets (ndarray[D, 4]): pixel xyxy.
        gt_planes (ndarray[4, D, G]): the candidates' x0, y0, x1, y1 for each detection.
        gt_area (ndarray[D, G]): their areas, with the same ``pixel_offset``.
        pixel_offset: added to widths and heights (0: continuous IoU).

    Returns:
        ndarray[D, G].
    """
    iw = np.minimum(gt_planes[2], dets[:, 2:3]) - np.maximum(gt_planes[0], dets[:, 0:1]) + pixel_offset
    ih = np.minimum(gt_planes[3], dets[:, 3:4]) - np.maximum(gt_planes[1], dets[:, 1:2]) + pixel_offset
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_det = (dets[:, 2] - dets[:, 0] + pixel_offset) * (dets[:, 3] - dets[:, 1] + pixel_offset)
    return inter / (area_det[:, None] + gt_area - inter)


def _flatten(per_image: Sequence[np.ndarray], dtype: type, width: int | None = None) -> np.ndarray:
    """Concatenate per-image arrays into [total] (or [total, width]) of ``dtype``."""
    shape = (-1,) if width is None else (-1, width)
    parts = [np.asarray(rows, dtype).reshape(shape) for rows in per_image]
    return np.concatenate(parts) if parts else np.zeros((0,) if width is None else (0, width), dtype)


def _stable_rank(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``, faster: numpy's SIMD sort, then ties put back in input order."""
    order = np.argsort(keys)
    sorted_keys = keys[order]
    ties = sorted_keys[1:] == sorted_keys[:-1]
    if ties.any():
        group = np.concatenate(([0], np.cumsum(~ties)))  # equal keys share a group, groups ascend
        order = order[np.argsort(group * len(keys) + order)]  # unique keys: any sort is stable
    return order


def precision_envelope(precision: np.ndarray) -> np.ndarray:
    """Precision made monotone from the right: at each rank, the best precision at this recall or higher.

    Args:
        precision (ndarray[D]): in rank order.

    Returns:
        ndarray[D]: the curve the VOC2010+ AP integrates, and the one the PR plots draw.
    """
    return np.maximum.accumulate(precision[::-1])[::-1]


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """AP from a precision/recall curve (both in ranked order).

    VOC2007: mean over recall thresholds 0, 0.1, ..., 1 of the best precision at recall >= threshold.
    VOC2010+: area under the precision envelope (precision made monotone from the right).
    """
    if use_07_metric:
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(0.0, 1.1, 0.1)]
        return float(np.sum(points) / 11.0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = precision_envelope(mpre)
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _class_curve(
    det_image: np.ndarray,
    det_index: np.ndarray,
    all_det_boxes: np.ndarray,
    gt_pad: np.ndarray,
    gt_difficult_pad: np.ndarray,
    gt_per_image: np.ndarray,
    num_positives: int,
    iou_thresh: float,
    convention: IoUConvention,
) -> tuple[np.ndarray, np.ndarray]:
    """TP/FP flags of one class's detections, given in rank order; returns (recall, precision).

    ``det_image`` [D] is each ranked detection's image and ``det_index`` [D] its row in ``all_det_boxes``
    (boxes are gathered only for detections that can match).

    ``gt_pad`` [I, G, 4] holds each image's ground truths of the class in slots 0..n-1; the other slots hold
    a box far outside every image (IoU 0), so a real box always wins the argmax.
    """
    num_dets = len(det_image)
    tp = np.zeros(num_dets)
    fp = np.ones(num_dets)  # detections in images without ground truth of the class stay false positives
    rows = np.flatnonzero(gt_per_image[det_image] > 0)  # only these can match anything
    if len(rows):
        images = det_image[rows]
        boxes = all_det_boxes[det_index[rows]] + convention.detection_shift
        offset = convention.pixel_offset
        planes = np.moveaxis(gt_pad, 2, 0)[:, images]  # [4, R, G]
        area = (planes[2] - planes[0] + offset) * (planes[3] - planes[1] + offset)
        overlaps = devkit_iou(boxes, planes, area, offset)  # [R, G]
        best = overlaps.argmax(axis=1)  # the first maximum, as the devkit's max()
        hit = overlaps[np.arange(len(rows)), best] > iou_thresh
        difficult = hit & gt_difficult_pad[images, best]
        claims = hit & ~difficult
        # A claim is a TP when it is the first (highest-ranked) claim on its ground truth.
        claim_rows = np.flatnonzero(claims)
        claimed_gt = images[claim_rows] * gt_pad.shape[1] + best[claim_rows]
        first_claim = np.full(gt_pad.shape[0] * gt_pad.shape[1], len(rows))
        np.minimum.at(first_claim, claimed_gt, claim_rows)
        winners = rows[first_claim[first_claim < len(rows)]]
        tp[winners] = 1.0
        fp[winners] = 0.0
        fp[rows[difficult]] = 0.0  # neither TP nor FP
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_cum / float(num_positives) if num_positives > 0 else np.full(num_dets, np.nan)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    return recall, precision


def eval_detection_voc(
    pred_boxes: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    gt_difficults: Sequence[np.ndarray] | None = None,
    iou_thresh: float = 0.5,
    use_07_metric: bool = True,
    num_classes: int | None = None,
    convention: IoUConvention = DEVKIT,
) -> dict:
    """VOC AP per class and their mean.

    Args:
        pred_boxes: per image, ndarray [K, 4] pixel xyxy.
        pred_labels: per image, ndarray [K] 0-based foreground class.
        pred_scores: per image, ndarray [K].
        gt_boxes: per image, ndarray [N, 4] pixel xyxy.
        gt_labels: per image, ndarray [N] 0-based foreground class.
        gt_difficults: per image, ndarray [N] bool; None means no difficult objects.
        iou_thresh: a detection matches when IoU > this.
        use_07_metric: 11-point AP (VOC2007) instead of the area (VOC2010+).
        num_classes: foreground classes K; by default 1 + the largest label seen.
        convention: :data:`DEVKIT` (default) or :data:`SSD_PYTORCH`.

    Returns:
        ``{"ap": ndarray[K] (nan for a class without ground truth), "map": float (nanmean),
        "precision": list of K arrays, "recall": list of K arrays (in rank order), "num_positives":
        ndarray[K], "missing_classes": list of class indices without ground truth}``.
    """
    num_images = len(gt_boxes)
    if not (len(pred_boxes) == len(pred_labels) == len(pred_scores) == len(gt_labels) == num_images):
        raise ValueError(
            f"every argument needs one entry per image: got {len(pred_boxes)} pred_boxes, {len(pred_labels)} "
            f"pred_labels, {len(pred_scores)} pred_scores, {num_images} gt_boxes, {len(gt_labels)} gt_labels"
        )
    if gt_difficults is None:
        gt_difficults = [np.zeros(len(labels), bool) for labels in gt_labels]
    if num_classes is None:
        seen = [int(np.max(labels)) for labels in list(gt_labels) + list(pred_labels) if len(labels)]
        num_classes = max(seen, default=-1) + 1

    # Flatten once: one row per detection and per ground truth, with its image index.
    det_image = np.repeat(np.arange(num_images, dtype=np.int32), [len(scores) for scores in pred_scores])
    det_boxes = _flatten(pred_boxes, np.float64, 4)
    det_scores = _flatten(pred_scores, np.float64)
    det_labels = _flatten(pred_labels, np.int64)
    gt_image = np.repeat(np.arange(num_images), [len(labels) for labels in gt_labels])
    all_gt_boxes = _flatten(gt_boxes, np.float64, 4)
    all_gt_labels = _flatten(gt_labels, np.int64)
    all_gt_difficult = _flatten(gt_difficults, bool)

    if convention.box_decimals is not None:
        det_boxes = (
            np.round(det_boxes + convention.detection_shift, convention.box_decimals) - convention.detection_shift
        )
    if convention.score_decimals is not None:
        det_scores = np.round(det_scores, convention.score_decimals)
    # Group detections by class (a stable radix sort on small ints), then rank each class by score; ties
    # keep the (image, position) order of the input, as the devkit's stable sort of a results file does.
    small_labels = det_labels.astype(np.int16) if num_classes < 2**15 else det_labels
    by_label = np.argsort(small_labels, kind="stable")
    det_bounds = np.searchsorted(small_labels[by_label], np.arange(num_classes + 1))
    by_class = np.argsort(all_gt_labels, kind="stable")
    gt_image, all_gt_boxes, all_gt_labels, all_gt_difficult = (
        gt_image[by_class],
        all_gt_boxes[by_class],
        all_gt_labels[by_class],
        all_gt_difficult[by_class],
    )
    gt_bounds = np.searchsorted(all_gt_labels, np.arange(num_classes + 1))

    ap = np.full(num_classes, np.nan)
    precisions: list[np.ndarray] = []
    recalls: list[np.ndarray] = []
    num_positives = np.zeros(num_classes, np.int64)
    for cls in range(num_classes):
        # Pad this class's ground truth per image: [num_images, G, 4].
        of_class_gt = slice(gt_bounds[cls], gt_bounds[cls + 1])
        images_of_gt = gt_image[of_class_gt]
        per_image = np.bincount(images_of_gt, minlength=num_images)
        max_gt = int(per_image.max()) if num_images else 0
        slot = np.arange(len(images_of_gt)) - np.repeat(np.cumsum(per_image) - per_image, per_image)
        gt_pad = np.full((num_images, max_gt, 4), _FAR_AWAY)
        gt_difficult_pad = np.zeros((num_images, max_gt), bool)
        gt_pad[images_of_gt, slot] = all_gt_boxes[of_class_gt]
        gt_difficult_pad[images_of_gt, slot] = all_gt_difficult[of_class_gt]
        num_positives[cls] = int((~all_gt_difficult[of_class_gt]).sum())

        of_class = by_label[det_bounds[cls] : det_bounds[cls + 1]]
        ranked = of_class[_stable_rank(-det_scores[of_class])]
        recall, precision = _class_curve(
            det_image[ranked], ranked, det_boxes, gt_pad, gt_difficult_pad, per_image,
            int(num_positives[cls]), iou_thresh, convention,
        )  # fmt: skip
        precisions.append(precision)
        recalls.append(recall)
        if num_positives[cls] > 0:
            ap[cls] = voc_ap(recall, precision, use_07_metric) if len(recall) else 0.0
    missing = [int(c) for c in np.flatnonzero(num_positives == 0)]
    mean_ap = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
    return {
        "ap": ap,
        "map": mean_ap,
        "precision": precisions,
        "recall": recalls,
        "num_positives": num_positives,
        "missing_classes": missing,
    }
