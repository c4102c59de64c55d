"""The NMS kernels behind :class:`layers.detection.Detect` and :class:`layers.detection.PaddedDetect`.

* :func:`nms_within_groups`: exact greedy NMS of many groups (image, class) at once, IoU in float64, through
  torchvision's CPU kernel: Detect's exact path.
* :func:`static_detect` with :func:`greedy_fixed_point`: Detect's detections in tensors of fixed sizes, without
  host synchronisation, so that a CUDA graph can record them: Detect's path on a GPU.
* :func:`multiclass_nms`: ONNX's ``NonMaxSuppression`` as a PyTorch operator, for exported end-to-end graphs.

:func:`order_keys` gives the candidates the one total order that every path follows, :func:`rank_within` each
candidate's position within its group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.ops import nms

from layers.box_utils import DEFAULT_VARIANCES, Variances, decode, iou

if TYPE_CHECKING:  # layers.detection imports this module; static_detect only reads the settings' fields
    from layers.detection import DetectSettings

# Boxes per call of torchvision's NMS kernel. A call compares each kept box with every later box of the call,
# whatever its group: fewer boxes per call waste less work across groups, more make fewer calls
# (benchmarks/bench_detect.py).
BOXES_PER_NMS_CALL = 128


def nms_within_groups(boxes: Tensor, group: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each group, with IoU in float64: the same decisions whatever else is in the batch.

    A box is suppressed when its IoU with an earlier kept box of its group exceeds ``iou_threshold``, the IoU
    computed in float64 as torchvision's CPU kernel does (``inter / (area_a + area_b - inter)``). Groups share calls
    of that kernel, each group shifted into a slot of its own: slots are a power of two apart, more than twice the
    largest |coordinate| of the call, so groups cannot overlap. A shift that would round a coordinate would change
    IoUs in the last bits; the groups of a call where one would go through the kernel one by one, unshifted.

    The kernel runs on the CPU whatever the device: torchvision's CUDA kernel compares IoU with the threshold
    rounded to float32 and breaks equal scores in any order.

    Args:
        boxes (Tensor[M, 4]): xyxy, best first: a box can only be suppressed by an earlier box.
        group (Tensor[M]): int64, the group of each box.
        iou_threshold: in [0, 1].

    Returns:
        Tensor[K]: int64 indices of the boxes kept, in no particular order, on the device of ``boxes``.
    """
    device = boxes.device
    boxes, group = boxes.cpu().double(), group.cpu()
    # A box with an inf or NaN coordinate has an inf or NaN area, so its IoU with any box is 0 or NaN: it neither
    # suppresses nor is suppressed.
    finite = boxes.isfinite().all(1)
    unbounded = (~finite).nonzero().squeeze(1)
    order = finite.nonzero().squeeze(1)
    order = order[torch.sort(group[order], stable=True).indices]  # [F] by group, best first within a group
    if order.numel() == 0:
        return unbounded.to(device)
    boxes = boxes[order]  # [F, 4]
    _, group_of_box, sizes = torch.unique_consecutive(group[order], return_inverse=True, return_counts=True)
    # Groups that start in the same window of BOXES_PER_NMS_CALL boxes share a call.
    window = (sizes.cumsum(0) - sizes).div(BOXES_PER_NMS_CALL, rounding_mode="floor")  # [G]
    groups_per_call = torch.unique_consecutive(window, return_counts=True)[1]  # [calls]
    call_of_group = torch.arange(groups_per_call.numel()).repeat_interleave(groups_per_call)  # [G]
    slot = torch.arange(sizes.numel()) - (groups_per_call.cumsum(0) - groups_per_call)[call_of_group]  # [G]
    # A call's boxes lie in [-R, R] with R < 2^e (frexp): slots 2^(e+1) apart.
    call_of_box = call_of_group[group_of_box]  # [F]
    extent = torch.zeros(groups_per_call.numel(), dtype=boxes.dtype)
    extent.scatter_reduce_(0, call_of_box, boxes.abs().amax(1), "amax")  # [calls] R
    slot_width = torch.ldexp(torch.ones_like(extent), torch.frexp(extent).exponent + 1)  # [calls]
    shift = (slot[group_of_box] * slot_width[call_of_box]).unsqueeze(1)  # [F, 1], 0 or >= 2|coordinate|
    shifted = boxes + shift  # [F, 4]
    # Fast2Sum (Dekker): as |shift| >= |x|, (x + shift) - shift is computed exactly; it equals x iff x + shift was.
    inexact_calls = set(call_of_box[((shifted - shift) != boxes).any(1)].tolist())
    priority = -order.double()  # the kernel sorts by score: the earlier box first, without ties
    kept = [unbounded]
    start = 0
    for call, group_sizes in enumerate(sizes.split(groups_per_call.tolist())):
        one_by_one = call in inexact_calls
        source = boxes if one_by_one else shifted
        for size in group_sizes.tolist() if one_by_one else [int(group_sizes.sum())]:
            stop = start + size
            kept.append(order[start + nms(source[start:stop], priority[start:stop], iou_threshold)])
            start = stop
    return torch.cat(kept).to(device)


