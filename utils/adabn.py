"""AdaBN (Li et al., 2016): a network's BatchNorm statistics re-estimated on unlabeled images of a target domain.

eval.py's ``--adabn`` applies it to any checkpoint before evaluating; train.py's ``--da adabn`` after every epoch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from data.unlabeled import TARGET_SPLIT, UnlabeledImages
from ssd import SSD
from utils.augmentations import TargetViews
from utils.checkpoint import DetectorInfo


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, loader: Iterable[Tensor], device: torch.device) -> int:
    """AdaBN: replace every BatchNorm layer's running statistics by those of the images of ``loader`` (the first
    view of each batch, Tensor[B, V, 3, S, S] as :class:`data.unlabeled.UnlabeledImages` gives), averaged over its
    batches with equal weight (``torch.optim.swa_utils.update_bn``). They are computed on a copy and swapped in at
    the end, so an interruption leaves the model as it was; its mode is kept. Returns the number of images seen."""
    seen = 0

    def first_views() -> Iterable[Tensor]:
        nonlocal seen
        for views in loader:
            seen += views.shape[0]
            yield views[:, 0]  # [B, 3, S, S]

    # A copy in the default memory format: train.py's channels_last model and eval.py's loaded one then sum the
    # statistics in the same order, to the same bits.
    work = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    torch.optim.swa_utils.update_bn(first_views(), work, device)
    for mine, estimated in zip(model.modules(), work.modules(), strict=True):
        if isinstance(mine, nn.modules.batchnorm._BatchNorm) and mine.track_running_stats:
            mine.running_mean.copy_(estimated.running_mean)
            mine.running_var.copy_(estimated.running_var)
    return seen


def adapt_batchnorm(
    model: SSD, info: DetectorInfo, root: str, batch_size: int, num_workers: int, device: torch.device
) -> int:
    """AdaBN on a detector: :func:`recompute_batchnorm` on the test-time view (resized, not mirrored) of each of
    ``root``'s target images (:func:`data.unlabeled.target_images`; annotations stay closed), in file order.
    train.py's ``--da adabn`` calls it after every epoch, eval.py's ``--adabn`` before evaluating. Returns the
    images seen."""
    if not has_batchnorm(model):
        raise ValueError(f"AdaBN re-estimates BatchNorm statistics, and this {model.config.backbone} SSD has none")
    views = TargetViews(model.config.size, info.preprocess.mean, info.preprocess.std, ("weak",), flip=False)
    loader = DataLoader(UnlabeledImages([(root, TARGET_SPLIT)], views), batch_size, num_workers=num_workers)
    return recompute_batchnorm(model, loader, device)
