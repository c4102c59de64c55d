"""(g) The VOC metric on a VOC07-test-sized synthetic set, against the classic per-detection loop.

4952 images, 20 classes, about 2.4 ground truths (10% difficult) and 200 detections per image, as SSD
gives at keep_top_k=200. The baseline is py-faster-rcnn's voc_eval: per class, rank the detections, then
loop over them one by one (numpy over the image's ground truths). Both must agree; the script checks it.

    python benchmarks/bench_voc_eval.py
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import get_args_parser, measure, report, setup  # noqa: E402
from utils.voc_eval import eval_detection_voc, voc_ap  # noqa: E402


def synthetic_set(num_images: int, num_classes: int, dets_per_image: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = {k: [] for k in ("pred_boxes", "pred_labels", "pred_scores", "gt_boxes", "gt_labels", "gt_difficults")}
    for _ in range(num_images):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 400, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(20, 200, (n, 2))], 1).round()
        data["gt_boxes"].append(gt)
        data["gt_labels"].append(rng.integers(0, num_classes, n))
        data["gt_difficults"].append(rng.random(n) < 0.1)
        near = rng.integers(0, n, dets_per_image // 10)
        boxes = np.concatenate(
            [
                gt[near] + rng.normal(0, 8, (len(near), 4)),
                np.concatenate(
                    [
                        xy2 := rng.uniform(0, 450, (dets_per_image - len(near), 2)),
                        xy2 + rng.uniform(10, 150, xy2.shape),
                    ],
                    1,
                ),
            ]
        )
        labels = np.concatenate([data["gt_labels"][-1][near], rng.integers(0, num_classes, dets_per_image - len(near))])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(near)), rng.uniform(0.01, 0.4, dets_per_image - len(near))])
        data["pred_boxes"].append(boxes)
        data["pred_labels"].append(labels)
        data["pred_scores"].append(scores)
    return data


def loop_voc_eval(data: dict, num_classes: int, use_07_metric: bool = True) -> np.ndarray:
    """py-faster-rcnn's voc_eval, class by class: the per-detection loop."""
    aps = np.full(num_classes, np.nan)
    for cls in range(num_classes):
        recs, npos = {}, 0
        for i, (boxes, labels, difficult) in enumerate(
            zip(data["gt_boxes"], data["gt_labels"], data["gt_difficults"], strict=True)
        ):
            keep = labels == cls
            recs[i] = {"bbox": boxes[keep], "difficult": difficult[keep], "det": np.zeros(int(keep.sum()), bool)}
            npos += int((~difficult[keep]).sum())
        image_ids, confidence, bbs = [], [], []
        for i, (boxes, labels, scores) in enumerate(
            zip(data["pred_boxes"], data["pred_labels"], data["pred_scores"], strict=True)
        ):
            keep = labels == cls
            image_ids.extend([i] * int(keep.sum()))
            confidence.append(scores[keep])
            bbs.append(boxes[keep])
        confidence, bbs = np.concatenate(confidence), np.concatenate(bbs)
        order = np.argsort(-confidence, kind="stable")
        bbs = bbs[order]
        image_ids = [image_ids[k] for k in order]
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for d in range(len(order)):
            rec = recs[image_ids[d]]
            bb, gt = bbs[d], rec["bbox"]
            ovmax = -np.inf
            if gt.size > 0:
                iw = np.maximum(np.minimum(gt[:, 2], bb[2]) - np.maximum(gt[:, 0], bb[0]) + 1.0, 0.0)
                ih = np.maximum(np.minimum(gt[:, 3], bb[3]) - np.maximum(gt[:, 1], bb[1]) + 1.0, 0.0)
                inters = iw * ih
                uni = (
                    (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                    + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0)
                    - inters
                )
                overlaps = inters / uni
                ovmax, jmax = overlaps.max(), overlaps.argmax()
            if ovmax > 0.5:
                if not rec["difficult"][jmax]:
                    if not rec["det"][jmax]:
                        tp[d], rec["det"][jmax] = 1.0, True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        if npos:
            aps[cls] = voc_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps), use_07_metric)
    return aps


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4952)
    parser.add_argument("--dets", type=int, default=200)
    parser.set_defaults(rounds=3, warmup=0, number=1)
    args = parser.parse_args()
    device = setup(args)
    data = synthetic_set(args.images, 20, args.dets)
    ours, loop = eval_detection_voc(**data, num_classes=20)["ap"], loop_voc_eval(data, 20)
    np.testing.assert_allclose(ours, loop, rtol=0, atol=1e-9)
    results = measure(
        {
            "per-detection loop": lambda: loop_voc_eval(data, 20),
            "eval_detection_voc": lambda: eval_detection_voc(**data, num_classes=20),
        },
        rounds=args.rounds,
        warmup=args.warmup,
    )
    report("voc_eval", results, "per-detection loop", args, device,
           extra={"images": args.images, "detections": int(sum(len(s) for s in data["pred_scores"])), "map": float(np.nanmean(ours))})  # fmt: skip


if __name__ == "__main__":
    main()
