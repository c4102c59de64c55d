"""Plain, loop-based reference implementations of ssd.pytorch's and py-faster-rcnn's semantics.

The tests compare the project's batched code with them, and the benchmarks time them as the baselines (they
keep those projects' structure: a loop per image, per class, per kept box or per detection). They share no
code with the project beyond what they are handed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def plain_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of xyxy boxes a [N, 4] and b [M, 4] -> [N, M], as ssd.pytorch's jaccard: [N, M, 2] corners."""
    max_xy = torch.min(a[:, None, 2:].expand(-1, b.shape[0], 2), b[None, :, 2:].expand(a.shape[0], -1, 2))
    min_xy = torch.max(a[:, None, :2].expand(-1, b.shape[0], 2), b[None, :, :2].expand(a.shape[0], -1, 2))
    wh = (max_xy - min_xy).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / (area_a + area_b - inter)


def plain_point_form(priors: Tensor) -> Tensor:
    return torch.stack(
        [priors[:, 0] - priors[:, 2] / 2, priors[:, 1] - priors[:, 3] / 2,
         priors[:, 0] + priors[:, 2] / 2, priors[:, 1] + priors[:, 3] / 2], dim=1
    )  # fmt: skip


def plain_encode(matched: Tensor, priors: Tensor, variances=(0.1, 0.2)) -> Tensor:
    cxcy = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    wh = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variances[1]
    return torch.cat([cxcy, wh], 1)


def plain_decode(loc: Tensor, priors: Tensor, variances=(0.1, 0.2)) -> Tensor:
    cxcy = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    wh = priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])
    return torch.cat([cxcy - wh / 2, cxcy + wh / 2], 1)


