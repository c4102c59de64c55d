"""Turning raw network outputs into detections: softmax, decode, per-class NMS (SSD §3, "Inference")."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from layers.box_utils import DEFAULT_VARIANCES, Variances, decode

Detections = dict[str, Tensor]


@dataclass(frozen=True)
class DetectSettings:
    """The test-time settings of :class:`Detect`, one set per model: a checkpoint stores them
    (``utils.checkpoint.DetectorInfo.postprocess``) and command-line flags override single fields.

    The defaults are Caffe SSD's test settings (``ssd_pascal.py``: score 0.01, NMS 0.45, 400 candidates per
    class, 200 detections per image). :data:`SSD_PYTORCH_SETTINGS` are ssd.pytorch's.

    Args:
        conf_thresh: a candidate's softmax score must be strictly above this.
        nms_thresh: a box whose IoU with a better box of its class exceeds this is suppressed.
        top_k: candidates per class and image that enter NMS.
        keep_top_k: detections kept per image after NMS, across classes; ``None`` keeps all.
    """

    conf_thresh: float = 0.01
    nms_thresh: float = 0.45
    top_k: int = 400
    keep_top_k: int | None = 200

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_thresh < 1.0:
            raise ValueError(f"conf_thresh must lie in [0, 1), got {self.conf_thresh}")
        if not 0.0 <= self.nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must lie in [0, 1], got {self.nms_thresh}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.keep_top_k is not None and self.keep_top_k < 1:
            raise ValueError(f"keep_top_k must be at least 1 or None, got {self.keep_top_k}")

    def override(
        self,
        conf_thresh: float | None = None,
        nms_thresh: float | None = None,
        top_k: int | None = None,
        keep_top_k: int | None = None,
    ) -> DetectSettings:
        """These settings with the fields that are not None replaced; ``keep_top_k=0`` means keep all."""
        given = {"conf_thresh": conf_thresh, "nms_thresh": nms_thresh, "top_k": top_k}
        changes = {k: v for k, v in given.items() if v is not None}
        if keep_top_k is not None:
            changes["keep_top_k"] = keep_top_k or None
        return replace(self, **changes)

    def to_dict(self) -> dict[str, float | int | None]:
        return {"conf_thresh": self.conf_thresh, "nms_thresh": self.nms_thresh, "top_k": self.top_k,
                "keep_top_k": self.keep_top_k}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> DetectSettings:
        keep = data.get("keep_top_k", cls.keep_top_k)
        return cls(float(data.get("conf_thresh", cls.conf_thresh)), float(data.get("nms_thresh", cls.nms_thresh)),
                   int(data.get("top_k", cls.top_k)), None if keep is None else int(keep))  # fmt: skip


# ssd.pytorch's test settings: 200 candidates per class and no per-image cap.
SSD_PYTORCH_SETTINGS = DetectSettings(top_k=200, keep_top_k=None)


class Detect:
    """Post-process ``(loc, conf)`` logits into per-image detections, on the inputs' device.

    Per image and per foreground class: keep priors with score > ``conf_thresh``, keep the ``top_k`` best,
    suppress overlaps above ``nms_thresh``; then keep the ``keep_top_k`` best detections of the image
    across classes. All classes of all images go through ``torchvision.ops.batched_nms`` together, and with a
    ``keep_top_k`` cap only on as many of each image's best candidates as it takes to fill the cap (exact, see
    ``_suppress``).

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
        self.num_classes = num_classes
        self.settings = DetectSettings(conf_thresh, nms_thresh, top_k, keep_top_k)  # validates them
        self.conf_thresh = conf_thresh
        self.nms_thresh = nms_thresh
        self.top_k = top_k
        self.keep_top_k = keep_top_k
        self.variances = variances

    @classmethod
    def from_settings(cls, num_classes: int, settings: DetectSettings) -> Detect:
        """The Detect of ``settings`` for a network with ``num_classes`` outputs per prior."""
        return cls(num_classes, settings.conf_thresh, settings.nms_thresh, settings.top_k, settings.keep_top_k)

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
        scores = conf_preds.float().softmax(dim=-1)[..., 1:]  # [B, P, C-1]
        passing = scores > self.conf_thresh  # [B, P, C-1]
        if self.top_k < num_priors and passing.sum(dim=1).max() > self.top_k:
            # Some (image, class) has more than top_k candidates: take each column's top_k first.
            top_scores, top_priors = scores.topk(self.top_k, dim=1)  # [B, top_k, C-1]
            image_idx, rank, class_idx = (top_scores > self.conf_thresh).nonzero(as_tuple=True)  # [M] each
            prior_idx = top_priors[image_idx, rank, class_idx]
        else:
            image_idx, prior_idx, class_idx = passing.nonzero(as_tuple=True)  # [M] each
        # Candidates by descending score; the stable sorts that follow keep this order within an image.
        order = scores[image_idx, prior_idx, class_idx].argsort(descending=True, stable=True)
        image_idx, prior_idx, class_idx = image_idx[order], prior_idx[order], class_idx[order]
        cand_scores = scores[image_idx, prior_idx, class_idx]  # [M], descending
        group = image_idx * (num_classes - 1) + class_idx  # one NMS group per (image, class)
        cand_boxes = decode(loc_preds[image_idx, prior_idx].float(), priors[prior_idx].float(), self.variances)

        kept = self._suppress(cand_boxes, cand_scores, group, image_idx, batch_size).sort().values  # score desc.
        kept = kept[torch.sort(image_idx[kept], stable=True).indices]  # grouped by image
        counts = torch.bincount(image_idx[kept], minlength=batch_size).tolist()
        results: list[Detections] = []
        for per_image in torch.split(kept, counts):
            if self.keep_top_k is not None:
                per_image = per_image[: self.keep_top_k]
            results.append(
                {"boxes": cand_boxes[per_image], "scores": cand_scores[per_image], "labels": class_idx[per_image] + 1}
            )
        return results

    def _suppress(self, boxes: Tensor, scores: Tensor, group: Tensor, image_idx: Tensor, batch_size: int) -> Tensor:
        """Greedy NMS within each group: the indices kept, in no particular order.

        ``scores`` must be in descending order. A box's fate depends only on the better boxes of its group, so the
        NMS of an image's best ``n`` candidates decides those ``n`` exactly as the NMS of all of them does. With a
        ``keep_top_k`` cap, NMS runs on growing prefixes of each image's candidates until ``keep_top_k`` survive or
        the prefix is the whole list: the result is the full NMS truncated to ``keep_top_k``, for a fraction of
        the work when most candidates survive (the costly case for greedy NMS).
        """
        if self.keep_top_k is None:
            return batched_nms(boxes, scores, group, self.nms_thresh)
        per_image = torch.bincount(image_idx, minlength=batch_size)  # [B] candidates of each image
        by_image = torch.sort(image_idx, stable=True).indices
        rank = torch.empty_like(image_idx)  # position of each candidate in its image's list
        rank[by_image] = (
            torch.arange(image_idx.numel(), device=rank.device) - (per_image.cumsum(0) - per_image)[image_idx[by_image]]
        )
        pending = torch.ones(batch_size, dtype=torch.bool, device=boxes.device)
        kept_parts: list[Tensor] = []
        prefix = 4 * self.keep_top_k  # then x4 per round: enough for one round unless NMS removes most boxes
        while True:
            take = ((rank < prefix) & pending[image_idx]).nonzero().squeeze(1)
            kept = take[batched_nms(boxes[take], scores[take], group[take], self.nms_thresh)]
            finished = (torch.bincount(image_idx[kept], minlength=batch_size) >= self.keep_top_k) | (
                per_image <= prefix
            )
            kept_parts.append(kept[(finished & pending)[image_idx[kept]]])
            pending &= ~finished
            if not pending.any():
                return torch.cat(kept_parts)
            prefix *= 4
