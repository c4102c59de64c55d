"""(b) end-to-end inference: preprocess a 500x375 BGR image, run SSD300, Detect; against torchvision.

Baselines: torchvision's ssd300_vgg16 called on the image (its own resize/normalise, network and
post-processing with the same settings: score 0.01, NMS 0.45, 400 candidates, 200 per image), and a plain
pipeline of an eager NCHW forward and the per-class loop NMS (tests.reference.plain_detect). All networks have random weights, so every
pipeline does the NMS work of an untrained model (many candidates): an upper bound on post-processing.

    python -m benchmarks.bench_end_to_end --batch 1
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import get_args_parser, measure, report, setup
from layers.detection import Detect
from ssd import build_ssd
from tests.reference import plain_detect
from utils.augmentations import BaseTransform
from utils.runtime import InferenceModel


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args()
    device = setup(args)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(args.batch)]
    torch.manual_seed(0)
    model = build_ssd(300, 21).to(device).eval()
    plain = build_ssd(300, 21).to(device).eval()
    plain.load_state_dict(model.state_dict())
    network = InferenceModel(model, cuda_graph=True)  # as inference.py runs it (graphs on a GPU only)
    transform, detect = BaseTransform(300), Detect(21)

    def preprocess() -> torch.Tensor:  # [B, 3, 300, 300], as inference.py's Predictor
        return torch.from_numpy(np.stack([transform(image)[0] for image in images]))

    def pipeline(net: InferenceModel) -> Callable[[], None]:
        return lambda: detect(*net(preprocess()), net.priors)

    def plain_pipeline() -> None:
        with torch.no_grad():
            loc, conf = plain(preprocess().to(device))
            plain_detect(loc, conf, plain.priors)

    from torchvision.models.detection import ssd300_vgg16

    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).to(device).eval()

    def torchvision_pipeline() -> None:
        tensors = [
            torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float().div(255).to(device) for image in images
        ]
        with torch.no_grad():
            tv(tensors)

    outputs = network(preprocess())

    candidates = {
        "torchvision ssd300_vgg16": torchvision_pipeline,
        "plain eager + loop NMS": plain_pipeline,
        "SSD + Detect": pipeline(network),
        "Detect alone": lambda: detect(*outputs, model.priors),  # its share of "SSD + Detect"
    }
    if args.amp:
        candidates["SSD + Detect, amp"] = pipeline(InferenceModel(model, amp=True, cuda_graph=True))
    results = measure(candidates, rounds=args.rounds, warmup=args.warmup, number=args.number, device=device)
    plain_ratio = results["plain eager + loop NMS"]["median_s"] / results["SSD + Detect"]["median_s"]
    detect_share = results["Detect alone"]["median_s"] / results["SSD + Detect"]["median_s"]
    report(f"end_to_end_b{args.batch}", results, "torchvision ssd300_vgg16", args, device, per_call_items=args.batch,
           extra={"speedup_vs_plain_pipeline": plain_ratio, "detect_share": detect_share})  # fmt: skip
    print(f"SSD + Detect vs plain eager + loop NMS: {plain_ratio:.2f}x; Detect is {100 * detect_share:.1f}% of it")


if __name__ == "__main__":
    main()