def plain_match(target: Tensor, priors: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """ssd.pytorch's match() for one image; target [N, 5]. An empty image is all background."""
    num_priors = priors.shape[0]
    if target.shape[0] == 0:
        return priors.new_zeros(num_priors, 4), torch.zeros(num_priors, dtype=torch.long, device=priors.device)
    truths, labels = target[:, :4], target[:, 4].long()
    overlaps = plain_iou(truths, plain_point_form(priors))
    best_prior_idx = overlaps.argmax(1)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap.index_fill_(0, best_prior_idx, 2.0)
    for j in range(truths.shape[0]):  # later truths overwrite earlier ones, as in ssd.pytorch
        best_truth_idx[best_prior_idx[j]] = j
    conf = labels[best_truth_idx] + 1
    conf[best_truth_overlap < threshold] = 0
    return plain_encode(truths[best_truth_idx], priors), conf


def plain_multibox_loss(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    targets: list[Tensor],
    neg_pos_ratio: int = 3,
    empty_negatives: int = 100,
    ignore: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """ssd.pytorch's MultiBoxLoss with its mask bug fixed: match() image by image, then smooth-L1 on the positives
    and cross-entropy on them and each image's ``neg_pos_ratio`` hardest negatives per positive (ranked by a double
    sort; ``empty_negatives`` in an image without positives), both divided by the number of positives. Priors
    flagged in ``ignore`` [B, P] are never negatives."""
    matched = [plain_match(target, priors) for target in targets]
    loc_t = torch.stack([loc_target for loc_target, _ in matched])  # [B, P, 4]
    conf_t = torch.stack([conf_target for _, conf_target in matched])  # [B, P]
    pos = conf_t > 0
    num_pos = pos.sum(1, keepdim=True)  # [B, 1]
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    ce = F.cross_entropy(conf.reshape(-1, conf.shape[-1]), conf_t.reshape(-1), reduction="none").view(conf_t.shape)
    ignore = torch.zeros_like(pos) if ignore is None else ignore & ~pos
    mining = ce.detach().masked_fill(pos, 0.0).masked_fill(ignore, float("-inf"))
    rank = mining.argsort(1, descending=True).argsort(1)  # [B, P] each prior's place in its image's ranking
    num_neg = torch.where(num_pos > 0, neg_pos_ratio * num_pos, empty_negatives).clamp(max=priors.shape[0] - 1)
    loss_c = ce[pos | ((rank < num_neg) & ~ignore)].sum()
    total = max(int(num_pos.sum()), 1)
    return loss_l / total, loss_c / total


def plain_nms(boxes: Tensor, scores: Tensor, threshold: float, top_k: int | None = None) -> list[int]:
    """ssd.pytorch's nms: among the ``top_k`` best scores, keep the best remaining box and drop the boxes whose
    IoU with it exceeds ``threshold``, one kept box at a time. Returns the kept indices, best first."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    order = scores.argsort()  # ascending: the best box is last
    order = order[-top_k:] if top_k is not None else order
    keep = []
    while order.numel() > 0:
        best, order = order[-1], order[:-1]
        keep.append(int(best))
        inter_w = (x2[order].clamp(max=x2[best]) - x1[order].clamp(min=x1[best])).clamp(min=0)
        inter_h = (y2[order].clamp(max=y2[best]) - y1[order].clamp(min=y1[best])).clamp(min=0)
        inter = inter_w * inter_h
        order = order[inter / (area[order] - inter + area[best]) <= threshold]
    return keep


def plain_detect(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    conf_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    top_k: int = 400,
    keep_top_k: int | None = 200,
) -> list[list[tuple[float, int, list[float]]]]:
    """Per image, per class loop: threshold, NMS on the top_k; then sort by score and cap at keep_top_k (Caffe
    SSD's settings by default, as Detect's; ssd.pytorch's are top_k=200, keep_top_k=None).

    Returns, per image, ``(score, label, xyxy box)`` tuples, best first; labels count from 1 (0 is background).
    """
    results = []
    for i in range(loc.shape[0]):
        boxes = plain_decode(loc[i], priors)
        scores = F.softmax(conf[i], dim=-1)
        found = []
        for cl in range(1, conf.shape[-1]):
            mask = scores[:, cl] > conf_thresh
            cls_scores, cls_boxes = scores[mask, cl], boxes[mask]
            keep = plain_nms(cls_boxes, cls_scores, nms_thresh, top_k)
            kept_scores, kept_boxes = cls_scores[keep].tolist(), cls_boxes[keep].tolist()
            found += [(score, cl, box) for score, box in zip(kept_scores, kept_boxes, strict=True)]
        found.sort(key=lambda item: -item[0])
        results.append(found[:keep_top_k] if keep_top_k is not None else found)
    return results


def float64_nms(boxes: Tensor, threshold: float) -> list[int]:
    """Greedy NMS of ``boxes`` (xyxy) listed best first, with IoU in float64 computed as torchvision's CPU kernel
    does (``inter / (area_a + area_b - inter)``): keep the first box left, drop the later boxes whose IoU with it
    exceeds ``threshold``, one kept box at a time. Returns the kept positions, best first."""
    x1, y1, x2, y2 = boxes.double().unbind(1)
    area = (x2 - x1) * (y2 - y1)
    remaining = torch.arange(boxes.shape[0])
    keep = []
    while remaining.numel() > 0:
        best, remaining = int(remaining[0]), remaining[1:]
        keep.append(best)
        inter_w = (torch.minimum(x2[remaining], x2[best]) - torch.maximum(x1[remaining], x1[best])).clamp(min=0)
        inter_h = (torch.minimum(y2[remaining], y2[best]) - torch.maximum(y1[remaining], y1[best])).clamp(min=0)
        inter = inter_w * inter_h
        remaining = remaining[~(inter / (area[best] + area[remaining] - inter) > threshold)]  # NaN IoU keeps
    return keep


def float64_detect(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    conf_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    top_k: int = 400,
    keep_top_k: int | None = 200,
) -> list[dict[str, Tensor]]:
    """Detect's definition as a loop per image and class: keep the priors scoring above ``conf_thresh``, the
    ``top_k`` best of them (equal scores: the lower prior first), :func:`float64_nms`; then the image's detections
    of all classes by descending score (equal scores: the lower prior, then the lower class) and the first
    ``keep_top_k``. Boxes are decoded in float32, the boxes returned; only the IoU is float64.

    Returns, per image, ``boxes`` [K, 4] (float32, xyxy), ``scores`` [K], ``labels`` [K] (1..C-1) and ``priors``
    [K] (the prior of each detection), best first.
    """
    results = []
    for i in range(loc.shape[0]):
        boxes = plain_decode(loc[i], priors)
        scores = F.softmax(conf[i], dim=-1)
        found = []  # (score, prior, label)
        for cl in range(1, conf.shape[-1]):
            candidates = (scores[:, cl] > conf_thresh).nonzero().squeeze(1)  # ascending prior index
            candidates = candidates[scores[candidates, cl].argsort(descending=True, stable=True)][:top_k]
            for k in float64_nms(boxes[candidates], nms_thresh):
                prior = int(candidates[k])
                found.append((float(scores[prior, cl]), prior, cl))
        found.sort(key=lambda item: (-item[0], item[1], item[2]))
        found = found[:keep_top_k] if keep_top_k is not None else found
        kept_priors = torch.tensor([prior for _, prior, _ in found], dtype=torch.long)
        labels = torch.tensor([label for _, _, label in found], dtype=torch.long)
        results.append(
            {
                "boxes": boxes[kept_priors],
                "scores": scores[kept_priors, labels],
                "labels": labels,
                "priors": kept_priors,
            }
        )
    return results


def near_threshold_pairs(
    a: dict[str, Tensor], b: dict[str, Tensor], threshold: float, margin: float = 1e-5
) -> list[tuple[int, tuple[float, ...], tuple[float, ...]]]:
    """The pairs of detections of one label, among those of ``a`` and ``b`` together, whose float64 IoU lies
    within ``margin`` of ``threshold``: NMS in float32 (onnxruntime, torchvision on float32 boxes) may decide such
    a pair otherwise than in float64. Each pair is ``(label, box, box)``, the boxes as tuples of floats in
    ascending order, so that a test can name the pairs it leaves out of a comparison. (A box decided otherwise
    can in turn decide a third box otherwise, which no pair names; that needs an IoU within float32's rounding
    of the threshold, about 1e-7 for boxes a tenth of the image wide.)

    ``a`` and ``b`` hold ``boxes`` [K, 4] (xyxy) and ``labels`` [K].
    """
    boxes = torch.cat([a["boxes"], b["boxes"]]).double().cpu()
    labels = torch.cat([a["labels"], b["labels"]]).cpu()
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    inter_w = (torch.minimum(x2[:, None], x2) - torch.maximum(x1[:, None], x1)).clamp(min=0)
    inter_h = (torch.minimum(y2[:, None], y2) - torch.maximum(y1[:, None], y1)).clamp(min=0)
    inter = inter_w * inter_h
    near = ((inter / (area[:, None] + area - inter) - threshold).abs() <= margin) & (labels[:, None] == labels)
    pairs = set()
    for i, j in near.triu(diagonal=1).nonzero().tolist():
        first, second = sorted([tuple(boxes[i].tolist()), tuple(boxes[j].tolist())])
        pairs.add((int(labels[i]), first, second))
    return sorted(pairs)


def detections_outside_pairs(
    detections: dict[str, Tensor], pairs: list[tuple[int, tuple[float, ...], tuple[float, ...]]]
) -> set[tuple[int, tuple[float, ...]]]:
    """``detections`` as a set of ``(label, box)``, without those named in ``pairs`` (see
    :func:`near_threshold_pairs`)."""
    named = {(label, box) for label, first, second in pairs for box in (first, second)}
    found = zip(detections["labels"].tolist(), map(tuple, detections["boxes"].double().tolist()), strict=True)
    return {(label, box) for label, box in found} - named


# ssd.pytorch's SSD300 as a flat table: vgg index -> op. Convs are (in, out); relu follows each conv.
SSD_PYTORCH_VGG_CONVS = {
    0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
    31: (512, 1024), 33: (1024, 1024),
}  # fmt: skip
SSD_PYTORCH_POOLS = {4: "2x2", 9: "2x2", 16: "2x2 ceil", 23: "2x2", 30: "3x3 s1 p1"}
SSD_PYTORCH_EXTRAS = [
    (1024, 256, 1),
    (256, 512, 3),
    (512, 128, 1),
    (128, 256, 3),
    (256, 128, 1),
    (128, 256, 3),
    (256, 128, 1),
    (128, 256, 3),
]
SSD_PYTORCH_MBOX = [4, 6, 6, 6, 4, 4]
SSD_PYTORCH_SOURCE_CHANNELS = [512, 1024, 512, 256, 256, 256]


def ssd_pytorch_shapes(num_classes: int = 21) -> dict[str, tuple[int, ...]]:
    """The 71 state_dict entries of ssd.pytorch's build_ssd('train', 300, num_classes)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for idx, (cin, cout) in SSD_PYTORCH_VGG_CONVS.items():
        k = 1 if idx == 33 else 3
        shapes[f"vgg.{idx}.weight"] = (cout, cin, k, k)
        shapes[f"vgg.{idx}.bias"] = (cout,)
    shapes["L2Norm.weight"] = (512,)
    for idx, (cin, cout, k) in enumerate(SSD_PYTORCH_EXTRAS):
        shapes[f"extras.{idx}.weight"] = (cout, cin, k, k)
        shapes[f"extras.{idx}.bias"] = (cout,)
    for head, per_box in (("loc", 4), ("conf", num_classes)):
        for idx, (channels, boxes) in enumerate(zip(SSD_PYTORCH_SOURCE_CHANNELS, SSD_PYTORCH_MBOX, strict=True)):
            shapes[f"{head}.{idx}.weight"] = (boxes * per_box, channels, 3, 3)
            shapes[f"{head}.{idx}.bias"] = (boxes * per_box,)
    return shapes


def ssd_pytorch_forward(state: dict[str, Tensor], x: Tensor, num_classes: int = 21) -> tuple[Tensor, Tensor]:
    """ssd.pytorch's SSD.forward (train phase) for SSD300, written functionally over a state_dict."""
    sources = []
    for idx in range(35):
        if idx in SSD_PYTORCH_VGG_CONVS:
            padding, dilation = (6, 6) if idx == 31 else ((0, 1) if idx == 33 else (1, 1))
            x = F.conv2d(x, state[f"vgg.{idx}.weight"], state[f"vgg.{idx}.bias"], padding=padding, dilation=dilation)
        elif idx in SSD_PYTORCH_POOLS:
            kind = SSD_PYTORCH_POOLS[idx]
            x = F.max_pool2d(x, 3, 1, 1) if kind.startswith("3x3") else F.max_pool2d(x, 2, 2, ceil_mode="ceil" in kind)
        else:
            x = F.relu(x)
        if idx == 22:  # conv4_3's relu
            norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
            sources.append(state["L2Norm.weight"].view(1, -1, 1, 1) * x / norm)
    sources.append(x)
    for idx in range(8):
        stride, padding = (2, 1) if idx in (1, 3) else (1, 0)
        x = F.relu(
            F.conv2d(x, state[f"extras.{idx}.weight"], state[f"extras.{idx}.bias"], stride=stride, padding=padding)
        )
        if idx % 2 == 1:
            sources.append(x)
    loc, conf = [], []
    for k, source in enumerate(sources):
        loc.append(
            F.conv2d(source, state[f"loc.{k}.weight"], state[f"loc.{k}.bias"], padding=1)
            .permute(0, 2, 3, 1)
            .contiguous()
        )
        conf.append(
            F.conv2d(source, state[f"conf.{k}.weight"], state[f"conf.{k}.bias"], padding=1)
            .permute(0, 2, 3, 1)
            .contiguous()
        )
    loc_flat = torch.cat([o.view(o.size(0), -1) for o in loc], 1)
    conf_flat = torch.cat([o.view(o.size(0), -1) for o in conf], 1)
    return loc_flat.view(loc_flat.size(0), -1, 4), conf_flat.view(conf_flat.size(0), -1, num_classes)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, Tensor]:
    """A state_dict of the given shapes with small random values (scaled so activations stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        fan_in = max(1, int(torch.tensor(shape[1:]).prod().item())) if len(shape) > 1 else 1
        state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def loop_voc_eval(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_difficults, cls, iou_thresh=0.5,
                  use_07_metric=True, pixel_offset=1.0, detection_shift=0.0, via_results_file=False):  # fmt: skip
    """py-faster-rcnn's voc_eval for one class: rank the class's detections, then a Python loop over them, each
    compared with its image's ground truth of the class (numpy over those boxes).

    Detections are listed image by image, as in a results file, and ranked with a stable sort (the devkit's
    MATLAB sort). With ``via_results_file`` each detection goes through ssd.pytorch's results-file line
    ("{:.3f}" score, "{:.1f}" corners after the shift) and is parsed back. Returns the AP (nan without
    ground truth).
    """
    import numpy as np

    recs = {}
    npos = 0
    for i, (boxes, labels, difficult) in enumerate(zip(gt_boxes, gt_labels, gt_difficults, strict=True)):
        keep = labels == cls
        recs[i] = {"bbox": boxes[keep], "difficult": difficult[keep], "det": np.zeros(int(keep.sum()), bool)}
        npos += int((~difficult[keep]).sum())
    image_ids, confidence, bbs = [], [np.zeros(0)], [np.zeros((0, 4))]
    for i, (boxes, labels, scores) in enumerate(zip(pred_boxes, pred_labels, pred_scores, strict=True)):
        keep = labels == cls
        image_ids += [i] * int(keep.sum())
        confidence.append(np.asarray(scores, np.float64)[keep])
        bbs.append(np.asarray(boxes, np.float64).reshape(-1, 4)[keep] + detection_shift)
    confidence, bbs = np.concatenate(confidence), np.concatenate(bbs)
    if via_results_file:
        lines = ["{:.3f} {:.1f} {:.1f} {:.1f} {:.1f}".format(*row) for row in np.column_stack([confidence, bbs])]
        values = np.array([[float(v) for v in line.split()] for line in lines]).reshape(-1, 5)
        confidence, bbs = values[:, 0], values[:, 1:]
    order = np.argsort(-confidence, kind="stable")
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for d, k in enumerate(order):
        rec = recs[image_ids[k]]
        bb, gt = bbs[k], rec["bbox"]
        ovmax = -np.inf
        if gt.size > 0:
            iw = np.maximum(np.minimum(gt[:, 2], bb[2]) - np.maximum(gt[:, 0], bb[0]) + pixel_offset, 0.0)
            ih = np.maximum(np.minimum(gt[:, 3], bb[3]) - np.maximum(gt[:, 1], bb[1]) + pixel_offset, 0.0)
            inters = iw * ih
            union = (
                (bb[2] - bb[0] + pixel_offset) * (bb[3] - bb[1] + pixel_offset)
                + (gt[:, 2] - gt[:, 0] + pixel_offset) * (gt[:, 3] - gt[:, 1] + pixel_offset)
                - inters
            )
            overlaps = inters / union
            ovmax, jmax = overlaps.max(), overlaps.argmax()
        if ovmax > iou_thresh:
            if not rec["difficult"][jmax]:
                if not rec["det"][jmax]:
                    tp[d] = 1.0
                    rec["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if npos == 0:
        return float("nan")
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap += p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
