"""The GPU session's one script (docs/performance.md, "The GPU session's script"): the figures of the GPU-throughput issue, in its order, as JSON.

1. the SSD300 training step with AMP, lever by lever (channels_last + batched loss, bfloat16, fused SGD,
   torch.compile, the CUDA-graph static step) and by batch size, then train.py's whole loop (its data loader
   included) on VOC-sized JPEGs, eager and with --cuda_graph;
2. batch-1 latency from a decoded image to detections, with Detect's share;
3. eval.py over a VOC07-test-sized set (4,952 JPEGs of 500x375, generated here: too large to carry), from the
   command to the printed mAP, with the interpreter + import and CUDA start-up times measured apart; and JPEG
   decoding on the GPU (nvJPEG) against OpenCV's, in time and in pixels (bench_decode).

    python -m benchmarks.gpu_report --out $OUT/gpu_report.json                        # on the GPU machine
    python -m benchmarks.gpu_report --device cpu --quick --out /tmp/gpu_report.json    # the CPU rehearsal
    python -m benchmarks.gpu_report --steps latency eval --out $OUT/gpu_report.json    # some groups only

Each step runs in its own process (a crash or a timeout loses one figure, not the rest) and the JSON is
rewritten after each, so what finished survives a time limit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The step groups, in the order of priority (the JPEGs are written when train_py or eval runs).
STEPS = ("train_step", "train_py", "latency", "eval")


def run(command: list[str], timeout: float) -> dict:
    """Run ``command`` from the repository root; its wall time, exit status and the tail of its output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        status, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as error:
        status, stdout, stderr = "timeout", str(error.stdout or ""), str(error.stderr or "")
    return {"command": " ".join(command[1:]), "status": status, "wall_s": time.perf_counter() - start,
            "stdout_tail": stdout[-3000:], "stderr_tail": stderr[-1500:]}  # fmt: skip