def order_keys(scores: Tensor, pair_index: Tensor) -> Tensor:
    """Detect's total order of candidates as unique int64 keys, larger first: score descending, equal scores by
    the lower (prior, class) pair. Scores are > 0, so their float32 bits order them as integers; the pair index
    (``prior * (C-1) + class``, < 2^32) only orders equal scores.

    Args:
        scores (Tensor[...]): float32 softmax scores, > 0.
        pair_index (Tensor[...]): int64, broadcasting with ``scores``.
    """
    return (scores.view(torch.int32).long() << 32) - pair_index


def rank_within(keys: Tensor, counts: Tensor) -> Tensor:
    """The position of each element among the elements with its key, in their order.

    Args:
        keys (Tensor[M]): int64 in [0, K).
        counts (Tensor[K]): ``torch.bincount(keys, minlength=K)``.

    Returns:
        Tensor[M]: int64, 0 for the first element of each key.
    """
    by_key = torch.sort(keys, stable=True).indices
    rank = torch.empty_like(keys)
    rank[by_key] = torch.arange(keys.numel(), device=keys.device) - (counts.cumsum(0) - counts)[keys[by_key]]
    return rank


# Rounds of :func:`static_detect`'s NMS (:func:`greedy_fixed_point`). A candidate is final once the candidates that
# decide it are: a box suppressed by a box that was itself suppressed by a kept one takes a round per link of that
# chain, and only chains of overlapping boxes of one class, each better than the next, count. Trained models' chains
# are short; an image whose chains are longer is recomputed exactly, so more rounds trade replay time on every
# image for fewer fallbacks (benchmarks/bench_detect.py reports the rounds that its inputs need).
STATIC_NMS_ROUNDS = 16


def greedy_fixed_point(suppresses: Tensor, entered: Tensor, rounds: int) -> tuple[Tensor, Tensor]:
    """Greedy NMS given who would suppress whom, in a fixed number of tensor operations.

    Greedy NMS keeps an entered candidate unless a kept earlier one suppresses it. As ``suppresses`` only points
    to earlier candidates, the kept set is the unique fixed point of ``keep = entered & ~(suppressed by keep)``
    (by induction over the order), and iterating that map from ``keep = entered`` fixes one more candidate each
    round at least. One more application that changes nothing proves the fixed point reached.

    Args:
        suppresses (Tensor[B, M, M]): bool, ``[b, i, j]``: candidate j, earlier than i (j < i), suppresses i if kept.
        entered (Tensor[B, M]): bool, the candidates in NMS.
        rounds: applications of the map.

    Returns:
        kept (Tensor[B, M]): bool, greedy NMS's kept set where ``converged``.
        converged (Tensor[B]): bool.
    """
    # A matrix product counts each candidate's kept suppressors. A sum of zeros and ones is zero exactly when no
    # term is one, whatever precision the product runs in (TF32, autocast), so only "none" is read from it.
    suppresses = suppresses.float()  # [B, M, M]
    allowed = entered.float().unsqueeze(-1)  # [B, M, 1]
    keep = allowed
    for _ in range(rounds):
        keep = allowed * (torch.bmm(suppresses, keep) == 0)  # [B, M, 1]
    converged = (allowed * (torch.bmm(suppresses, keep) == 0) == keep).all(dim=1).squeeze(-1)  # [B]
    return keep.squeeze(-1) > 0, converged


