"""Run by tests/test_adaptation.py under ``torchrun --nproc_per_node=2``: one domain adaptation step's loss terms
and gradients in two gloo processes with synchronised BatchNorm (each holding half of the batch) against one process
holding the whole batch. Exits 1, printing the worst term and parameter, when they differ beyond float rounding.

Usage: torchrun --nproc_per_node=2 tests/ddp_gradients.py METHOD[,METHOD] separate|joint
"""

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from layers.multibox_loss import MultiBoxLoss  # noqa: E402
from ssd import build_ssd  # noqa: E402
from utils.engine.adaptation import DomainAdaptation  # noqa: E402
from utils.engine.da_config import AdaptationConfig, RunLength  # noqa: E402
from utils.engine.distributed import all_reduce_sum, convert_sync_batchnorm  # noqa: E402


def step(da: DomainAdaptation, net: torch.nn.Module, criterion: MultiBoxLoss, batch: tuple) -> tuple[dict, list]:
    source, targets, target_views = batch
    terms = da.losses(net, criterion, source, targets, target_views, 0, torch.autocast("cpu", enabled=False))
    sum(terms.values()).backward()
    return terms, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in da.network().parameters()]


def main() -> int:
    methods, da_batch = tuple(sys.argv[1].split(",")), sys.argv[2]
    # float64: BatchNorm over a few images of a network trained from scratch amplifies float32 rounding (statistics
    # summed in another order) to ~1e-2 of a gradient; in float64 the two set-ups agree to ~1e-6.
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model = build_ssd(300, 5, "VOC", 0.125, True)
    config = AdaptationConfig(methods, da_batch=da_batch, burn_in=0, pseudo_threshold=0.2, i3net_start=0)
    da = DomainAdaptation(config, model, RunLength(steps_per_epoch=2, epochs=7))
    if "global" in da.adaptive.parts:
        da.adaptive.parts["global"].dropout = 0.0  # the same computation in both set-ups: no random masks
    generator = torch.Generator().manual_seed(1)
    source = torch.randn(4, 3, 300, 300, generator=generator)
    target_views = torch.randn(4, 2 if "mean_teacher" in methods else 1, 3, 300, 300, generator=generator)
    targets = [torch.cat([torch.tensor([[0.1, 0.1, 0.5, 0.6]]) + 0.1 * torch.rand(1, 4, generator=generator),
                          torch.tensor([[float(i % 4)]])], dim=1) for i in range(4)]  # fmt: skip
    alone = copy.deepcopy(da)
    expected_terms, expected = step(alone, alone.network(), MultiBoxLoss(5), (source, targets, target_views))

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    convert_sync_batchnorm(da.network())
    net = DistributedDataParallel(da.network())
    criterion = MultiBoxLoss(5, normalizer=lambda n: all_reduce_sum(n).clamp(min=1) / world)
    half = slice(2 * rank, 2 * rank + 2)
    terms, got = step(da, net, criterion, (source[half], targets[half], target_views[half]))
    failures = []
    for name, value in terms.items():
        mean = all_reduce_sum(value.detach()) / world
        if not torch.allclose(mean, expected_terms[name].detach(), rtol=1e-9, atol=1e-12):
            failures.append(f"{name}: {mean.item()} != {expected_terms[name].item()}")
    scale = max(g.norm().item() for g in expected)
    names = [name for name, _ in da.network().named_parameters()]
    for name, a, b in zip(names, got, expected, strict=True):
        if (a - b).norm() > 1e-7 * (b.norm() + scale):
            failures.append(f"gradient of {name}: error {(a - b).norm().item():.3g} of norm {b.norm().item():.3g}")
    dist.destroy_process_group()
    if failures and rank == 0:
        print("\n".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
