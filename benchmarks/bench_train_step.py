"""(e) one training step (forward, MultiBoxLoss, backward, SGD) at --batch, images/s.

The baseline is a plain eager step: NCHW tensors and ssd.pytorch's per-image-loop matching
(tests.reference.plain_multibox_loss). The candidate
is train.py's step: channels_last and the batched MultiBoxLoss; with --amp also in mixed precision (float16
on a GPU, bfloat16 on a CPU), as train.py --amp. --width 0.125 --batch_norm measures the small network used
for CPU runs.

    python -m benchmarks.bench_train_step --batch 8
    python -m benchmarks.bench_train_step --batch 8 --width 0.125 --batch_norm
    python -m benchmarks.bench_train_step --batch 8 --profile     # where the step's time goes
    python -m benchmarks.bench_train_step --device cuda --batch 64 --amp --levers   # each lever on its own

--levers adds, each with the one before it: bfloat16 instead of float16 (GPU), fused SGD, torch.compile of the
model, and train.py --cuda_graph's static step (utils/engine/static_step.py: recorded and replayed on a GPU, eager on a
CPU; its batch is copied from the host at every step, as train.py's loader delivers it).
"""

from __future__ import annotations

import torch

from benchmarks.bench_forward import count_macs
from benchmarks.common import get_args_parser, measure, report, setup, synchronize, without_cudnn_autotuner
from layers.multibox_loss import MultiBoxLoss
from ssd import build_ssd
from tests.reference import plain_multibox_loss
from utils.engine.static_step import StaticTrainStep
from utils.engine.step import TrainStep, apply_update
from utils.runtime import mixed_precision_dtype

# Dense (no sparsity) bfloat16 tensor-core peaks of the GPUs this is likely to run on, in TFLOP/s, from NVIDIA's
# data sheets; the first name that the device's name contains wins.
DENSE_BF16_PEAK_TFLOPS = {"H200": 989.5, "H100 PCIe": 756.0, "H100": 989.5, "A100": 312.0, "L40S": 362.05}


def dense_bf16_peak_tflops(device: torch.device) -> float | None:
    """The GPU's dense bfloat16 peak, if :data:`DENSE_BF16_PEAK_TFLOPS` knows it; None on a CPU or another GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DENSE_BF16_PEAK_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0], batch=8)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch_norm", action="store_true")
    parser.add_argument("--levers", action="store_true",
                        help="also the training-speed levers one by one: bfloat16, fused SGD, torch.compile of the "
                             "model, the static step (train.py --cuda_graph: a CUDA graph on a GPU)")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="also profile one train.py step after the rounds (torch.profiler, top operators)")  # fmt: skip
    parser.set_defaults(rounds=3, warmup=3)  # the allocator reaches its peak footprint in ~3 steps
    args = parser.parse_args()
    device = setup(args)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 300, 300, generator=g).to(device)
    targets = []
    for _ in range(args.batch):
        xy = torch.rand(3, 2, generator=g) * 0.6
        boxes = torch.cat([xy, xy + 0.3], 1)
        targets.append(torch.cat([boxes, torch.randint(0, 20, (3, 1), generator=g).float()], 1).to(device))

    def make(channels_last: bool, amp: bool = False, fused: bool = False, compiled: bool = False,  # noqa: ANN202
             dtype: torch.dtype | None = None, static: bool = False):  # fmt: skip
        torch.manual_seed(0)
        model = build_ssd(300, 21, width=args.width, batch_norm=args.batch_norm).to(device).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, fused=fused or None)
        forward = torch.compile(model) if compiled else model
        criterion = MultiBoxLoss(21)
        batch = images.contiguous(memory_format=fmt)
        dtype = dtype or (mixed_precision_dtype(device) if amp else None)
        if static:  # train.py --cuda_graph: targets come from the loader on the CPU, the batch is copied in
            step = StaticTrainStep(model, criterion, optimizer, dtype, memory_format=fmt)
            host_images, host_targets = images.cpu(), [t.cpu() for t in targets]
            host_images = host_images.pin_memory() if device.type == "cuda" else host_images  # as the loader's
            return lambda: step(host_images, host_targets)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # as train.py
        if channels_last:  # train.py's own step
            train_step = TrainStep(forward, criterion, model, None, optimizer, scaler, 0.0, dtype, device, fmt,
                                   reduce=lambda terms: terms, world_size=1)  # fmt: skip
            check = lambda terms: bool(torch.isfinite(terms).all())  # noqa: E731 - train.py's host read
            return lambda: train_step(batch, targets, None, 0, check)

        def plain_step() -> None:  # the baseline: the same update around the plain reference loss
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loc, conf = forward(batch)
            loss_l, loss_c = plain_multibox_loss(loc.float(), conf.float(), model.priors, targets)
            apply_update(loss_l + loss_c, optimizer, scaler, 0.0)

        return plain_step

    candidates = {"plain eager step": make(False), "train.py step": make(True)}
    if args.amp:
        candidates["train.py step, --amp"] = make(True, amp=True)
    if args.levers:
        name = "train.py step" + (", --amp" if args.amp else "")
        bf16 = torch.bfloat16 if args.amp else None  # the static step's precision (no loss scaling)
        if args.amp and device.type == "cuda":  # a CPU's --amp is bfloat16 already
            candidates["train.py step, bfloat16"] = make(True, dtype=bf16)
        candidates[f"{name}, fused SGD"] = make(True, args.amp, fused=True)
        candidates[f"{name}, fused SGD, torch.compile"] = make(True, args.amp, fused=True, compiled=True)
        static = "static step (--cuda_graph" + (", bfloat16" if args.amp else "") + ", fused SGD)"
        candidates[static] = make(True, fused=True, dtype=bf16, static=True)
    if device.type == "cuda":
        tuned = candidates["train.py step, --amp" if args.amp else "train.py step"]
        candidates["same, cudnn.benchmark off"] = without_cudnn_autotuner(tuned)
    results = measure(candidates, rounds=args.rounds, warmup=args.warmup, number=args.number, device=device)
    suffix = f"w{args.width:g}{'_bn' if args.batch_norm else ''}"
    # A training step costs about three forwards (the backward computes the gradients of inputs and of weights).
    network = build_ssd(300, 21, width=args.width, batch_norm=args.batch_norm).eval()
    flops = 3 * 2 * count_macs(network, images[:1].cpu())
    peak = dense_bf16_peak_tflops(device)
    for stats in results.values():
        stats["tflops"] = flops * args.batch / stats["median_s"] / 1e12
    report(f"train_step_b{args.batch}_{suffix}", results, "plain eager step", args, device, per_call_items=args.batch,
           extra={"train_gflop_per_image": flops / 1e9, "dense_bf16_peak_tflops": peak})  # fmt: skip
    print(
        f"at {flops / 1e9:.1f} GFLOP per image and step"
        + (f", against a dense bfloat16 peak of {peak:g}" if peak else "")
    )
    for name, stats in results.items():
        fraction = f" ({stats['tflops'] / peak:.1%})" if peak else ""
        print(f"  {name}: {stats['tflops']:.1f} TFLOP/s{fraction}")
    if args.profile:  # where the step's time goes; the rounds above have warmed the allocator up
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            candidates["train.py step"]()
            synchronize(device)
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
