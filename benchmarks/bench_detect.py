"""(c) Detect against a straightforward per-class Python-loop NMS, on realistic inputs.

The inputs are SSD300 outputs for 21 classes with background-heavy logits, so that about 300 priors per
class pass the 0.01 threshold, as a trained model gives. The baseline is ssd.pytorch's structure: for each
image and class, threshold, take the top_k, then greedy NMS in a Python loop (tests.reference.plain_detect, the
loop the tests check Detect against). Both sides use the same
settings and are checked to find the same detections: Caffe's (top 400 per class, 200 per image; Detect's
defaults), and ssd.pytorch's (top 200 per class, no cap per image).

It also times the Detect that came before this one, ``OffsetBatchedNmsDetect``: torchvision's ``batched_nms``
in float32 on all groups at once (each group's boxes shifted by ``group x (max coordinate + 1)``), which is not
exact for every input; the new Detect may be at most 10% slower than it. Detect is checked to equal the float64
loop (tests.reference.float64_detect) exactly.

And it times Detect's static path (``layers.nms.static_detect``, Detect's default on a GPU, where it replays
a CUDA graph; forced here on a CPU too) against the exact path it falls back to, checks that the two agree bit for
bit, and reports how many NMS rounds each image needs before the static path settles it.

    python -m benchmarks.bench_detect --batch 1 --device cuda
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from benchmarks.common import get_args_parser, measure, report, setup
from layers.box_utils import decode
from layers.detection import Detect, Detections
from layers.nms import static_detect
from layers.prior_box import prior_boxes, prior_config
from tests.reference import float64_detect, plain_detect


class OffsetBatchedNmsDetect(Detect):
    """Detect as it was before it became exact: topk per column (any of the scores equal at the cut), and
    ``torchvision.ops.batched_nms`` in float32 over all (image, class) groups at once, on the prefixes of
    ``_suppress``. Kept here to time the new Detect against it in the same run."""

    @torch.no_grad()
    def __call__(self, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor) -> list[Detections]:
        batch_size, num_priors, num_classes = conf_preds.shape
        scores = conf_preds.float().softmax(dim=-1)[..., 1:]  # [B, P, C-1]
        passing = scores > self.conf_thresh  # [B, P, C-1]
        if self.top_k < num_priors and passing.sum(dim=1).max() > self.top_k:
            top_scores, top_priors = scores.topk(self.top_k, dim=1)  # [B, top_k, C-1]
            image_idx, rank, class_idx = (top_scores > self.conf_thresh).nonzero(as_tuple=True)  # [M] each
            prior_idx = top_priors[image_idx, rank, class_idx]
        else:
            image_idx, prior_idx, class_idx = passing.nonzero(as_tuple=True)  # [M] each
        order = scores[image_idx, prior_idx, class_idx].argsort(descending=True, stable=True)
        image_idx, prior_idx, class_idx = image_idx[order], prior_idx[order], class_idx[order]
        cand_scores = scores[image_idx, prior_idx, class_idx]  # [M], descending
        group = image_idx * (num_classes - 1) + class_idx
        cand_boxes = decode(loc_preds[image_idx, prior_idx].float(), priors[prior_idx].float(), self.variances)
        kept = self._offset_suppress(cand_boxes, cand_scores, group, image_idx, batch_size).sort().values
        kept = kept[torch.sort(image_idx[kept], stable=True).indices]
        counts = torch.bincount(image_idx[kept], minlength=batch_size).tolist()
        results: list[Detections] = []
        for per_image in torch.split(kept, counts):
            if self.keep_top_k is not None:
                per_image = per_image[: self.keep_top_k]
            results.append(
                {"boxes": cand_boxes[per_image], "scores": cand_scores[per_image], "labels": class_idx[per_image] + 1}
            )
        return results

    def _offset_suppress(
        self, boxes: Tensor, scores: Tensor, group: Tensor, image_idx: Tensor, batch_size: int
    ) -> Tensor:
        if self.keep_top_k is None:
            return batched_nms(boxes, scores, group, self.nms_thresh)
        per_image = torch.bincount(image_idx, minlength=batch_size)  # [B]
        by_image = torch.sort(image_idx, stable=True).indices
        rank = torch.empty_like(image_idx)
        rank[by_image] = (
            torch.arange(image_idx.numel(), device=rank.device) - (per_image.cumsum(0) - per_image)[image_idx[by_image]]
        )
        pending = torch.ones(batch_size, dtype=torch.bool, device=boxes.device)
        kept_parts: list[Tensor] = []
        prefix = 4 * self.keep_top_k
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


def equals_float64_loop(expected: list[dict[str, torch.Tensor]], batched: list[dict]) -> bool:
    """Whether Detect found exactly the float64 loop's detections: same labels, scores and boxes, in order."""
    return all(
        all(torch.equal(result[key].cpu(), reference[key]) for key in ("boxes", "scores", "labels"))
        for result, reference in zip(batched, expected, strict=True)
    )


