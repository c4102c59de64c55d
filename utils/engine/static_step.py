"""train.py's step with static shapes, recorded once as a CUDA graph on a GPU and replayed (``--cuda_graph``).

The eager step (``utils.engine.step.TrainStep``) launches each of its hundreds of kernels from Python and
waits on the host where MultiBoxLoss selects by data-dependent masks. :class:`StaticTrainStep` pads every batch's
targets to a fixed count, so that the whole step (``utils.engine.step``'s :func:`batch_losses` with the targets
padded, then its :func:`apply_update`) has the same shapes at every iteration and never waits on the
host. On a GPU it records that step as a CUDA graph per (batch shape, padded count) and replays it; elsewhere it
runs the same step eagerly, which is how the tests check it against the eager step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from layers.box_utils import pad_targets
from layers.cuda_graph import record_graph
from layers.multibox_loss import MultiBoxLoss
from utils.engine.step import PaddedTargets, apply_update, batch_losses

logger = logging.getLogger(__name__)

# Targets are padded to a power of two of at least this many ground truths: a few graphs cover a dataset (VOC's
# images hold up to 42 objects: 32 and 64), and a denser batch records one more instead of failing.
MIN_PADDED_TRUTHS = 32
# Eager steps before a capture (torch.cuda.graph's requirement): they create the optimizer's state and let
# cuDNN's autotuner pick its algorithms outside the capture. Their effect on the weights is undone.
WARMUP_STEPS = 3


def padded_count(max_truths: int) -> int:
    """The fixed ground-truth count a batch whose images hold up to ``max_truths`` is padded to."""
    return max(MIN_PADDED_TRUTHS, 1 << max(max_truths - 1, 0).bit_length())


@dataclass
class Captured:
    """One recorded step: the graph, the buffers it reads its batch from, and the loss terms it writes."""

    graph: torch.cuda.CUDAGraph
    images: Tensor  # [B, 3, S, S]
    truths: Tensor  # [B, N, 4]
    labels: Tensor  # [B, N]
    valid: Tensor  # [B, N]
    terms: Tensor  # [2]


class StaticTrainStep:
    """One optimisation step with static shapes: ``step(images, targets) -> (loss_l, loss_c)``, after the update.

    The loss is ``MultiBoxLoss.forward_padded``'s: the eager loss up to the order of equal losses among the mined
    negatives and float summation order. The step differs from the eager one in two ways that a user sees:

    - the update is applied before the caller sees the loss, so a non-finite loss is reported after its step
      (train.py then stops without saving: the last checkpoint is intact);
    - float16 autocast is refused: its loss scaling checks for overflow on the host. Mixed precision here is
      bfloat16, which has float32's range and needs no scaling.

    On a GPU (``cuda_graph=True``), the first batch of each shape runs :data:`WARMUP_STEPS` eager steps on a side
    stream and is then recorded; the weights, BatchNorm statistics and optimizer state are restored after the
    warm-up, so the run trains as if it had not happened (optimizer state that did not exist yet is restored as
    zeros, which SGD without dampening and Adam treat exactly as a fresh state). The graph reads the parameters,
    buffers and optimizer state where they lie: load them in place (``load_state_dict``) before the first step,
    never replace them afterwards. Each param group's learning rate is a one-element GPU tensor inside the graph,
    refreshed from the group's float before each replay, so an lr scheduler works unchanged. The optimizer must
    accept a tensor lr under capture: fused SGD, or AdamW with ``fused=True, capturable=True``
    (``utils.engine.builders.build_optimizer`` builds them so for ``--cuda_graph``).

    Args:
        model: the detector, in train mode, on its device.
        criterion: the loss.
        optimizer: over the model's parameters.
        amp_dtype: autocast dtype (bfloat16), or None for float32.
        max_grad_norm: clip the gradients' global norm to this (0: off).
        memory_format: of the input batch (the model's).
        cuda_graph: record and replay on a GPU; ignored elsewhere.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: MultiBoxLoss,
        optimizer: torch.optim.Optimizer,
        amp_dtype: torch.dtype | None = None,
        max_grad_norm: float = 0.0,
        memory_format: torch.memory_format = torch.preserve_format,
        cuda_graph: bool = True,
    ) -> None:
        if amp_dtype == torch.float16:
            raise ValueError("a static training step cannot use float16 (its loss scaling synchronises with the "
                             "host); use bfloat16")  # fmt: skip
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.amp_dtype, self.max_grad_norm, self.memory_format = amp_dtype, max_grad_norm, memory_format
        self.device = model.priors.device
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        # Disabled: it passes the loss and the update through, with no host synchronisation.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        if self.cuda_graph and not all(group.get("fused") for group in optimizer.param_groups):
            raise ValueError("a recorded training step needs a fused optimizer (fused=True): its learning rate is a "
                             "GPU tensor")  # fmt: skip
        if self.cuda_graph and not all(group.get("capturable", True) for group in optimizer.param_groups):
            raise ValueError("a recorded Adam step needs capturable=True (its step counters on the GPU)")
        self._graphs: dict[tuple[tuple[int, ...], int], Captured] = {}
        self._pool: Any = None  # the graphs share one memory pool: they never run at the same time
        self._lrs: list[Tensor] = []

    def __call__(
        self,
        images: Tensor,
        targets: list[Tensor],
        target_views: None = None,
        iteration: int = 0,
        check: Callable[[Tensor], None] | None = None,
    ) -> Tensor:
        """Train on one batch; the eager step's (``utils.engine.step.TrainStep``) signature.

        Args:
            images (Tensor[B, 3, S, S]): the augmented batch, on any device.
            targets: B tensors [N_i, 5] of ``(xmin, ymin, xmax, ymax, label)``, on any device.
            target_views: None: domain adaptation has no static step.
            iteration: unused (the eager step's domain adaptation reads it).
            check: raises on non-finite terms; called after the update, which a recorded step cannot skip.

        Returns:
            Tensor[2]: ``(loss_l, loss_c)`` of the batch, before the update, detached.
        """
        if target_views is not None:
            raise ValueError("a static training step has no domain adaptation (target_views must be None)")
        terms = self._train(images, targets)
        if check is not None:
            check(terms)
        return terms

    def _train(self, images: Tensor, targets: list[Tensor]) -> Tensor:
        size = padded_count(max((int(t.shape[0]) for t in targets), default=0))
        truths, labels, valid = pad_targets([t.float().cpu() for t in targets], size)  # one copy each to the device
        if not self.cuda_graph:
            batch = self._to_device(images, truths, labels, valid)
            return self.step(*batch)
        key = (tuple(images.shape), size)
        if key not in self._graphs:
            # Buffers of the graph's own: the caller's tensor (already on the device) would be freed and reused.
            buffers = tuple(t.clone() for t in self._to_device(images, truths, labels, valid))
            self._graphs[key] = self._capture(buffers)
        captured = self._graphs[key]
        for buffer, value in zip((captured.images, captured.truths, captured.labels, captured.valid),
                                 (images, truths, labels, valid), strict=True):  # fmt: skip
            buffer.copy_(value, non_blocking=True)
        for lr, group in zip(self._lrs, self.optimizer.param_groups, strict=True):
            lr.fill_(group["lr"])
        captured.graph.replay()
        return captured.terms.clone()  # the buffer is overwritten by the next replay

    def _to_device(self, images: Tensor, truths: Tensor, labels: Tensor, valid: Tensor) -> tuple[Tensor, ...]:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return images, truths.to(self.device), labels.to(self.device), valid.to(self.device)

    def step(self, images: Tensor, truths: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
        """The step itself, eager or under capture: every shape fixed by the inputs', no host synchronisation.

        Args:
            images (Tensor[B, 3, S, S]), truths (Tensor[B, N, 4]), labels (Tensor[B, N]), valid (Tensor[B, N]):
                on the model's device, targets as :func:`layers.box_utils.pad_targets` gives them.

        Returns:
            Tensor[2]: ``(loss_l, loss_c)``, detached.
        """
        # No cast cache: cached weight casts must not outlive a capture (PyTorch's CUDA-graph notes on autocast).
        autocast = torch.autocast(self.device.type, self.amp_dtype, self.amp_dtype is not None, cache_enabled=False)
        targets = PaddedTargets(truths, labels, valid)
        terms = batch_losses(self.model, self.criterion, self.model.priors, images, targets, autocast)
        apply_update(terms["loss_l"] + terms["loss_c"], self.optimizer, self.scaler, self.max_grad_norm)
        return torch.stack([terms["loss_l"].detach(), terms["loss_c"].detach()])

    def snapshot(self) -> tuple[dict[str, Tensor], dict[Tensor, dict[str, Tensor]]]:
        """Copies of the model's state (parameters and buffers) and of the optimizer's tensors."""
        model_state = {name: t.detach().clone() for name, t in self.model.state_dict().items()}
        optimizer_state = {
            param: {k: v.clone() for k, v in state.items() if isinstance(v, Tensor)}
            for param, state in self.optimizer.state.items()
        }
        return model_state, optimizer_state

    def restore(self, saved: tuple[dict[str, Tensor], dict[Tensor, dict[str, Tensor]]]) -> None:
        """Put a :meth:`snapshot` back in place (the tensors keep their storage, which a graph reads); optimizer
        state created since is zeroed, as a fresh state starts."""
        model_state, optimizer_state = saved
        with torch.no_grad():
            for name, t in self.model.state_dict().items():
                t.copy_(model_state[name])
            for param, state in self.optimizer.state.items():
                before = optimizer_state.get(param, {})
                for k, v in state.items():
                    if isinstance(v, Tensor) and k in before:
                        v.copy_(before[k])
                    elif isinstance(v, Tensor):
                        v.zero_()

    def _capture(self, batch: tuple[Tensor, ...]) -> Captured:
        """Warm up on a side stream, undo the warm-up, and record one step on ``batch``'s buffers."""
        images, truths = batch[0], batch[1]
        logger.info("recording the training step as a CUDA graph: batch %s, targets padded to %d ground truths",
                    tuple(images.shape), truths.shape[1])  # fmt: skip
        if not self._lrs:
            self._lrs = [torch.tensor(float(group["lr"]), device=self.device) for group in self.optimizer.param_groups]
        floats = [group["lr"] for group in self.optimizer.param_groups]
        for lr, group in zip(self._lrs, self.optimizer.param_groups, strict=True):
            lr.fill_(group["lr"])
            group["lr"] = lr  # the graph reads the tensor; the scheduler keeps writing floats between steps
        saved = self.snapshot()
        try:  # whatever the warm-up does or raises, the run goes on from the state before it
            graph, terms = record_graph(lambda: self.step(*batch), self.device, WARMUP_STEPS, self._pool,
                                        after_warmup=lambda: self.restore(saved))  # fmt: skip
        finally:
            for value, group in zip(floats, self.optimizer.param_groups, strict=True):
                group["lr"] = value
        self._pool = self._pool if self._pool is not None else graph.pool()
        return Captured(graph, *batch, terms)
