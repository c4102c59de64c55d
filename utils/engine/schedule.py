"""Learning-rate schedules as pure functions of the iteration: linear warmup, then cosine or step decay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """The learning-rate factor (times the base lr) at each iteration.

    Args:
        total_iters: length of the run.
        warmup_iters: linear warmup from ``warmup_factor`` to 1.
        kind: ``"cosine"`` (to ``min_factor`` at the end) or ``"multistep"`` (x ``gamma`` at each milestone).
        milestones: iterations of the steps (multistep).
    """

    total_iters: int
    warmup_iters: int = 0
    kind: str = "cosine"
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    warmup_factor: float = 1e-3
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "multistep"):
            raise ValueError(f"schedule must be 'cosine' or 'multistep', got {self.kind!r}")
        if self.total_iters < 1:
            raise ValueError(f"the run must have at least one iteration, got {self.total_iters}")

    def factor(self, iteration: int) -> float:
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            return self.warmup_factor + (1.0 - self.warmup_factor) * alpha
        if self.kind == "multistep":
            return self.gamma ** sum(iteration >= m for m in self.milestones)
        span = max(self.total_iters - self.warmup_iters, 1)
        progress = min((iteration - self.warmup_iters) / span, 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# SSD §3 (VOC): lr 1e-3 for 80k iterations, 1e-4 to 100k, 1e-5 to 120k, at batch 32.
PAPER_VOC_ITERS = {"total": 120_000, "milestones": (80_000, 100_000), "batch": 32, "lr": 1e-3}


def paper_voc_epochs(dataset_size: int, batch_size: int) -> tuple[int, tuple[int, int]]:
    """The paper's VOC schedule in epochs of ``dataset_size`` images at ``batch_size``: (epochs, milestones).

    The number of images seen is kept: 120k x 32 images (232 epochs of VOC07+12's 16551 trainval images).
    """
    images = PAPER_VOC_ITERS["total"] * PAPER_VOC_ITERS["batch"]
    epochs = max(1, round(images / dataset_size))
    milestones = tuple(
        max(1, round(m * PAPER_VOC_ITERS["batch"] / dataset_size)) for m in PAPER_VOC_ITERS["milestones"]
    )
    return epochs, milestones  # type: ignore[return-value]
