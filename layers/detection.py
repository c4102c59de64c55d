"""Turning raw network outputs into detections: softmax, decode, per-class NMS (SSD §3, "Inference")."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from layers.box_utils import DEFAULT_VARIANCES, Variances, decode

Detections = dict[str, Tensor]


class Detect:
    """Post-process ``(loc, conf)`` logits into per-image detections, on the inputs' device.

    Per image and per foreground class: keep priors with score > ``conf_thresh``, keep the ``top_k`` best,
    suppress overlaps above ``nms_thresh``; then keep the ``keep_top_k`` best detections of the image
    across classes. All classes of all images go through one ``torchvision.ops.batched_nms`` call.

    The defaults are Caffe SSD's test settings. ``Detect(C, top_k=200, keep_top_k=None)`` reproduces
    ssd.pytorch's ``Detect`` (whose cross-class top-k step has no effect).

    Args:
        num_classes: C, including the background.
        conf_thresh: a candidate's softmax score must be strictly above this.
        nms_thresh: a box whose IoU with a better box of its class exceeds this is suppressed.
        top_k: candidates per class and image that enter NMS.
        keep_top_k: detections kept per image after NMS, across classes; ``None`` keeps all.
        variances: decoding variances.
    """

    def __init__(
        self,
        num_classes: int,
        conf_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        top_k: int = 400,
        keep_top_k: int | None = 200,
        variances: Variances = DEFAULT_VARIANCES,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must count the background and at least one class, got {num_classes}")
        if not 0.0 <= nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must lie in [0, 1], got {nms_thresh}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if keep_top_k is not None and keep_top_k < 1:
            raise ValueError(f"keep_top_k must be at least 1 or None, got {keep_top_k}")
        self.num_classes = num_classes
        self.conf_thresh = conf_thresh
        self.nms_thresh = nms_thresh
        self.top_k = top_k
        self.keep_top_k = keep_top_k
        self.variances = variances

    @torch.no_grad()
    def __call__(self, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor) -> list[Detections]:
        """Detect objects.

        Args:
            loc_preds (Tensor[B, P, 4]): regression logits.
            conf_preds (Tensor[B, P, C]): class logits (softmax is applied here).
            priors (Tensor[P, 4]): cxcywh.

        Returns:
            B dicts with ``boxes`` (Tensor[K, 4], xyxy, relative, not clipped), ``scores`` (Tensor[K],
            descending) and ``labels`` (Tensor[K], int64 in 1..C-1).
        """
        batch_size, num_priors, num_classes = conf_preds.shape
        if num_classes != self.num_classes:
            raise ValueError(f"conf_preds has {num_classes} classes but Detect was built for {self.num_classes}")
        boxes = decode(loc_preds.float(), priors.float(), self.variances)  # [B, P, 4]
        scores = conf_preds.float().softmax(dim=-1)[..., 1:]  # [B, P, C-1]

        # Per (image, class) top-k candidates: sort priors by score within each column.
        k = min(self.top_k, num_priors)
        top_scores, top_priors = scores.topk(k, dim=1)  # [B, k, C-1]
        keep = top_scores > self.conf_thresh  # [B, k, C-1]
        image_idx, _, class_idx = keep.nonzero(as_tuple=True)  # [M] each
        cand_scores = top_scores[keep]  # [M]
        cand_boxes = boxes[image_idx, top_priors[keep]]  # [M, 4]
        cand_labels = class_idx + 1  # [M]

        # One NMS for every class of every image: distinct groups never suppress each other.
        group = image_idx * num_classes + cand_labels
        kept = batched_nms(cand_boxes, cand_scores, group, self.nms_thresh)  # [K_total], by score desc.

        image_idx = image_idx[kept]
        kept_boxes, kept_scores, kept_labels = cand_boxes[kept], cand_scores[kept], cand_labels[kept]
        # kept is sorted by descending score; a stable sort by image keeps that order inside each image.
        by_image = torch.sort(image_idx, stable=True).indices
        counts = torch.bincount(image_idx, minlength=batch_size).tolist()
        results: list[Detections] = []
        for per_image in torch.split(by_image, counts):
            if self.keep_top_k is not None:
                per_image = per_image[: self.keep_top_k]
            results.append(
                {"boxes": kept_boxes[per_image], "scores": kept_scores[per_image], "labels": kept_labels[per_image]}
            )
        return results
