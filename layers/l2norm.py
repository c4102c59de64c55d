"""Channel-wise L2 normalisation with a learnable scale (ParseNet, used on conv4_3 by SSD §3.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class L2Norm(nn.Module):
    """``y = weight * x / ||x||₂`` over channels.

    conv4_3 features have a much larger norm than the deeper layers; SSD normalises them and learns a
    per-channel scale initialised to 20 (SSD §3.1, "conv4_3 ... scale initialised to 20").

    Args:
        channels: C, the number of input channels.
        scale: initial value of every entry of ``weight``.
        eps: added to the norm so an all-zero column does not divide by zero.
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.eps = eps
        self.scale = scale
        # The parameter is called "weight" so that state_dict keys match ssd.pytorch ("L2Norm.weight").
        self.weight = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[B, C, H, W]) -> Tensor[B, C, H, W]."""
        # The norm in float32 whatever x is: in float16, eps (1e-10) would round to 0 and a zero column give 0/0.
        norm = x.float().pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps  # [B, 1, H, W]
        return self.weight.view(1, -1, 1, 1) * (x / norm).to(x.dtype)
