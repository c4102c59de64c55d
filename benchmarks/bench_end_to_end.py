"""(b) end-to-end inference: preprocess a 500x375 BGR image, run the network, Detect; against torchvision.

For --backbone vgg16 (SSD300) and mobilenet_v3_large (SSDLite320) the baseline is torchvision's model of the same
architecture and weights (ssd300_vgg16, ssdlite320_mobilenet_v3_large) called on the image: its own resize and
normalisation, network and post-processing, with its own settings (ssd300_vgg16: score 0.01, NMS 0.45, 400
candidates, 200 per image; ssdlite: 0.001, 0.55, 300, 300). This project's pipeline, as inference.py runs it:

* "SSD + Detect": a model trained here (OpenCV resize, utils.runtime.InferenceModel, Detect with the backbone's
  test settings, which are torchvision's numbers for SSDLite);
* "converted checkpoint": the same weights as a checkpoint from utils.deploy.convert_torchvision (torchvision's resize, the
  network run exactly, boxes clipped and clamped as torchvision does: its detections);
* "Detect alone" and "torchvision post-processing alone": each side's post-processing on its own network's outputs,
  so that the network and the post-processing can be told apart (torchvision's SSDLite post-processing is slow at
  score 0.001: a per-class loop over 90 classes and a batched NMS of up to 27,000 boxes).

For vgg16 also a plain pipeline of an eager NCHW forward and the per-class loop NMS (tests.reference.plain_detect).
For resnet50, which torchvision lacks, the baseline is the plain eager network with Detect. All networks have random
weights, so every pipeline does the NMS work of an untrained model (many candidates): an upper bound on
post-processing.

    python -m benchmarks.bench_end_to_end --batch 1
    python -m benchmarks.bench_end_to_end --backbone mobilenet_v3_large --batch 1
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import (
    TORCHVISION_BUILDERS,
    add_backbone_flags,
    benchmark_models,
    get_args_parser,
    measure,
    report,
    setup,
)
from layers.detection import Detect
from ssd import BACKBONES
from tests.reference import plain_detect
from utils.deploy.convert_torchvision import BUILDER_OF_BACKBONE
from utils.runtime import InferenceModel
from utils.transforms import PIXEL_NORMS


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    add_backbone_flags(parser)
    args = parser.parse_args()
    device = setup(args)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(args.batch)]
    model, tv = benchmark_models(args.backbone, args.classes, device)
    num_classes, size = model.num_classes, model.config.size
    plain = copy.deepcopy(model)
    network = InferenceModel(model, cuda_graph=True)  # as inference.py runs it (graphs on a GPU only)
    transform = PIXEL_NORMS["caffe" if args.backbone == "vgg16" else "torchvision"].transform(size)
    detect = Detect.from_settings(num_classes, BACKBONES[args.backbone].test_settings)

    def preprocess(transform: Callable = transform) -> torch.Tensor:  # [B, 3, S, S], as inference.py's Predictor
        return torch.from_numpy(np.stack([transform(image)[0] for image in images]))

    def pipeline(net: InferenceModel, detect: Detect = detect, transform: Callable = transform) -> Callable[[], None]:
        return lambda: detect(*net(preprocess(transform)), net.priors)

    outputs = network(preprocess())
    candidates = {"SSD + Detect": pipeline(network), "Detect alone": lambda: detect(*outputs, model.priors)}
    if tv is not None:
        design = BUILDER_OF_BACKBONE[args.backbone]
        exact = InferenceModel(model, cuda_graph=True, exact=True)
        converted = pipeline(
            exact, Detect.from_settings(num_classes, design.settings), design.preprocess().transform(size)
        )

        def torchvision_pipeline() -> None:
            tensors = [torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float().div(255).to(device)
                       for image in images]  # fmt: skip
            with torch.no_grad():
                tv(tensors)

        transformed = tv.transform([torch.zeros(3, 375, 500, device=device)] * args.batch)[0]
        with torch.no_grad():
            head = tv.head(list(tv.backbone(torch.randn(args.batch, 3, size, size, device=device)).values()))
            anchors = tv.anchor_generator(transformed, list(tv.backbone(transformed.tensors).values()))

        def torchvision_postprocessing() -> None:
            with torch.no_grad():
                found = tv.postprocess_detections(head, anchors, transformed.image_sizes)
                tv.transform.postprocess(found, transformed.image_sizes, [(375, 500)] * args.batch)

        baseline = f"torchvision {TORCHVISION_BUILDERS[args.backbone]}"
        candidates = {baseline: torchvision_pipeline, **candidates, "converted checkpoint": converted,
                      "torchvision post-processing alone": torchvision_postprocessing}  # fmt: skip
    else:
        baseline = "plain eager + Detect"

        def plain_and_detect() -> None:
            with torch.no_grad():
                detect(*plain(preprocess().to(device)), plain.priors)

        candidates = {baseline: plain_and_detect, **candidates}
    if args.backbone == "vgg16":

        def plain_pipeline() -> None:
            with torch.no_grad():
                loc, conf = plain(preprocess().to(device))
                plain_detect(loc, conf, plain.priors)

        candidates["plain eager + loop NMS"] = plain_pipeline
    if args.amp:
        candidates["SSD + Detect, amp"] = pipeline(InferenceModel(model, amp=True, cuda_graph=True))
    results = measure(candidates, rounds=args.rounds, warmup=args.warmup, number=args.number, device=device)
    detect_share = results["Detect alone"]["median_s"] / results["SSD + Detect"]["median_s"]
    extra = {"detect_share": detect_share}
    if "plain eager + loop NMS" in results:
        extra["speedup_vs_plain_pipeline"] = (
            results["plain eager + loop NMS"]["median_s"] / results["SSD + Detect"]["median_s"]
        )
    name = f"end_to_end_b{args.batch}" if args.backbone == "vgg16" else f"end_to_end_{args.backbone}_b{args.batch}"
    report(name, results, baseline, args, device, per_call_items=args.batch, extra=extra)
    line = f"Detect is {100 * detect_share:.1f}% of SSD + Detect"
    if "speedup_vs_plain_pipeline" in extra:
        line = f"SSD + Detect vs plain eager + loop NMS: {extra['speedup_vs_plain_pipeline']:.2f}x; " + line
    if tv is not None:
        share = results["torchvision post-processing alone"]["median_s"] / results[baseline]["median_s"]
        line += f"; torchvision's post-processing is {100 * share:.1f}% of its pipeline"
    print(line)


if __name__ == "__main__":
    main()
