"""(d) MultiBoxLoss forward + backward against per-image-loop matching.

The baseline is ssd.pytorch's structure: match each image in a Python loop (with its loop over ground
truths), then mine negatives with two full sorts per image. Inputs
are SSD300 outputs at --batch with 1-10 ground truths per image.

    python benchmarks/bench_loss.py --batch 32
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from benchmarks.common import get_args_parser, measure, report, setup  # noqa: E402
from layers.prior_box import prior_config  # noqa: E402
from layers.box_utils import cxcywh_to_xyxy, encode  # noqa: E402
from layers.multibox_loss import MultiBoxLoss  # noqa: E402
from layers.prior_box import prior_boxes  # noqa: E402


def ssd_pytorch_match(
    truths: torch.Tensor, labels: torch.Tensor, priors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ssd.pytorch's match() for one image: broadcast IoU, then a Python loop forcing each truth's best prior."""
    overlaps = box_iou(truths, cxcywh_to_xyxy(priors))  # [N, P]
    best_prior_idx = overlaps.argmax(1)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap.index_fill_(0, best_prior_idx, 2)
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    conf = labels[best_truth_idx].long() + 1
    conf[best_truth_overlap < 0.5] = 0
    return encode(truths[best_truth_idx], priors), conf


def loop_matching_loss(
    loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor, targets: list[torch.Tensor]
) -> torch.Tensor:
    """ssd.pytorch's MultiBoxLoss structure: match image by image, then smooth-L1 and 3:1 hard negatives."""
    loc_t, conf_t = [], []
    for target in targets:
        l_t, c_t = ssd_pytorch_match(target[:, :4], target[:, 4], priors)
        loc_t.append(l_t)
        conf_t.append(c_t)
    loc_t, conf_t = torch.stack(loc_t), torch.stack(conf_t)
    pos = conf_t > 0
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    ce = F.cross_entropy(conf.reshape(-1, conf.shape[-1]), conf_t.reshape(-1), reduction="none").view(conf_t.shape)
    mining = ce.detach().masked_fill(pos, 0)
    rank = mining.argsort(1, descending=True).argsort(1)
    neg = rank < (3 * pos.sum(1, keepdim=True)).clamp(max=pos.shape[1] - 1)
    loss_c = ce[pos | neg].sum()
    return (loss_l + loss_c) / pos.sum().clamp(min=1)


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0], batch=32)
    args = parser.parse_args()
    device = setup(args)
    priors = prior_boxes(prior_config("VOC", 300)).to(device)
    g = torch.Generator().manual_seed(0)
    loc = (torch.randn(args.batch, priors.shape[0], 4, generator=g)).to(device).requires_grad_()
    conf = (torch.randn(args.batch, priors.shape[0], 21, generator=g)).to(device).requires_grad_()
    targets = []
    for _ in range(args.batch):
        n = int(torch.randint(1, 11, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 0.7
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 0.3 + 0.02], 1).clamp(max=1)
        targets.append(torch.cat([boxes, torch.randint(0, 20, (n, 1), generator=g).float()], 1).to(device))
    criterion = MultiBoxLoss(21)

    def batched() -> None:
        loss_l, loss_c = criterion(loc, conf, priors, targets)
        (loss_l + loss_c).backward()

    def looped() -> None:
        loop_matching_loss(loc, conf, priors, targets).backward()

    results = measure({"per-image-loop matching": looped, "MultiBoxLoss": batched}, rounds=args.rounds, warmup=args.warmup,
                      number=args.number, device=device)  # fmt: skip
    report(f"loss_b{args.batch}", results, "per-image-loop matching", args, device, per_call_items=args.batch)


if __name__ == "__main__":
    main()
