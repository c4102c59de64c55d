"""(a) network forward, (h) onnxruntime and (i) the GEMM ceiling, for each backbone.

Candidates, fp32 at --batch, for --backbone (vgg16: SSD300; mobilenet_v3_large: SSDLite320; resnet50: NVIDIA's
SSD300): this project's SSD as eval.py and inference.py run it (utils.runtime.InferenceModel: channels_last,
BatchNorm folded, inference_mode; with --amp also in mixed precision; also through torch.compile with freezing,
its compilation timed apart; on a GPU also replayed as CUDA graphs, as inference.py runs it there, and with
cuDNN's heuristics instead of its autotuner), the same network as a checkpoint converted from torchvision runs it
(InferenceModel(exact=True): NCHW, BatchNorm apart, torchvision's outputs to the bit), plain eager (NCHW, no_grad),
torchvision's equivalent backbone + head with the same weights (ssd300_vgg16, ssdlite320_mobilenet_v3_large; the
baseline; for resnet50, which torchvision lacks, plain eager is), and onnxruntime on the exported graph when
onnxruntime is installed. Like the scripts, the process keeps freed memory (utils.cli.keep_freed_memory), which
speeds up every candidate. The ceiling is the best of torch.mm's GFLOP/s with the same threads and two convolutions
that the convolution library runs as GEMMs (see gemm_candidates); the network's multiply-accumulates are counted
from its convolutions (depthwise ones too, which no GEMM runs at that rate).

    python -m benchmarks.bench_forward --batch 1 --layers
    python -m benchmarks.bench_forward --batch 8
    python -m benchmarks.bench_forward --backbone mobilenet_v3_large --batch 1
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import (
    TORCHVISION_BUILDERS,
    add_backbone_flags,
    benchmark_models,
    get_args_parser,
    measure,
    report,
    setup,
    without_cudnn_autotuner,
)
from utils.runtime import InferenceModel


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d for input ``x`` (per batch)."""
    total = 0

    def hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return total


def gemm_candidates(device: torch.device) -> dict[str, tuple[Callable[[], object], float]]:
    """The best matrix products PyTorch runs here, as (call, FLOPs): torch.mm (BLAS), and two convolutions that
    oneDNN (on CPU) runs as GEMMs: a 1x1 convolution and VGG's conv3_2 (3x3, 256 channels, 75x75). On AMD
    CPUs MKL's sgemm runs far below oneDNN's GEMM, so torch.mm alone is no ceiling for the convolutions; and
    on a shared VM one shape can run slow in one process and not in the next, hence two. They are timed in the
    same interleaved rounds as the network, so that the machine's drift hits the ceiling and the network alike."""
    n = 4096
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def conv_gemm(channels: int, kernel: int, batch: int, side: int) -> tuple[Callable[[], object], float]:
        conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
        conv = conv.to(device).to(memory_format=torch.channels_last)
        x = torch.randn(batch, channels, side, side, device=device).contiguous(memory_format=torch.channels_last)

        def call() -> None:
            with torch.inference_mode():
                conv(x)

        return call, 2 * batch * side * side * channels * channels * kernel * kernel

    return {"torch_mm": (lambda: torch.mm(a, b), 2 * n**3), "conv1x1_gemm": conv_gemm(512, 1, 2, 75),
            "conv3x3_gemm": conv_gemm(256, 3, 1, 75)}  # fmt: skip


