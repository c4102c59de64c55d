"""Run every benchmark and gather their JSON results in runs/bench/all.json.

python -m benchmarks.run_all            # CPU, all cores
python -m benchmarks.run_all --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# (module in benchmarks/, extra arguments); each writes runs/bench/<name>.json
SUITE = [
    ("bench_forward", ["--batch", "1", "--amp"]),
    ("bench_forward", ["--batch", "8", "--rounds", "3"]),
    ("bench_end_to_end", ["--batch", "1", "--amp"]),
    ("bench_end_to_end", ["--batch", "8", "--rounds", "3"]),
    # the other backbones (docs/backbones.md, "Backbones"): SSDLite320 against torchvision's, ResNet-50 SSD300 against itself
    ("bench_forward", ["--backbone", "mobilenet_v3_large", "--batch", "1", "--amp"]),
    ("bench_forward", ["--backbone", "mobilenet_v3_large", "--batch", "8", "--rounds", "3"]),
    ("bench_end_to_end", ["--backbone", "mobilenet_v3_large", "--batch", "1"]),
    ("bench_end_to_end", ["--backbone", "mobilenet_v3_large", "--batch", "8", "--rounds", "3"]),
    ("bench_forward", ["--backbone", "resnet50", "--batch", "1", "--no_compile"]),
    ("bench_forward", ["--backbone", "resnet50", "--batch", "8", "--rounds", "3", "--no_compile"]),
    ("bench_end_to_end", ["--backbone", "resnet50", "--batch", "1"]),
    ("bench_detect", ["--batch", "1"]),
    ("bench_loss", ["--batch", "32"]),
    ("bench_train_step", ["--batch", "8", "--amp"]),
    ("bench_train_step", ["--batch", "8", "--width", "0.125", "--batch_norm"]),
    ("bench_augmentation", []),
    ("bench_loader", []),
    ("bench_deploy", ["--batch", "1"]),
    ("bench_deploy", ["--batch", "8", "--rounds", "3"]),
    ("bench_voc_eval", []),
    ("bench_page_faults", []),  # a diagnostic: what utils.cli.keep_freed_memory saves
]
# On a GPU: the figures (inference FPS at batch 1 and 8, training images/s at batch 32, all with AMP).
# Augmentation and the VOC metric run on the CPU whatever the device, so the CPU suite covers them.
CUDA_SUITE = [
    ("bench_forward", ["--batch", "1", "--amp"]),
    ("bench_forward", ["--batch", "8", "--amp", "--no_compile"]),
    ("bench_end_to_end", ["--batch", "1", "--amp"]),
    ("bench_end_to_end", ["--batch", "8", "--amp", "--rounds", "3"]),  # its loop baseline: ~11 s a call
    ("bench_forward", ["--backbone", "mobilenet_v3_large", "--batch", "1", "--amp"]),
    ("bench_forward", ["--backbone", "mobilenet_v3_large", "--batch", "8", "--amp", "--no_compile"]),
    ("bench_end_to_end", ["--backbone", "mobilenet_v3_large", "--batch", "1", "--amp"]),
    ("bench_detect", ["--batch", "1"]),
    ("bench_loss", ["--batch", "32"]),
    ("bench_train_step", ["--batch", "32", "--amp"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gathered, failed = {}, []
    for module, extra in CUDA_SUITE if args.device == "cuda" else SUITE:
        name = f"{module}{'_' + '_'.join(a.lstrip('-') for a in extra) if extra else ''}"
        out = args.out / f"{name}.json"
        # The children find benchmarks/ as this process did (`python -m benchmarks.run_all` in the repository).
        command = [sys.executable, "-m", f"benchmarks.{module}", *extra, "--out", str(out)]
        if module != "bench_augmentation":  # the augmentation benchmark is a one-core CPU measurement
            command += ["--device", args.device]
        print(f"$ python {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(command).returncode != 0:
            failed.append(name)
            continue
        gathered[name] = json.loads(out.read_text())
        print(f"({time.perf_counter() - start:.0f} s)\n", flush=True)
    (args.out / "all.json").write_text(json.dumps(gathered, indent=2))
    print(f"results: {args.out / 'all.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
