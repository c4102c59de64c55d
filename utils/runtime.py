"""How a network runs at inference: memory format, BatchNorm folding, mixed precision and CUDA graphs.

:class:`InferenceModel` is the one place that decides these for eval.py, inference.py, training-time
evaluation and the benchmarks; :func:`mixed_precision_dtype` is the autocast policy that training shares.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from layers.cuda_graph import record_graph
from ssd import SSD

logger = logging.getLogger(__name__)


class InferenceModel:
    """An SSD prepared for fast inference: ``network(images) -> (loc_preds, conf_preds)``.

    It runs its own copy of the network, in eval mode, under ``torch.inference_mode``, in channels_last memory
    format and with every BatchNorm folded into the convolution before it (:func:`fold_batch_norm`); the caller's
    model keeps its mode, memory format and weights. ``exact=True`` runs the copy as plain PyTorch does instead
    (NCHW, BatchNorm apart): slower, but its outputs are those of any implementation of the same network to the
    last bit (torchvision's, for checkpoints converted from it), where the fast form sums in another order.
    ``amp=True`` runs it
    under autocast, float16 on a GPU and bfloat16 on a CPU (fast where the CPU has bfloat16 instructions, such
    as AVX512_BF16 or AMX); the outputs are float32 either way. ``cuda_graph=True`` (on a GPU; ignored on a CPU)
    records the forward once per input shape as a CUDA graph and replays it: at batch 1 a GPU runs SSD300's
    kernels faster than Python launches them (docs/performance.md, "Performance"). The graph reads ``self.model``'s
    parameters where they lie, so in-place changes to them (``load_state_dict``) are seen.

    Args:
        model: the SSD to run; it is copied, not changed.
        amp: use mixed precision.
        cuda_graph: replay CUDA graphs on a GPU; each input shape keeps its own graph and its buffers.
        exact: NCHW without folding, for outputs equal to a plain PyTorch model's to the last bit.
    """

    def __init__(self, model: SSD, amp: bool = False, cuda_graph: bool = False, exact: bool = False) -> None:
        self.memory_format = torch.contiguous_format if exact else torch.channels_last
        self.model = copy.deepcopy(model).eval()
        if not exact:
            fold_batch_norm(self.model)
        self.model.to(memory_format=self.memory_format)
        self.priors = model.priors
        self.device = model.priors.device
        self.amp_dtype = mixed_precision_dtype(self.device) if amp else None
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        # (shape, dtype) -> (graph, its input buffer, its output buffers)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, tuple[Tensor, Tensor]]] = {}

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Run the network.

        Args:
            images (Tensor[B, 3, size, size]): the preprocessed batch, on any device.

        Returns:
            loc_preds (Tensor[B, P, 4]) and conf_preds (Tensor[B, P, C]), float32, as :meth:`SSD.forward`.
        """
        images = images.to(self.device).contiguous(memory_format=self.memory_format)
        if not self.cuda_graph:
            return self._forward(images)
        key = (tuple(images.shape), images.dtype)
        if key not in self._graphs:
            self._graphs[key] = self._capture(images)
        graph, static_input, (loc, conf) = self._graphs[key]
        static_input.copy_(images)
        graph.replay()
        return loc.clone(), conf.clone()  # the buffers are overwritten by the next replay

    def _forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loc, conf = self.model(images)
        return loc.float(), conf.float()

    def _capture(self, images: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, tuple[Tensor, Tensor]]:
        """Record one forward at ``images``' shape (:func:`layers.cuda_graph.record_graph`)."""
        static_input = images.clone()
        graph, outputs = record_graph(lambda: self._forward(static_input), self.device)
        return graph, static_input, outputs


def fold_batch_norm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm into the convolution it follows, in place; returns how many were folded.

    ``conv -> bn`` becomes one convolution with weight ``w * gamma / sqrt(var + eps)`` and bias
    ``(b - mean) * gamma / sqrt(var + eps) + beta``, and the BatchNorm an ``nn.Identity``: one pass over the
    activations fewer (a sixth of SSDLite's forward time on a CPU, docs/backbones.md, "Backbones"). Pairs are found where the
    network runs them in sequence: consecutive entries of an ``nn.Sequential`` or ``nn.ModuleList`` (VGG with
    ``batch_norm``, SSDLite's blocks, ResNet's stem and shortcuts) and the ``conv{i}``/``bn{i}`` attributes of
    torchvision's ResNet blocks.
    """
    folded = 0
    for module in list(model.modules()):
        pairs: list[tuple[str, str]] = []
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            names = list(module._modules)
            pairs = list(zip(names, names[1:], strict=False))  # each entry with the next
        else:
            pairs = [(f"conv{i}", f"bn{i}") for i in range(1, 4)]
        for conv_name, bn_name in pairs:
            conv, bn = module._modules.get(conv_name), module._modules.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training:
                module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_name] = nn.Identity()
                folded += 1
    return folded


def mixed_precision_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype for ``device``: float16 on a GPU, bfloat16 elsewhere (a CPU runs it fast only with
    bfloat16 instructions such as AVX512_BF16 or AMX; without them this warns)."""
    if device.type == "cuda":
        return torch.float16
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        logger.warning("this CPU has no bfloat16 instructions: mixed precision will be slower than float32")
    return torch.bfloat16
