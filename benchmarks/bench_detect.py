"""(c) Detect against a straightforward per-class Python-loop NMS, on realistic inputs.

The inputs are SSD300 outputs for 21 classes with background-heavy logits, so that about 300 priors per
class pass the 0.01 threshold, as a trained model gives. The baseline is ssd.pytorch's structure: for each
image and class, threshold, take the top_k, then greedy NMS in a Python loop (tests.reference.plain_detect, the
loop the tests check Detect against). Both sides use the same
settings and are checked to find the same detections: Caffe's (top 400 per class, 200 per image; Detect's
defaults), and ssd.pytorch's (top 200 per class, no cap per image).

    python -m benchmarks.bench_detect --batch 1
"""

from __future__ import annotations

import torch

from benchmarks.common import get_args_parser, measure, report, setup
from layers.detection import Detect
from layers.prior_box import prior_boxes, prior_config
from tests.reference import plain_detect


def same_detections(loop: list[list[tuple[float, int, list[float]]]], batched: list[dict]) -> bool:
    """Whether the loop and Detect found the same detections: per image, the same scores in each class. (Two
    near-equal scores may come out in either order: a GPU's softmax can differ from a CPU's in the last bit.)"""

    def by_class(labels: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = scores.argsort(descending=True, stable=True)
        order = order[labels[order].argsort(stable=True)]
        return labels[order], scores[order]

    for per_image, result in zip(loop, batched, strict=True):
        if len(per_image) != len(result["labels"]):
            return False
        if not per_image:
            continue
        loop_labels = torch.tensor([label for _, label, _ in per_image])
        loop_scores = torch.tensor([score for score, _, _ in per_image])
        labels_a, scores_a = by_class(loop_labels, loop_scores)
        labels_b, scores_b = by_class(result["labels"].cpu(), result["scores"].cpu())
        if not (torch.equal(labels_a, labels_b) and torch.allclose(scores_a, scores_b)):
            return False
    return True


def realistic_outputs(
    batch: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    priors = prior_boxes(prior_config("VOC", 300)).to(device)
    g = torch.Generator().manual_seed(seed)
    loc = (torch.randn(batch, priors.shape[0], 4, generator=g) * 0.5).to(device)
    conf = torch.randn(batch, priors.shape[0], 21, generator=g) * 1.6
    conf[..., 0] += 8.5  # about 300 priors per class above 0.01
    return loc, conf.to(device), priors


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args()
    device = setup(args)
    loc, conf, priors = realistic_outputs(args.batch, device)
    passing = (conf.softmax(-1)[..., 1:] > 0.01).sum(1).float().mean().item()
    detect, ssd_pytorch_detect = Detect(21), Detect(21, top_k=200, keep_top_k=None)
    for settings, fast in (({}, detect), ({"top_k": 200, "keep_top_k": None}, ssd_pytorch_detect)):
        if not same_detections(plain_detect(loc, conf, priors, **settings), fast(loc, conf, priors)):
            raise SystemExit(f"error: Detect and the loop disagree with settings {settings or 'Caffe'}")
    results = measure(
        {
            "per-class loop NMS": lambda: plain_detect(loc, conf, priors),
            "Detect": lambda: detect(loc, conf, priors),
            "loop, ssd.pytorch settings": lambda: plain_detect(loc, conf, priors, top_k=200, keep_top_k=None),
            "Detect, ssd.pytorch settings": lambda: ssd_pytorch_detect(loc, conf, priors),
        },
        rounds=args.rounds, warmup=args.warmup, number=args.number, device=device,
    )  # fmt: skip
    ssd_pytorch_ratio = (
        results["loop, ssd.pytorch settings"]["median_s"] / results["Detect, ssd.pytorch settings"]["median_s"]
    )
    report(f"detect_b{args.batch}", results, "per-class loop NMS", args, device, per_call_items=args.batch,
           extra={"priors_passing_per_class": passing, "ssd_pytorch_settings_speedup": ssd_pytorch_ratio})  # fmt: skip
    print(f"with ssd.pytorch's settings (top 200 per class, no cap): Detect is {ssd_pytorch_ratio:.1f}x the loop")
    print(f"priors above 0.01 per class and image: {passing:.0f}")


if __name__ == "__main__":
    main()
