"""(k) Deployment: the preprocessed batch -> detections, PyTorch against onnxruntime (raw graph + this project's
Detect, the end-to-end graph with NMS inside, and its INT8 version), in one run.

The baseline is PyTorch + Detect as inference.py runs it. All models are SSD300 with random weights (so every
pipeline does an untrained model's NMS work: many candidates), or with ``--weights`` a checkpoint of yours; the
INT8 model is calibrated on ``--calib_images`` random batches (speed only: its accuracy is measured on real data
with ``python -m utils.deploy.export --int8`` and eval.py, see docs/deploy.md, "Deploy").

    python -m benchmarks.bench_deploy --batch 1
    python -m benchmarks.bench_deploy --batch 8 --rounds 3
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import get_args_parser, measure, report, setup
from layers.detection import Detect
from ssd import build_ssd
from utils.checkpoint import DetectorInfo, load_detector
from utils.cli import POSITIVE_INT
from utils.deploy.export import ExportSpec, export_onnx, quantize_int8
from utils.predict import OnnxRunner
from utils.runtime import InferenceModel


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="a checkpoint (default: SSD300, 21 classes, random weights)")
    parser.add_argument("--calib_images", type=POSITIVE_INT, default=16, help="random images to calibrate INT8 on")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier of the random SSD300")
    args = parser.parse_args()
    device = setup(args)
    if args.weights:
        model, info = load_detector(args.weights)
    else:
        torch.manual_seed(0)
        model = build_ssd(300, 21, width=args.width).eval()
        info = DetectorInfo(model.config, tuple(f"class{k}" for k in range(20)))
    size = model.config.size
    batch = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
    network = InferenceModel(model.to(device))
    detect = Detect.from_settings(info.num_classes, info.postprocess)
    with tempfile.TemporaryDirectory() as tmp:
        raw = OnnxRunner(export_onnx(model.cpu(), info, Path(tmp) / "raw.onnx"))
        end_to_end_path = export_onnx(model, info, Path(tmp) / "e2e.onnx", ExportSpec("detections", info.postprocess))
        calibration = (np.random.default_rng(k).normal(0, 50, (3, size, size)).astype(np.float32)
                       for k in range(args.calib_images))  # fmt: skip
        int8 = OnnxRunner(quantize_int8(end_to_end_path, Path(tmp) / "int8.onnx", calibration))
        end_to_end = OnnxRunner(end_to_end_path)
    priors = raw.priors

    candidates = {
        "PyTorch + Detect": lambda: detect(*network(batch), network.priors),
        "onnxruntime raw + Detect": lambda: detect(*raw(batch), priors),
        "onnxruntime end to end": lambda: end_to_end(batch),
        "onnxruntime INT8 end to end": lambda: int8(batch),
    }
    results = measure(candidates, rounds=args.rounds, warmup=args.warmup, number=args.number, device=device)
    fp32 = results["onnxruntime end to end"]["median_s"]
    int8_ratio = fp32 / results["onnxruntime INT8 end to end"]["median_s"]
    report(f"deploy_b{args.batch}", results, "PyTorch + Detect", args, device, per_call_items=args.batch,
           extra={"int8_speedup_vs_fp32_onnxruntime": int8_ratio})  # fmt: skip
    print(f"onnxruntime INT8 end to end vs float32 end to end: {int8_ratio:.2f}x")


if __name__ == "__main__":
    main()
