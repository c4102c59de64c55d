"""DistributedDataParallel set-up for `torchrun`, and the few collective helpers training needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that `torchrun` describes (env WORLD_SIZE, RANK, LOCAL_RANK), if any.

    NCCL on CUDA, gloo on CPU. Without torchrun this is a no-op returning a single-process DistInfo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum over processes (identity without a process group); returns a new tensor."""
    value = value.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def differentiable_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum over processes, with the gradient of the sum (identity without a process group). A loss built on such
    sums is the same in every process; its gradient, summed back by the collective's backward and averaged by DDP,
    is the gradient of one process holding every batch."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce  # differentiable collectives

        return all_reduce(value)
    return value


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the whole process group, for CPU tensors (gloo), where
    ``torch.nn.SyncBatchNorm`` refuses to run. The mean and variance come from all-reduced sums (differentiable,
    ``torch.distributed.nn``), so N processes normalise, and back-propagate, exactly as one process with their
    concatenated batch would; the running statistics are updated with the global batch's as well."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[B, C, H, W]) -> the normalised Tensor[B, C, H, W], statistics over every process's batch."""
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable collectives

        x32 = x if x.dtype == torch.float64 else x.float()  # float32 statistics under autocast, as BatchNorm
        local = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        count = all_reduce(local)  # [1], elements per channel in the global batch
        mean = all_reduce(x32.sum(dim=(0, 2, 3))) / count  # [C]
        centred = x32 - mean[None, :, None, None]  # [B, C, H, W]
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / count  # [C], biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]  # [B, C, H, W]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``--sync_bn``: every BatchNorm2d of ``module`` normalises over the global batch of all processes (so N
    processes train as one): ``torch.nn.SyncBatchNorm`` for a module on a GPU, :class:`GlooSyncBatchNorm` on a CPU.
    Parameters and buffers are the same tensors (state_dict keys unchanged)."""
    if next(module.parameters()).device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    _replace_batchnorm(module)
    return module


def _replace_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)  # fmt: skip
            replacement.weight, replacement.bias = child.weight, child.bias
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(replacement, buffer, getattr(child, buffer))
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            _replace_batchnorm(child)