def bench(module: str, extra: list[str], out: Path, timeout: float) -> dict:
    result = run([sys.executable, "-m", f"benchmarks.{module}", *extra, "--out", str(out)], timeout)
    if out.is_file():
        result["results"] = json.loads(out.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gpu_report.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a rehearsal of every step on a CPU")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                        help="the groups to run, in this order (one call each fits a shorter time limit)")  # fmt: skip
    parser.add_argument("--train_batches", type=int, nargs="+", default=[32, 64, 128],
                        help="train_step: the batch sizes of the lever-by-lever step (--quick: 2)")  # fmt: skip
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": args.device, "steps": {}}

    def record(name: str, result: dict, log: Path | None = None) -> None:
        """Add a step's result (and the last record of its train.py log) to the JSON, rewritten at once."""
        if log is not None and log.is_file():
            result["log"] = json.loads(log.read_text().splitlines()[-1])
        report["steps"][name] = result
        args.out.write_text(json.dumps(report, indent=2))
        print(f"{name}: status {result['status']}, {result['wall_s']:.1f} s", flush=True)

    record("versions", run([sys.executable, "-c", "import torch, torchvision; print(torch.__version__, "
                            "torchvision.__version__, torch.version.cuda, torch.cuda.is_available() and "
                            "torch.cuda.get_device_name(0))"], 120))  # fmt: skip
    quick = ["--rounds", "1", "--warmup", "1", "--width", "0.125", "--batch_norm"] if args.quick else ["--rounds", "5"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. training step, lever by lever, then by batch size
        for batch in ([2] if args.quick else args.train_batches) if "train_step" in args.steps else []:
            record(f"train_step_b{batch}_amp_levers",
                   bench("bench_train_step", ["--device", args.device, "--batch", str(batch), "--amp", "--levers",
                                              *quick], tmp / f"train_b{batch}.json", 900))  # fmt: skip
        # train.py's loop on VOC-sized JPEGs: does the loader feed the GPU?
        images = 64 if args.quick else 4952
        data = tmp / "voc_sized"
        if {"train_py", "eval"} & set(args.steps):
            record("write_voc_sized_set", run([sys.executable, "-c", "from pathlib import Path; from benchmarks."
                                               f"bench_loader import write_voc_sized_set as w; w(Path({str(data)!r}), "
                                               f"{images}, 'test')"], 1800))  # fmt: skip
        listing = data / "ImageSets" / "Main"
        if (listing / "test.txt").is_file():  # train on the same images: a speed figure, not a result
            (listing / "trainval.txt").write_text((listing / "test.txt").read_text())
        (tmp / "voc_classes.txt").write_text("\n".join(voc_classes()) + "\n")
        custom = ["--dataset", "Custom", "--classes", str(tmp / "voc_classes.txt"), "--dataset_root", str(data)]
        batch = "8" if args.quick else "64"
        # the last: train.py under torchrun with one process, NCCL on a GPU (gloo on a CPU), to exercise that path
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py"]
        train_runs = [("train_py_one_epoch", ["train.py"], []),
                      ("train_py_one_epoch_cuda_graph", ["train.py"], ["--cuda_graph"]),
                      ("torchrun_one_process", torchrun, [])]  # fmt: skip
        for name, launch, levers in train_runs if "train_py" in args.steps else []:
            project = tmp / name
            command = [sys.executable, *launch, *custom, "--basenet", "none", "--batch_size", batch, "--end_epoch",
                       "1", "--eval_interval", "0", "--amp", "--device", args.device, *levers, "--num_workers",
                       "2" if args.quick else "12", "--project", str(project),
                       *(["--width", "0.125", "--batch_norm"] if args.quick else [])]  # fmt: skip
            record(name, run(command, 1800), log=project / "exp1" / "log.txt")
        # 2. batch-1 latency, Detect's share; Detect's static (CUDA-graph) path against its exact one
        short = ["--rounds", "1", "--warmup", "1"] if args.quick else []
        if "latency" in args.steps:
            record("end_to_end_b1_amp", bench("bench_end_to_end", ["--device", args.device, "--batch", "1", "--amp",
                                                                   *short], tmp / "e2e_b1.json", 900))  # fmt: skip
            for batch in ["1", "8"]:
                record(f"detect_b{batch}", bench("bench_detect", ["--device", args.device, "--batch", batch, *short],
                                                 tmp / f"detect_b{batch}.json", 900))  # fmt: skip
        if "eval" not in args.steps:
            print(f"wrote {args.out}")
            return 0
        # 3. eval.py over the VOC07-test-sized set, and its start-up apart; GPU decoding: equal pixels? faster?
        record("decode", bench("bench_decode", ["--device", args.device, "--images", "256" if args.quick else "4952",
                                                *short], tmp / "decode.json", 900))  # fmt: skip
        record("python_and_imports", run([sys.executable, "-c", "import eval"], 300))
        record("cuda_start", run([sys.executable, "-c", "import torch; torch.zeros(1, device='cuda'); "
                                  "torch.cuda.synchronize()"], 300) if args.device == "cuda" else
               {"status": "skipped", "wall_s": 0.0})  # fmt: skip
        weights = tmp / "random.pth"
        record("random_checkpoint", run([sys.executable, "-c", "from ssd import build_ssd; from utils.checkpoint import "
                                         "DetectorInfo, save_checkpoint; from data.config import VOC_CLASSES; "
                                         f"m = build_ssd(300, 21{', width=0.125' if args.quick else ''}); "
                                         f"save_checkpoint({str(weights)!r}, m, DetectorInfo(m.config, VOC_CLASSES))"],
                                        300))  # fmt: skip
        record("eval_py_voc07_sized", run([sys.executable, "eval.py", "--weights", str(weights), *custom, "--image_set",
                                           "test", "--device", args.device, "--batch_size", "64", "--num_workers",
                                           "2" if args.quick else "12", "--amp", "--project", str(tmp / "eval")], 1800))  # fmt: skip
    print(f"wrote {args.out}")
    return 0


def voc_classes() -> tuple[str, ...]:
    from data.config import VOC_CLASSES

    return VOC_CLASSES


if __name__ == "__main__":
    sys.exit(main())
