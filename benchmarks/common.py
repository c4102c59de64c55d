"""The benchmark harness: interleaved rounds, median/min/max, ratios against a baseline, JSON results.

Every script measures its candidates and their baseline in the same process, alternating them round by
round so that drift of the machine (heat, other load) hits both alike. Speed is reported as ratios; no test
asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssd import BACKBONES, SSD, build_ssd
from utils.cli import NON_NEGATIVE_INT, POSITIVE_INT, configure_torch

# Each backbone's baseline: torchvision's model of the same architecture; torchvision has no ResNet-50 SSD.
TORCHVISION_BUILDERS = {"vgg16": "ssd300_vgg16", "mobilenet_v3_large": "ssdlite320_mobilenet_v3_large"}


def get_args_parser(description: str, batch: int = 1) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch/OpenCV threads (default: all cores)")
    parser.add_argument("--batch", type=POSITIVE_INT, default=batch)
    parser.add_argument("--amp", action="store_true",
                        help="also measure mixed precision: float16 autocast on CUDA; bfloat16 for inference on a CPU")  # fmt: skip
    parser.add_argument("--rounds", type=POSITIVE_INT, default=7, help="measured rounds per candidate")
    parser.add_argument("--warmup", type=NON_NEGATIVE_INT, default=2, help="unmeasured rounds per candidate")
    parser.add_argument("--number", type=POSITIVE_INT, default=None,
                        help="calls per round (default: enough to fill 50 ms, counted from the last warm-up round)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (default: runs/bench/<name>.json)")
    return parser


def add_backbone_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="vgg16")
    parser.add_argument("--classes", type=POSITIVE_INT, default=None,
                        help="C with the background; default 91 for mobilenet_v3_large (torchvision's COCO SSDLite), "
                             "else 21 (VOC)")  # fmt: skip


def benchmark_models(backbone: str, num_classes: int | None, device: torch.device) -> tuple[SSD, nn.Module | None]:
    """This project's network of ``backbone`` and torchvision's model of the same architecture (None for resnet50),
    with the same weights: random ones, converted from torchvision's (``utils.deploy.convert_torchvision``).

    The BatchNorm statistics of the BatchNorm backbones come from one batch of random images: with fresh statistics
    SSDLite's activations sink into denormal numbers, which CPUs compute many times slower than a trained network's.
    """
    from tests.fixtures import calibrate_batch_norm
    from utils.deploy.convert_torchvision import from_torchvision

    num_classes = num_classes or (91 if backbone == "mobilenet_v3_large" else 21)
    torch.manual_seed(0)
    if backbone not in TORCHVISION_BUILDERS:
        model = build_ssd(backbone=backbone, num_classes=num_classes)
        size = model.config.size
        calibrate_batch_norm(model, lambda: model(torch.randn(4, 3, size, size)))
        return model.to(device).eval(), None
    import torchvision

    build = getattr(torchvision.models.detection, TORCHVISION_BUILDERS[backbone])
    tv = build(weights=None, weights_backbone=None, num_classes=num_classes)
    if backbone != "vgg16":
        batch = torch.randn(4, 3, 320, 320)
        calibrate_batch_norm(tv, lambda: tv.head(list(tv.backbone(batch).values())))
    model, _ = from_torchvision(tv.state_dict())
    return model.to(device).eval(), tv.to(device).eval()


def setup(args: argparse.Namespace) -> torch.device:
    configure_torch()  # as the scripts run (utils/cli.py), for every candidate alike
    if args.threads:
        torch.set_num_threads(args.threads)
        import cv2

        cv2.setNumThreads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible")
    return torch.device(args.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def without_cudnn_autotuner(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with cuDNN's heuristic algorithm choice instead of its autotuner's (utils.cli.configure_torch
    turns the autotuner on): what ``cudnn.benchmark`` is worth."""

    def call() -> Any:
        torch.backends.cudnn.benchmark = False
        try:
            return fn()
        finally:
            torch.backends.cudnn.benchmark = True

    return call


def measure(
    candidates: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int,
    number: int | None = 1,
    device: torch.device | None = None,
    min_round_s: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Time each candidate ``rounds`` times, interleaved; seconds per call: median, min, max.

    A round makes ``number`` calls back to back (on a GPU they queue up, so a round measures throughput). With
    ``number=None`` each candidate makes as many as fill ``min_round_s``, counted from its last warm-up round
    (then at least one warm-up round runs): a 2 ms call timed alone is mostly timer and launch noise.
    """
    device = device or torch.device("cpu")
    warmup = max(warmup, 1) if number is None else warmup
    calls = dict.fromkeys(candidates, number or 1)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(warmup + rounds):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            synchronize(device)
            per_call = (time.perf_counter() - start) / calls[name]
            if r >= warmup:
                times[name].append(per_call)
            elif number is None and r == warmup - 1:
                calls[name] = max(1, math.ceil(min_round_s / per_call))
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "rounds": len(ts),
            "calls_per_round": calls[name],
        }
        for name, ts in times.items()
    }


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def report(
    name: str,
    results: dict[str, dict[str, float]],
    baseline: str,
    args: argparse.Namespace,
    device: torch.device,
    per_call_items: int = 1,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Print a table with ratios against ``baseline`` and write the JSON results."""
    base = results[baseline]["median_s"]
    print(f"# {name} ({machine_line(device)})")
    print(f"{'candidate':<28}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'items/s':>10}{'speed-up':>10}")
    for candidate, stats in results.items():
        stats["items_per_s"] = per_call_items / stats["median_s"]
        stats["speedup_vs_baseline"] = base / stats["median_s"]
        print(
            f"{candidate:<28}{stats['median_s'] * 1e3:>11.3f}{stats['min_s'] * 1e3:>9.3f}{stats['max_s'] * 1e3:>9.3f}"
            f"{stats['items_per_s']:>10.1f}{stats['speedup_vs_baseline']:>9.2f}x"
        )
    payload = {
        "benchmark": name,
        "machine": machine_line(device),
        "args": {k: str(v) for k, v in vars(args).items()},
        "baseline": baseline,
        "results": results,
        **(extra or {}),
    }
    out = args.out or Path("runs/bench") / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    return payload
