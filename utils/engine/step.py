"""The training step, written once: a batch's losses (:func:`batch_losses`), then the update (:func:`apply_update`).

Its variants plug into these two functions instead of holding copies of them:

- :class:`TrainStep`, train.py's eager step: the loss terms are averaged over the processes and checked for
  non-finite values before the update, and float16 losses are scaled against underflow (``GradScaler``);
- ``utils.engine.static_step.StaticTrainStep`` (``--cuda_graph``) runs the same two functions with every shape fixed
  (targets padded, :class:`PaddedTargets`) and records them as a CUDA graph;
- a domain adaptation method (``utils.engine.adaptation.DomainAdaptation``) plugs into the eager step in place of
  :func:`batch_losses`: its ``losses`` runs the source and the target batch (and a teacher) and returns MultiBoxLoss
  on the source with its own terms; its ``after_step`` hook runs after each update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from layers.multibox_loss import MultiBoxLoss

LossTerms = dict[str, Tensor]


class PaddedTargets(NamedTuple):
    """A batch's targets padded to one count N (:func:`layers.box_utils.pad_targets`): static shapes."""

    truths: Tensor  # [B, N, 4] xyxy in [0, 1]
    labels: Tensor  # [B, N] class index without background
    valid: Tensor  # [B, N] bool: a real ground truth, not padding


def batch_losses(
    net: nn.Module,
    criterion: MultiBoxLoss,
    priors: Tensor,
    images: Tensor,
    targets: list[Tensor] | PaddedTargets,
    autocast: torch.autocast,
) -> LossTerms:
    """The network's forward on ``images`` under ``autocast`` and MultiBoxLoss on them.

    Args:
        net: the detector, possibly DDP-wrapped.
        priors (Tensor[P, 4]): cxcywh.
        images (Tensor[B, 3, S, S]): the labeled images.
        targets: one Tensor[N_i, 5] per image (``data.base``'s format), or the batch's targets padded
            (:class:`PaddedTargets`: no host synchronisation in the loss).

    Returns:
        The terms ``loss_l`` and ``loss_c``.
    """
    with autocast:
        loc_preds, conf_preds = net(images)
    loc_preds, conf_preds = loc_preds.float(), conf_preds.float()  # [B, P, 4], [B, P, C]
    if isinstance(targets, PaddedTargets):
        loss_l, loss_c = criterion.forward_padded(loc_preds, conf_preds, priors, *targets)
    else:
        loss_l, loss_c = criterion(loc_preds, conf_preds, priors, targets)
    return {"loss_l": loss_l, "loss_c": loss_c}


def apply_update(
    loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, max_grad_norm: float
) -> None:
    """Backward ``loss``, clip the gradients' global norm to ``max_grad_norm`` (0: off) and step ``optimizer``.

    ``scaler`` scales a float16 loss against gradient underflow and skips a step whose gradients overflowed; a
    disabled one passes everything through (no host synchronisation, as a recorded step needs).
    """
    optimizer.zero_grad(set_to_none=True)  # under capture: backward writes the gradients, never adds
    scaler.scale(loss).backward()
    if max_grad_norm > 0:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()


class Adaptation(Protocol):
    """What the eager step needs of a domain adaptation method (``utils.engine.adaptation.DomainAdaptation``)."""

    def losses(
        self,
        net: nn.Module,
        criterion: MultiBoxLoss,
        images: Tensor,
        targets: list[Tensor],
        target_views: Tensor | None,
        iteration: int,
        autocast: torch.autocast,
    ) -> LossTerms: ...

    def after_step(self) -> None: ...


class TrainStep:
    """train.py's eager step: the terms of :func:`batch_losses` (or of ``adaptation``, which adds to it) are averaged
    over the processes (``reduce``) and checked (``check``, which raises on a non-finite value) before
    :func:`apply_update` and ``adaptation.after_step``.

    Args:
        net: the detector, or the module around it that ``adaptation`` trains, possibly DDP-wrapped.
        criterion: the loss.
        detector: the SSD (its ``priors``, Tensor[P, 4] cxcywh, are read at every step).
        adaptation: the domain adaptation method, or None for the supervised step.
        optimizer, scaler, max_grad_norm: the update's (:func:`apply_update`).
        amp_dtype: autocast dtype, or None for float32.
        device: where the step runs.
        memory_format: of the input batch (the model's).
        reduce: Tensor[T] -> its sum over the processes (identity without DDP).
        world_size: the number of processes.
    """

    def __init__(
        self,
        net: nn.Module,
        criterion: MultiBoxLoss,
        detector: nn.Module,
        adaptation: Adaptation | None,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        max_grad_norm: float,
        amp_dtype: torch.dtype | None,
        device: torch.device,
        memory_format: torch.memory_format,
        reduce: Callable[[Tensor], Tensor],
        world_size: int,
    ) -> None:
        self.net, self.criterion, self.detector, self.adaptation = net, criterion, detector, adaptation
        self.optimizer, self.scaler, self.max_grad_norm = optimizer, scaler, max_grad_norm
        self.amp_dtype, self.device, self.memory_format = amp_dtype, device, memory_format
        self.reduce, self.world_size = reduce, world_size

    def __call__(
        self,
        images: Tensor,
        targets: list[Tensor],
        target_views: Tensor | None,
        iteration: int,
        check: Callable[[Tensor], None],
    ) -> Tensor:
        """Train on one batch; returns the process-averaged terms (Tensor[T]: ``loss_l``, ``loss_c``, then those
        ``adaptation`` adds), detached.

        Args:
            images (Tensor[B, 3, S, S]): the labeled batch, on any device.
            targets: B tensors [N_i, 5] of ``(xmin, ymin, xmax, ymax, label)``, xyxy in [0, 1], on any device.
            target_views (Tensor[B_t, V, 3, S, S] | None): unlabeled target images, with domain adaptation.
            iteration: the step's number in the run.
            check: raises on non-finite terms, before the update.
        """
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = [t.to(self.device, non_blocking=True) for t in targets]
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        if self.adaptation is None:
            terms = batch_losses(self.net, self.criterion, self.detector.priors, images, targets, autocast)
        else:
            terms = self.adaptation.losses(self.net, self.criterion, images, targets, target_views, iteration, autocast)
        parts = list(terms.values())
        reduced = self.reduce(torch.stack([part.detach() for part in parts])) / self.world_size  # [T]
        check(reduced)
        apply_update(torch.stack(parts).sum(), self.optimizer, self.scaler, self.max_grad_norm)
        if self.adaptation is not None:
            self.adaptation.after_step()
        return reduced
