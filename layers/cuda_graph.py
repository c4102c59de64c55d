"""Recording a CUDA graph as PyTorch requires it: the one place that does it, for the network
(``utils.runtime.InferenceModel``), Detect (``layers.detection.Detect``) and the training step
(``utils.engine.static_step.StaticTrainStep``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

Outputs = TypeVar("Outputs")


def record_graph(
    step: Callable[[], Outputs],
    device: torch.device,
    warmup: int = 2,
    pool: Any = None,
    after_warmup: Callable[[], None] | None = None,
) -> tuple[torch.cuda.CUDAGraph, Outputs]:
    """Run ``step`` ``warmup`` times on a side stream, then record one more call as a CUDA graph.

    The warm-up calls are what ``torch.cuda.graph`` asks for: they let cuDNN's autotuner choose its algorithms and
    lazily created state (an optimizer's) come into being outside the recording. ``step`` must read its inputs
    from tensors that outlive the graph (the graph replays on those addresses) and launch no host
    synchronisation. The recording is in "thread_local" mode: DataLoader threads that pin memory while this thread
    records do not invalidate it.

    Args:
        step: the work to record; returns the tensors the graph writes (overwritten by each replay).
        device: the GPU.
        warmup: eager calls before the recording.
        pool: a memory pool shared with other graphs (``graph.pool()``), for graphs that never run at once.
        after_warmup: called after the warm-up, even when it raised (e.g. to undo its effects).

    Returns:
        The graph, and ``step``'s outputs as recorded.
    """
    with torch.cuda.device(device):  # the recording stream is the current device's
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    step()
        finally:
            torch.cuda.current_stream().wait_stream(stream)
            if after_warmup is not None:
                after_warmup()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            outputs = step()
    return graph, outputs
