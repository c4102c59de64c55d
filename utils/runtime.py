"""How a network runs at inference: memory format, mixed precision and CUDA graphs.

:class:`InferenceModel` is the one place that decides these for eval.py, inference.py, training-time
evaluation and the benchmarks; :func:`mixed_precision_dtype` is the autocast policy that training shares.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor

from ssd import SSD

logger = logging.getLogger(__name__)


class InferenceModel:
    """An SSD prepared for fast inference: ``network(images) -> (loc_preds, conf_preds)``.

    It runs its own copy of the network, in eval mode and channels_last memory format, under
    ``torch.inference_mode``; the caller's model keeps its mode, memory format and weights. ``amp=True`` runs it
    under autocast, float16 on a GPU and bfloat16 on a CPU (fast where the CPU has bfloat16 instructions, such
    as AVX512_BF16 or AMX); the outputs are float32 either way. ``cuda_graph=True`` (on a GPU; ignored on a CPU)
    records the forward once per input shape as a CUDA graph and replays it: at batch 1 a GPU runs SSD300's
    kernels faster than Python launches them (README, "Performance"). The graph reads ``self.model``'s
    parameters where they lie, so in-place changes to them (``load_state_dict``) are seen.

    Args:
        model: the SSD to run; it is copied, not changed.
        amp: use mixed precision.
        cuda_graph: replay CUDA graphs on a GPU; each input shape keeps its own graph and its buffers.
    """

    def __init__(self, model: SSD, amp: bool = False, cuda_graph: bool = False) -> None:
        self.model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
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
        images = images.to(self.device).contiguous(memory_format=torch.channels_last)
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
        """Record one forward at ``images``' shape, after warm-up runs on a side stream (which also let cuDNN's
        autotuner choose its algorithms outside the capture), as ``torch.cuda.graph`` requires."""
        static_input = images.clone()
        with torch.cuda.device(self.device):  # the capture stream is the current device's
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward(static_input)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self._forward(static_input)
        return graph, static_input, outputs


def mixed_precision_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype for ``device``: float16 on a GPU, bfloat16 elsewhere (a CPU runs it fast only with
    bfloat16 instructions such as AVX512_BF16 or AMX; without them this warns)."""
    if device.type == "cuda":
        return torch.float16
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        logger.warning("this CPU has no bfloat16 instructions: mixed precision will be slower than float32")
    return torch.bfloat16