def layer_profile(model: nn.Module, x: torch.Tensor, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Milliseconds per forward (and GFLOP/s for convolutions) of each kind of layer, convolutions grouped by
    output size: where the forward loses against the ceiling. Timed with module hooks (small overhead)."""
    seconds: dict[str, float] = {}
    flops: dict[str, float] = {}

    def group(module: nn.Module, output: torch.Tensor) -> str:
        if not isinstance(module, nn.Conv2d):
            return type(module).__name__
        return "conv1_1 (3 channels in)" if module.in_channels == 3 else f"conv {output.shape[-1]}x{output.shape[-1]}"

    def before(module: nn.Module, _inputs) -> None:
        module._bench_start = time.perf_counter()

    def after(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        key = group(module, output)
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - module._bench_start
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            flops[key] = flops.get(key, 0.0) + 2 * output.numel() * module.in_channels // module.groups * kh * kw

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    with torch.inference_mode():
        model(x)
        seconds.clear(), flops.clear()
        for _ in range(rounds):
            model(x)
    for handle in handles:
        handle.remove()
    return {
        key: {"ms": 1e3 * total / rounds, **({"gflops": flops[key] / total / 1e9} if key in flops else {})}
        for key, total in sorted(seconds.items(), key=lambda item: -item[1])
    }


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--no_onnx", action="store_true")
    parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile candidate")
    parser.add_argument("--layers", action="store_true", help="also time the network's layers (a profile)")
    add_backbone_flags(parser)
    args = parser.parse_args()
    device = setup(args)
    ours, tv = benchmark_models(args.backbone, args.classes, device)
    size = ours.config.size
    x = torch.randn(args.batch, 3, size, size, device=device)
    plain = copy.deepcopy(ours)
    network = InferenceModel(ours)  # as eval.py and inference.py run it
    exact = InferenceModel(ours, exact=True)  # as they run a checkpoint converted from torchvision

    def plain_forward() -> None:
        with torch.no_grad():
            plain(x)

    candidates = {"plain eager (NCHW)": plain_forward}
    baseline = "plain eager (NCHW)"
    if tv is not None:

        def torchvision_forward() -> None:
            with torch.no_grad():
                features = list(tv.backbone(x).values())
                tv.head(features)

        baseline = f"torchvision {TORCHVISION_BUILDERS[args.backbone]}"
        candidates = {baseline: torchvision_forward, **candidates}
    candidates |= {"InferenceModel": lambda: network(x), "InferenceModel, exact": lambda: exact(x)}
    compile_s = None
    if not args.no_compile:  # measured only: no gain on this project's CPU, so the scripts do not compile
        compiled = torch.compile(ours, options={"freezing": True}, dynamic=False)

        def compiled_forward() -> None:
            with torch.inference_mode():
                compiled(x.contiguous(memory_format=torch.channels_last))

        start = time.perf_counter()
        compiled_forward()  # the compilation, timed apart
        compile_s = time.perf_counter() - start
        candidates["torch.compile (freezing)"] = compiled_forward
    if args.amp:
        mixed = InferenceModel(ours, amp=True)
        candidates[f"InferenceModel, amp ({str(mixed.amp_dtype).split('.')[1]})"] = lambda: mixed(x)
    if device.type == "cuda":
        candidates["InferenceModel, cudnn.benchmark off"] = without_cudnn_autotuner(lambda: network(x))
        graphed = InferenceModel(ours, cuda_graph=True)  # as inference.py runs it on a GPU
        candidates["InferenceModel, CUDA graph"] = lambda: graphed(x)
        if args.amp:
            graphed_amp = InferenceModel(ours, amp=True, cuda_graph=True)
            candidates["InferenceModel, amp, CUDA graph"] = lambda: graphed_amp(x)
    if not args.no_onnx and device.type == "cpu":
        try:
            from utils.checkpoint import DetectorInfo
            from utils.deploy.export import export_onnx
            from utils.predict import OnnxRunner

            path = Path(tempfile.mkdtemp()) / "ssd.onnx"
            names = tuple(str(i) for i in range(plain.num_classes - 1))
            export_onnx(copy.deepcopy(plain), DetectorInfo(plain.config, names), path)
            runner = OnnxRunner(path)
            candidates["onnxruntime"] = lambda: runner(x)
        except ValueError as error:
            print(f"onnxruntime skipped: {error}")
    gemms = gemm_candidates(device)
    timed = {**candidates, **{name: call for name, (call, _) in gemms.items()}}
    results = measure(timed, rounds=args.rounds, warmup=args.warmup, number=args.number, device=device)
    # A ceiling is a peak: each GEMM's best round (the network is credited with its median).
    ceilings = {name: flops / results.pop(name)["min_s"] / 1e9 for name, (_, flops) in gemms.items()}
    ceiling = max(ceilings.values())
    macs = count_macs(plain, x[:1])
    for stats in results.values():
        stats["gflops"] = 2 * macs * args.batch / stats["median_s"] / 1e9
        stats["fraction_of_gemm_ceiling"] = stats["gflops"] / ceiling
        stats["fraction_of_torch_mm"] = stats["gflops"] / ceilings["torch_mm"]
    name = f"forward_b{args.batch}" if args.backbone == "vgg16" else f"forward_{args.backbone}_b{args.batch}"
    report(name, results, baseline, args, device, per_call_items=args.batch,
           extra={"macs_per_image": macs, "gemm_gflops": ceilings, "compile_seconds": compile_s})  # fmt: skip
    print(f"network: {macs / 1e9:.2f} GMAC per image; GEMM ceilings: torch.mm {ceilings['torch_mm']:.0f} GFLOP/s, "
          f"1x1 conv {ceilings['conv1x1_gemm']:.0f} GFLOP/s, 3x3 conv {ceilings['conv3x3_gemm']:.0f} GFLOP/s")  # fmt: skip
    if compile_s is not None:
        print(f"torch.compile took {compile_s:.0f} s before the first compiled call")
    for name, stats in results.items():
        print(f"  {name:<28}{stats['gflops']:8.1f} GFLOP/s = {100 * stats['fraction_of_gemm_ceiling']:5.1f}% of the best GEMM "
              f"({100 * stats['fraction_of_torch_mm']:.0f}% of torch.mm)")  # fmt: skip
    if args.layers:
        print("layers of InferenceModel's network (module hooks):")
        for key, stats in layer_profile(network.model, x.contiguous(memory_format=torch.channels_last)).items():
            rate = f"{stats['gflops']:7.0f} GFLOP/s" if "gflops" in stats else ""
            print(f"  {key:<26}{stats['ms']:8.2f} ms {rate}")


if __name__ == "__main__":
    main()
