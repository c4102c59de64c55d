"""Pure tensor functions on boxes: conversions, IoU, encode/decode and prior matching.

Conventions, stated once for the whole project:

* ``xyxy`` boxes are ``(xmin, ymin, xmax, ymax)``; ``cxcywh`` boxes are ``(cx, cy, w, h)``.
* Inside the network pipeline every coordinate is *relative*, i.e. divided by the image width or height,
  so the image spans ``[0, 1]``. Pixels appear only at the edges (datasets, metrics, drawing).
* Priors are ``cxcywh``; ground truths and detections are ``xyxy``.
* Class ``0`` is the background. A ground-truth target row is ``(xmin, ymin, xmax, ymax, label)`` with
  ``label`` the 0-based *foreground* index, as in ssd.pytorch; matching shifts it by one, so the network's
  class ``c`` is foreground class ``c - 1``.
* Offsets are encoded with the variances ``(0.1, 0.2)`` of Caffe SSD (SSD §2.2, eq. 2).

Every function here is side-effect free, holds no configuration and does no I/O. Leading batch dimensions
broadcast where the docstring says ``[..., 4]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

Variances = tuple[float, float]
DEFAULT_VARIANCES: Variances = (0.1, 0.2)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``boxes`` (Tensor[..., 4], cxcywh) to xyxy (Tensor[..., 4])."""
    centres, sizes = boxes[..., :2], boxes[..., 2:]
    return torch.cat((centres - sizes / 2, centres + sizes / 2), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert ``boxes`` (Tensor[..., 4], xyxy) to cxcywh (Tensor[..., 4])."""
    mins, maxs = boxes[..., :2], boxes[..., 2:]
    return torch.cat(((mins + maxs) / 2, maxs - mins), dim=-1)


def iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Continuous (no +1) IoU between every pair; ``torchvision.ops.box_iou``'s values.

    Each step broadcasts a column of ``boxes_a`` against a row of ``boxes_b`` into a contiguous [N, M]
    plane, where box_iou works on interleaved [N, M, 2] corners: faster on matching's few truths against
    thousands of priors (docs/performance.md, "Performance"; tests/test_box_utils.py checks the values).

    The operations are torchvision's CPU NMS kernel's, in its order (``inter / ((area_a + area_b) - inter)``), so in
    float64 the values are that kernel's to the last bit (``layers.nms.static_detect`` relies on it).

    Args:
        boxes_a (Tensor[..., N, 4]): xyxy.
        boxes_b (Tensor[..., M, 4]): xyxy, with leading dimensions that broadcast with ``boxes_a``'s.

    Returns:
        Tensor[..., N, M] in [0, 1].
    """
    ax1, ay1, ax2, ay2 = boxes_a.unsqueeze(-1).unbind(-2)  # [..., N, 1] each
    bx1, by1, bx2, by2 = boxes_b.unsqueeze(-3).unbind(-1)  # [..., 1, M] each
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)  # [N, M] widths
    inter *= (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def encode(matched: Tensor, priors: Tensor, variances: Variances = DEFAULT_VARIANCES) -> Tensor:
    """Encode ground-truth boxes as offsets from their priors (SSD eq. 2, with Caffe's variances).

    Args:
        matched (Tensor[..., P, 4]): xyxy ground truth assigned to each prior; widths and heights > 0.
        priors (Tensor[P, 4]): cxcywh.
        variances: scale of the centre and of the log-size offsets.

    Returns:
        Tensor[..., P, 4]: ``(dcx, dcy, dw, dh)`` regression targets.
    """
    target = xyxy_to_cxcywh(matched)
    centre = (target[..., :2] - priors[:, :2]) / (variances[0] * priors[:, 2:])
    size = torch.log(target[..., 2:] / priors[:, 2:]) / variances[1]
    return torch.cat((centre, size), dim=-1)


def decode(loc: Tensor, priors: Tensor, variances: Variances = DEFAULT_VARIANCES, clamp: float | None = None) -> Tensor:
    """Invert :func:`encode`: turn regression outputs back into boxes.

    Args:
        loc (Tensor[..., P, 4]): offsets ``(dcx, dcy, dw, dh)``.
        priors (Tensor[P, 4]): cxcywh.
        variances: as in :func:`encode`.
        clamp: if given, the log-size offsets ``dw * variances[1]`` and ``dh * variances[1]`` are clamped at this
            before ``exp``, so no box exceeds ``exp(clamp)`` times its prior. torchvision's ``BoxCoder`` clamps
            at ``log(1000 / 16)``; Caffe SSD and ssd.pytorch do not clamp.

    Returns:
        Tensor[..., P, 4]: xyxy, relative coordinates, not clipped.
    """
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    log_size = loc[..., 2:] * variances[1]
    if clamp is not None:
        log_size = log_size.clamp(max=clamp)
    size = priors[:, 2:] * torch.exp(log_size)
    return cxcywh_to_xyxy(torch.cat((centre, size), dim=-1))


def pad_targets(targets: list[Tensor], size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Stack a ragged list of per-image targets into padded tensors.

    Args:
        targets: B tensors [N_i, 5] of ``(xmin, ymin, xmax, ymax, label)``; N_i may be 0.
        size: N, at least every N_i (a fixed N gives every batch the same shapes); None: the largest N_i.

    Returns:
        boxes (Tensor[B, N, 4]): xyxy; padding rows hold the whole image ``(0, 0, 1, 1)`` so that any
            arithmetic on them stays finite.
        labels (Tensor[B, N]): int64 foreground index; padding rows hold -1.
        valid (Tensor[B, N]): bool, True for real ground truths.
    """
    batch_size = len(targets)
    max_truths = max((int(t.shape[0]) for t in targets), default=0)
    if size is not None:
        if size < max_truths:
            raise ValueError(f"cannot pad targets of up to {max_truths} ground truths to {size}")
        max_truths = size
    reference = targets[0] if targets else torch.zeros(0, 5)
    boxes = reference.new_tensor([0.0, 0.0, 1.0, 1.0]).repeat(batch_size, max_truths, 1)  # [B, N, 4]
    labels = torch.full((batch_size, max_truths), -1, dtype=torch.long, device=reference.device)
    valid = torch.zeros((batch_size, max_truths), dtype=torch.bool, device=reference.device)
    for i, target in enumerate(targets):
        count = int(target.shape[0])
        boxes[i, :count] = target[:, :4]
        labels[i, :count] = target[:, 4].long()
        valid[i, :count] = True
    return boxes, labels, valid


def match(
    truths: Tensor,
    labels: Tensor,
    valid: Tensor,
    priors: Tensor,
    threshold: float = 0.5,
    variances: Variances = DEFAULT_VARIANCES,
    static_shapes: bool = False,
) -> tuple[Tensor, Tensor]:
    """Assign ground truths to priors for a whole batch at once, with ssd.pytorch's semantics.

    SSD §2.2: each ground truth first takes the prior it overlaps most ("bipartite" step), then every
    prior whose best IoU is >= ``threshold`` is also positive. When two ground truths pick the same best
    prior, the later one (higher index) wins, as in ssd.pytorch's loop.

    Args:
        truths (Tensor[B, N, 4]): xyxy, relative, from :func:`pad_targets`.
        labels (Tensor[B, N]): int64 foreground index (0-based).
        valid (Tensor[B, N]): bool mask of real (non-padding) rows.
        priors (Tensor[P, 4]): cxcywh.
        threshold: IoU at or above which a prior is positive.
        variances: encoding variances.
        static_shapes: compute the IoU of the padding rows too instead of selecting the real ones (the same
            values, with no data-dependent shape or host synchronisation: a CUDA graph can capture it).

    Returns:
        loc_targets (Tensor[B, P, 4]): encoded offsets to the matched ground truth (meaningful only
            where ``conf_targets > 0``).
        conf_targets (Tensor[B, P]): int64 in [0, C-1]; 0 is background.
    """
    batch_size, max_truths = labels.shape
    num_priors = priors.shape[0]
    if max_truths == 0:
        loc_targets = priors.new_zeros(batch_size, num_priors, 4)
        conf_targets = torch.zeros(batch_size, num_priors, dtype=torch.long, device=priors.device)
        return loc_targets, conf_targets

    # Padding rows get -1, below every real IoU, so they are never any prior's best truth; without static shapes
    # only the real truths' IoU is computed.
    if static_shapes:
        overlaps = iou(truths.flatten(0, 1), cxcywh_to_xyxy(priors))  # [B*N, P]
        overlaps = overlaps.view(batch_size, max_truths, num_priors)
        overlaps = overlaps.masked_fill(~valid.unsqueeze(-1), -1.0)  # [B, N, P]
    else:
        overlaps = truths.new_full((batch_size, max_truths, num_priors), -1.0)  # [B, N, P]
        overlaps[valid] = iou(truths[valid], cxcywh_to_xyxy(priors))

    best_prior_idx = overlaps.argmax(dim=2)  # [B, N]
    best_truth_overlap, best_truth_idx = overlaps.max(dim=1)  # [B, P]

    # Force each real truth onto its best prior. scatter_reduce "amax" over the truth index makes the
    # later truth win a collision deterministically on every device (a plain scatter does not).
    truth_ids = torch.arange(max_truths, device=priors.device).expand(batch_size, -1)  # [B, N]
    truth_ids = torch.where(valid, truth_ids, torch.full_like(truth_ids, -1))
    forced = torch.full((batch_size, num_priors), -1, dtype=torch.long, device=priors.device)
    forced.scatter_reduce_(1, best_prior_idx, truth_ids, reduce="amax", include_self=True)  # [B, P]
    is_forced = forced >= 0
    best_truth_idx = torch.where(is_forced, forced, best_truth_idx)
    best_truth_overlap = best_truth_overlap.masked_fill(is_forced, 2.0)

    matched = torch.gather(truths, 1, best_truth_idx.unsqueeze(-1).expand(-1, -1, 4))  # [B, P, 4]
    conf_targets = torch.gather(labels, 1, best_truth_idx) + 1  # [B, P]
    conf_targets = conf_targets.masked_fill(best_truth_overlap < threshold, 0)
    return encode(matched, priors, variances), conf_targets
