"""(d) MultiBoxLoss forward + backward against per-image-loop matching.

The baseline is ssd.pytorch's structure (tests.reference.plain_multibox_loss, which the tests check
MultiBoxLoss against): match each image in a Python loop (with its loop over ground truths), then mine
negatives with two full sorts per image. Inputs are SSD300 outputs at --batch with 1-10 ground truths per
image.

    python -m benchmarks.bench_loss --batch 32
"""

from __future__ import annotations

import torch

from benchmarks.common import get_args_parser, measure, report, setup
from layers.multibox_loss import MultiBoxLoss
from layers.prior_box import prior_boxes, prior_config
from tests.reference import plain_multibox_loss


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
        loss_l, loss_c = plain_multibox_loss(loc, conf, priors, targets)
        (loss_l + loss_c).backward()

    results = measure({"per-image-loop matching": looped, "MultiBoxLoss": batched}, rounds=args.rounds, warmup=args.warmup,
                      number=args.number, device=device)  # fmt: skip
    report(f"loss_b{args.batch}", results, "per-image-loop matching", args, device, per_call_items=args.batch)


if __name__ == "__main__":
    main()