def static_detect(
    loc_preds: Tensor,
    conf_preds: Tensor,
    priors: Tensor,
    settings: DetectSettings,
    variances: Variances = DEFAULT_VARIANCES,
    candidates: int = 800,
    rounds: int = STATIC_NMS_ROUNDS,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:class:`layers.detection.Detect`'s detections in tensors of fixed sizes, without host synchronisation: every
    operation can be recorded in a CUDA graph. Where ``settled`` holds, an image's detections are exactly Detect's.

    Per image, the candidates are the (prior, class) pairs that pass ``conf_thresh`` and are among the ``top_k``
    best of their class, by Detect's order (score descending, equal scores by prior, then class), and only the
    best ``candidates`` (M) of them are looked at: a candidate's fate depends only on the better candidates of its
    class, so the M decide their own fates exactly, and every candidate beyond them ranks below all of them. NMS
    runs by :func:`greedy_fixed_point` in ``rounds`` iterations, with the IoU in float64 as torchvision's CPU
    kernel computes it; a box with an inf or NaN coordinate neither suppresses nor is suppressed, as in
    :func:`nms_within_groups`.

    An image is settled when one more round changes nothing (so NMS reached its result) and either it keeps at
    least ``keep_top_k`` of its M candidates (those beyond them are all worse) or it has at most M candidates
    (none is beyond them). Otherwise the caller must recompute it exactly.

    Args:
        loc_preds (Tensor[B, P, 4]): regression logits.
        conf_preds (Tensor[B, P, C]): class logits (softmax is applied here).
        priors (Tensor[P, 4]): cxcywh.
        settings: Detect's settings.
        variances: decoding variances.
        candidates: M, the candidates per image looked at; clamped to ``min(top_k, P) * (C - 1)``.
        rounds: iterations of the NMS map.

    Returns:
        num_detections (Tensor[B]): int64, the detections of each image, at most K = ``min(keep_top_k, M)``
            (M without a ``keep_top_k``).
        boxes (Tensor[B, K, 4]): float32 xyxy, relative, best first; padding rows are 0.
        scores (Tensor[B, K]): float32, descending; padding 0.
        labels (Tensor[B, K]): int64 in 1..C-1; padding 0 (the background).
        settled (Tensor[B]): bool, whether the image's detections are exactly Detect's.
    """
    batch_size, num_priors, num_classes = conf_preds.shape
    num_foreground, device = num_classes - 1, conf_preds.device
    num_pairs = num_priors * num_foreground
    scores = conf_preds.float().softmax(dim=-1)[..., 1:].reshape(batch_size, num_pairs)  # [B, P*F], prior-major
    passing = scores > settings.conf_thresh  # [B, P*F]
    # Detect's order as unique int64 keys (order_keys). Pairs that fail the threshold get negative keys, below every
    # passing one and unique too, so that topk has no ties to break in its own way.
    pair = torch.arange(num_pairs, device=device)  # [P*F]
    keys = torch.where(passing, order_keys(scores, pair), -1 - pair)  # [B, P*F]
    pairs = pair.expand(batch_size, -1)  # [B, P*F]
    if settings.top_k < num_priors:  # only each class's top_k best can enter NMS
        keys, top_priors = keys.view(batch_size, num_priors, num_foreground).topk(settings.top_k, dim=1)  # [B, k, F]
        pairs = top_priors * num_foreground + torch.arange(num_foreground, device=device)  # [B, k, F]
        keys, pairs = keys.flatten(1), pairs.flatten(1)  # [B, k*F] each
    num_candidates = min(candidates, keys.shape[1])
    cand_keys, order = keys.topk(num_candidates, dim=1)  # [B, M] each, best first
    cand_pairs = pairs.gather(1, order)  # [B, M]
    cand_scores = scores.gather(1, cand_pairs)  # [B, M]
    prior_idx, class_idx = cand_pairs // num_foreground, cand_pairs % num_foreground  # [B, M] each
    entered = cand_keys > 0  # [B, M]: passing, and among its class's top_k

    position = torch.arange(num_candidates, device=device)
    earlier = position[:, None] > position[None, :]  # [M, M], j < i
    rival = (class_idx[:, :, None] == class_idx[:, None, :]) & earlier  # [B, M, M]: j better than i, same class

    # Decoding is elementwise, so decoding the candidates alone gives the bits Detect's decoding of them gives.
    cand_loc = loc_preds.gather(1, prior_idx.unsqueeze(-1).expand(-1, -1, 4)).float()  # [B, M, 4]
    cand_priors = priors.index_select(0, prior_idx.flatten()).float()  # [B*M, 4]
    cand_boxes = decode(cand_loc.flatten(0, 1), cand_priors, variances, settings.decode_clamp)  # [B*M, 4]
    cand_boxes = cand_boxes.view(batch_size, num_candidates, 4)  # [B, M, 4]
    if settings.clip_boxes:  # torchvision's SSD clips before NMS, so NMS sees the clipped boxes
        cand_boxes = cand_boxes.clamp(min=0.0, max=1.0)

    # In float64, iou's values are torchvision's CPU kernel's to the last bit.
    overlaps = iou(cand_boxes.double(), cand_boxes.double()) > settings.nms_thresh  # [B, M, M]
    active = entered & cand_boxes.isfinite().all(-1)  # [B, M]: an inf or NaN box neither suppresses nor is
    kept, converged = greedy_fixed_point(rival & overlaps & active[:, :, None] & active[:, None], entered, rounds)

    # The kept candidates in order, the first K of each image: output slot k takes the candidate where the
    # running count of kept candidates reaches k + 1.
    num_kept = kept.sum(dim=1)  # [B]
    keep_top_k = settings.keep_top_k
    num_slots = num_candidates if keep_top_k is None else min(keep_top_k, num_candidates)
    slots = torch.arange(num_slots, device=device).expand(batch_size, -1)  # [B, K]
    source = torch.searchsorted(kept.long().cumsum(dim=1), slots + 1).clamp(max=num_candidates - 1)  # [B, K]
    valid = slots < num_kept[:, None]  # [B, K]
    boxes = torch.where(valid[..., None], cand_boxes.gather(1, source[..., None].expand(-1, -1, 4)), 0.0)
    scores_out = torch.where(valid, cand_scores.gather(1, source), 0.0)  # [B, K]
    labels = torch.where(valid, class_idx.gather(1, source) + 1, 0)  # [B, K]

    complete = (keys > 0).sum(dim=1) <= num_candidates  # [B]: no candidate beyond the M
    if keep_top_k is not None:
        complete |= num_kept >= keep_top_k  # the first keep_top_k detections are among the M
    return num_kept.clamp(max=num_slots), boxes, scores_out, labels, converged & complete


@torch.library.custom_op("ssd::multiclass_nms", mutates_args=())
def multiclass_nms(
    boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float, score_threshold: float
) -> Tensor:
    """ONNX's ``NonMaxSuppression`` as a PyTorch operator: per image and class, the boxes scoring strictly
    above ``score_threshold``, best first, greedily suppressed where their IoU with a kept box of the class
    exceeds ``iou_threshold``, at most ``max_per_class`` kept. Exported, it becomes that ONNX operator
    (``utils/deploy/export.py``); run in PyTorch, it is :func:`nms_within_groups` (IoU in float64).

    Args:
        boxes (Tensor[B, N, 4]): xyxy.
        scores (Tensor[B, C, N]): each class's score of each box.

    Returns:
        Tensor[M, 3]: int64 ``(image, class, box)`` of the kept boxes, by image, class and descending score.
    """
    image_idx, class_idx, box_idx = (scores > score_threshold).nonzero(as_tuple=True)  # [M] each
    cand_scores = scores[image_idx, class_idx, box_idx]
    group = image_idx * scores.shape[1] + class_idx
    # By group, then descending score (equal scores: the lower box), as NonMaxSuppression ranks them.
    order = torch.sort(-cand_scores, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    kept = nms_within_groups(boxes[image_idx[order], box_idx[order]], group[order], iou_threshold).sort().values
    kept_group = group[order][kept]
    kept = kept[rank_within(kept_group, torch.bincount(kept_group)) < max_per_class]
    return torch.stack((image_idx, class_idx, box_idx), dim=1)[order][kept]  # [M, 3]


@multiclass_nms.register_fake
def _(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float, score_threshold: float) -> Tensor:
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.int64)
