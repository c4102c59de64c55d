"""Page faults and time of an SSD300 forward with glibc's default allocator and with utils.cli.keep_freed_memory.

A diagnostic of what keep_freed_memory buys. By default glibc returns each freed multi-MiB activation to the OS
and maps fresh, zero-filled pages for the next forward, which page-faults on every one of them;
keep_freed_memory keeps freed blocks in the process. mallopt settings are process-wide, so each setting runs
in a process of its own (the rounds are not interleaved, unlike the other benchmarks): warm-up forwards until
the heap reaches its steady state, then measured forwards, each counting the process's minor page faults
(getrusage) and its time. The counts depend on the allocator, the thread count and the machine's load, so they
are reported, never asserted.

    python -m benchmarks.bench_page_faults
    python -m benchmarks.bench_page_faults --batch 4 --width 0.125
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import get_args_parser, report, setup
from ssd import build_ssd
from utils.cli import keep_freed_memory
from utils.runtime import InferenceModel

SETTINGS = {"glibc default": "default", "keep_freed_memory": "keep"}  # candidate -> --setting


def measure_here(args: argparse.Namespace) -> dict:
    """Run the forwards in this process, with the allocator of ``args.setting``; returns the raw counts."""
    import resource  # Unix only

    if args.threads:
        torch.set_num_threads(args.threads)
    took = keep_freed_memory() if args.setting == "keep" else False
    torch.manual_seed(0)
    network = InferenceModel(build_ssd(300, 21, width=args.width))  # as eval.py and inference.py run it
    images = torch.randn(args.batch, 3, 300, 300)
    for _ in range(args.warmup):
        network(images)
    seconds, page_faults = [], []
    for _ in range(args.rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        network(images)
        seconds.append(time.perf_counter() - start)
        page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"keep_freed_memory_took": took, "seconds": seconds, "page_faults": page_faults}


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=1.0, help="network width (0.125: the demo's)")
    parser.add_argument("--setting", choices=sorted(SETTINGS.values()), help=argparse.SUPPRESS)  # one child's
    parser.set_defaults(warmup=5, rounds=5)  # the heap settles within the 3rd or 4th forward
    args = parser.parse_args()
    if args.setting:  # a child: print the counts of one setting as JSON
        print(json.dumps(measure_here(args)))
        return
    if args.device != "cpu" or not sys.platform.startswith("linux"):
        raise SystemExit("error: page faults of host memory are measured on a Linux CPU only (--device cpu)")
    device = setup(args)
    forwarded = ["--batch", str(args.batch), "--width", str(args.width), "--warmup", str(args.warmup),
                 "--rounds", str(args.rounds), *(["--threads", str(args.threads)] if args.threads else [])]  # fmt: skip
    results, took = {}, {}
    for name, setting in SETTINGS.items():
        command = [sys.executable, "-m", "benchmarks.bench_page_faults", *forwarded, "--setting", setting]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"error: the {name} run failed:\n{child.stderr}")
        counts = json.loads(child.stdout.splitlines()[-1])
        took[name] = counts["keep_freed_memory_took"]
        results[name] = {
            "median_s": statistics.median(counts["seconds"]),
            "min_s": min(counts["seconds"]),
            "max_s": max(counts["seconds"]),
            "rounds": len(counts["seconds"]),
            "calls_per_round": 1,
            "page_faults_per_forward": statistics.median(counts["page_faults"]),
            "page_faults": counts["page_faults"],
        }
    report(f"page_faults_b{args.batch}_w{args.width:g}", results, "glibc default", args, device,
           per_call_items=args.batch, extra={"keep_freed_memory_took": took})  # fmt: skip
    for name, stats in results.items():
        print(f"{name}: {stats['page_faults_per_forward']:.0f} page faults per forward (median of {stats['rounds']})")
    if not took["keep_freed_memory"]:
        print("keep_freed_memory() did not take here (not glibc?): both runs used the default allocator")


if __name__ == "__main__":
    main()