def rounds_needed(detect: Detect, loc: Tensor, conf: Tensor, priors: Tensor, limit: int = 64) -> list[int | None]:
    """Per image, the fewest NMS rounds after which :func:`static_detect` settles it with ``detect``'s settings and
    candidates; None where it does not settle within ``limit`` (more candidates than it looks at, too few kept)."""
    needed: list[int | None] = [None] * loc.shape[0]
    for rounds in range(limit + 1):
        settled = static_detect(loc, conf, priors, detect.settings, detect.variances, detect.candidates, rounds)[4]
        for i, done in enumerate(settled.tolist()):  # settled after r rounds: after any more too
            if done and needed[i] is None:
                needed[i] = rounds
        if None not in needed:
            break
    return needed


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args()
    device = setup(args)
    loc, conf, priors = realistic_outputs(args.batch, device)
    passing = (conf.softmax(-1)[..., 1:] > 0.01).sum(1).float().mean().item()
    caffe, ssd_pytorch = {}, {"top_k": 200, "keep_top_k": None}
    # The exact path on any device (Detect's default on a CPU), and the static path (its default on a GPU).
    detect, ssd_pytorch_detect = Detect(21, static=False, **caffe), Detect(21, static=False, **ssd_pytorch)
    static, ssd_pytorch_static = Detect(21, static=True, **caffe), Detect(21, static=True, **ssd_pytorch)
    before, ssd_pytorch_before = OffsetBatchedNmsDetect(21, **caffe), OffsetBatchedNmsDetect(21, **ssd_pytorch)
    cpu_inputs = (loc.cpu(), conf.cpu(), priors.cpu())
    for settings, fast, old in ((caffe, detect, before), (ssd_pytorch, ssd_pytorch_detect, ssd_pytorch_before)):
        name = settings or "Caffe"
        if not same_detections(plain_detect(*cpu_inputs, **settings), old(loc, conf, priors)):
            raise SystemExit(f"error: the Detect before and the loop disagree with settings {name}")
        if not same_detections(plain_detect(*cpu_inputs, **settings), fast(loc, conf, priors)):
            raise SystemExit(f"error: Detect and the loop disagree with settings {name}")
        # Bit for bit on the CPU (a GPU's softmax may differ from the CPU's in the last bit).
        if device.type == "cpu" and not equals_float64_loop(float64_detect(*cpu_inputs, **settings), fast(*cpu_inputs)):
            raise SystemExit(f"error: Detect and the float64 loop disagree with settings {name}")
    for settings, exact, static_path in (
        (caffe, detect, static),
        (ssd_pytorch, ssd_pytorch_detect, ssd_pytorch_static),
    ):
        for got, want in zip(static_path(loc, conf, priors), exact(loc, conf, priors), strict=True):
            if not all(torch.equal(got[key], want[key]) for key in ("boxes", "scores", "labels")):
                raise SystemExit(f"error: Detect's static and exact paths disagree with settings {settings or 'Caffe'}")
    timing = {"rounds": args.rounds, "warmup": args.warmup, "number": args.number, "device": device}
    loops = {
        "per-class loop NMS": lambda: plain_detect(loc, conf, priors),
        "loop, ssd.pytorch settings": lambda: plain_detect(loc, conf, priors, **ssd_pytorch),
    }
    detects = {
        "Detect": lambda: detect(loc, conf, priors),
        "Detect before (offset NMS)": lambda: before(loc, conf, priors),
        "Detect, ssd.pytorch settings": lambda: ssd_pytorch_detect(loc, conf, priors),
        "before, ssd.pytorch settings": lambda: ssd_pytorch_before(loc, conf, priors),
        "Detect, static path": lambda: static(loc, conf, priors),
        "static, ssd.pytorch settings": lambda: ssd_pytorch_static(loc, conf, priors),
    }
    # The Detects alternate among themselves: a call right after a loop's long Python run starts with cold caches,
    # which would favour whichever Detect does not follow a loop.
    results = {**measure(loops, **timing), **measure(detects, **timing)}

    def ratio(slow: str, fast: str) -> float:
        return results[slow]["median_s"] / results[fast]["median_s"]

    ssd_pytorch_ratio = ratio("loop, ssd.pytorch settings", "Detect, ssd.pytorch settings")
    new_over_old = ratio("Detect", "Detect before (offset NMS)")
    new_over_old_ssd_pytorch = ratio("Detect, ssd.pytorch settings", "before, ssd.pytorch settings")
    static_over_exact = ratio("Detect, static path", "Detect")
    static_over_exact_ssd_pytorch = ratio("static, ssd.pytorch settings", "Detect, ssd.pytorch settings")
    needed = rounds_needed(static, loc, conf, priors)
    needed_ssd_pytorch = rounds_needed(ssd_pytorch_static, loc, conf, priors)
    report(f"detect_b{args.batch}", results, "per-class loop NMS", args, device, per_call_items=args.batch,
           extra={"priors_passing_per_class": passing, "ssd_pytorch_settings_speedup": ssd_pytorch_ratio,
                  "time_over_before": new_over_old, "time_over_before_ssd_pytorch_settings": new_over_old_ssd_pytorch,
                  "static_time_over_exact": static_over_exact,
                  "static_time_over_exact_ssd_pytorch_settings": static_over_exact_ssd_pytorch,
                  "static_rounds": static.rounds, "static_rounds_needed": needed,
                  "static_rounds_needed_ssd_pytorch_settings": needed_ssd_pytorch})  # fmt: skip
    print(f"with ssd.pytorch's settings (top 200 per class, no cap): Detect is {ssd_pytorch_ratio:.1f}x the loop")
    print(f"Detect's time over the Detect before it: {new_over_old:.3f} (Caffe's settings), "
          f"{new_over_old_ssd_pytorch:.3f} (ssd.pytorch's)")  # fmt: skip
    print(f"priors above 0.01 per class and image: {passing:.0f}")
    print(f"static path's time over the exact path's: {static_over_exact:.3f} (Caffe's settings), "
          f"{static_over_exact_ssd_pytorch:.3f} (ssd.pytorch's)")  # fmt: skip
    print(f"NMS rounds each image needs to settle (static path runs {static.rounds}; None: falls back whatever the "
          f"rounds): {needed} (Caffe's settings), {needed_ssd_pytorch} (ssd.pytorch's)")  # fmt: skip


if __name__ == "__main__":
    main()
