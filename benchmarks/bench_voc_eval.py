"""(g) The VOC metric on a VOC07-test-sized synthetic set, against the classic per-detection loop.

4952 images, 20 classes, about 2.4 ground truths (10% difficult) and 200 detections per image, as SSD
gives at keep_top_k=200. The baseline is py-faster-rcnn's voc_eval: per class, rank the detections, then
loop over them one by one (numpy over the image's ground truths): tests.reference.loop_voc_eval, which the
tests check the metric against. Both must agree; the script checks it.

    python -m benchmarks.bench_voc_eval
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import get_args_parser, measure, report, setup
from tests.reference import loop_voc_eval
from utils.cli import POSITIVE_INT
from utils.evaluation.voc_eval import eval_detection_voc


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


def loop_aps(data: dict, num_classes: int) -> np.ndarray:
    """The per-detection loop's VOC07 AP of every class."""
    return np.array([loop_voc_eval(**data, cls=cls) for cls in range(num_classes)])


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=POSITIVE_INT, default=4952)
    parser.add_argument("--dets", type=POSITIVE_INT, default=200)
    parser.set_defaults(rounds=3, warmup=0, number=1)
    args = parser.parse_args()
    device = setup(args)
    data = synthetic_set(args.images, 20, args.dets)
    ours, loop = eval_detection_voc(**data, num_classes=20)["ap"], loop_aps(data, 20)
    np.testing.assert_allclose(ours, loop, rtol=0, atol=1e-9)
    results = measure(
        {
            "per-detection loop": lambda: loop_aps(data, 20),
            "eval_detection_voc": lambda: eval_detection_voc(**data, num_classes=20),
        },
        rounds=args.rounds,
        warmup=args.warmup,
    )
    report("voc_eval", results, "per-detection loop", args, device,
           extra={"images": args.images, "detections": int(sum(len(s) for s in data["pred_scores"])), "map": float(np.nanmean(ours))})  # fmt: skip


if __name__ == "__main__":
    main()
