"""Reading and writing weights: ssd.pytorch checkpoints, this project's checkpoints and the VGG base.

Every file is read with ``torch.load(..., weights_only=True)``: a checkpoint can hold tensors and plain
containers, never code. Files are written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssd import SSD, build_ssd, model_config_from_dict

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
# Keys under which a checkpoint may nest the model's state_dict: this project's ("model") and the
# common "state_dict"/"model_state_dict" of other trainers.
_NESTED_KEYS = ("model", "state_dict", "model_state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely onto the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a PyTorch checkpoint, holds code (pickled objects), or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; check the path (see README, 'Weights')")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or unsafe file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} is not a loadable PyTorch checkpoint ({first_line}); re-download or re-export it"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state_dict or checkpoint dict")
    return dict(checkpoint)


def extract_state_dict(checkpoint: Mapping[str, Any], source: str | Path = "<checkpoint>") -> StateDict:
    """The model state_dict inside ``checkpoint``, with DataParallel/DDP/compile prefixes removed.

    Accepts a raw state_dict (ssd.pytorch and its fork), ``{"model": state_dict, ...}`` (this project)
    and ``{"state_dict": ...}``.
    """
    for key in _NESTED_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    state: StateDict = {}
    for key, value in checkpoint.items():
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; not a model state_dict"
            )
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    if not state:
        raise ValueError(f"{source} holds no tensors; it is not a model checkpoint")
    return state


def _check_compatible(model: nn.Module, state: StateDict, source: str | Path, what: str) -> None:
    """Raise one ValueError naming every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if mismatched:
        parts.append(
            f"{len(mismatched)} shape mismatch(es): "
            + "; ".join(mismatched[:4])
            + ("; ..." if len(mismatched) > 4 else "")
        )
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    hint = ""
    if mismatched and not (missing or unexpected) and all(m.startswith("conf.") for m in mismatched):
        hint = (
            " Only the class count differs: pick the checkpoint's --dataset/--classes, or fine-tune it with --finetune."
        )
    raise ValueError(f"{source} does not fit {what}: " + " | ".join(parts) + "." + hint)


def _load_state(model: nn.Module, state: StateDict, path: str | Path, skip_conf: bool) -> None:
    if skip_conf:
        state = {k: v for k, v in state.items() if not k.startswith("conf.")}
        own_conf = {k: v for k, v in model.state_dict().items() if k.startswith("conf.")}
        _check_compatible(model, {**state, **own_conf}, path, "this SSD (conf heads skipped)")
        model.load_state_dict(state, strict=False)
        logger.info("loaded %s without its conf heads (%d tensors)", path, len(state))
    else:
        _check_compatible(model, state, path, "this SSD")
        model.load_state_dict(state, strict=True)
        logger.info("loaded %s (%d tensors)", path, len(state))


def load_model_weights(model: nn.Module, path: str | Path, skip_conf: bool = False) -> dict[str, Any]:
    """Load an SSD checkpoint into ``model`` in place.

    Args:
        model: an :class:`ssd.SSD`.
        path: an ssd.pytorch/fork state_dict, a DataParallel/DDP one, or this project's checkpoint.
        skip_conf: load everything except the ``conf.*`` classification heads, which keep their fresh
            initialisation: fine-tuning a model on a new class set.

    Returns:
        The whole checkpoint dict (this project's checkpoints carry ``class_names``, ``model_config``...).
    """
    checkpoint = read_checkpoint(path)
    _load_state(model, extract_state_dict(checkpoint, path), path, skip_conf)
    return checkpoint


def load_detector(
    path: str | Path,
    num_classes: int,
    size: int = 300,
    priors: str = "VOC",
    device: torch.device | str = "cpu",
    check_classes: bool = True,
) -> tuple[SSD, dict[str, Any]]:
    """Build the SSD a checkpoint needs and load it, in eval mode on ``device``.

    This project's checkpoints describe their network (``model_config``); for them ``size`` and ``priors``
    are ignored, and ``num_classes`` is only checked (``check_classes``: evaluation needs the dataset's
    class count; inference takes the checkpoint's). A raw ssd.pytorch/fork state_dict is loaded into
    ``build_ssd(size, num_classes, priors)``.

    Raises:
        ValueError: the checkpoint is for another number of classes than ``num_classes``, or does not fit.
    """
    checkpoint = read_checkpoint(path)
    if "model_config" in checkpoint:
        config = model_config_from_dict(checkpoint["model_config"])
        if check_classes and config.num_classes != num_classes:
            raise ValueError(
                f"{path} was trained for {config.num_classes - 1} classes but the dataset has {num_classes - 1}; "
                "pick the matching --dataset or --classes"
            )
        model = SSD(config)
    else:
        model = build_ssd(size, num_classes, priors)
    _load_state(model, extract_state_dict(checkpoint, path), path, skip_conf=False)
    return model.to(device).eval(), checkpoint


def load_base_weights(model: nn.Module, path: str | Path) -> None:
    """Load ImageNet VGG-16 weights in reduced-fc form (``0.weight`` ... ``33.bias``) into ``model.vgg``.

    Takes ssd.pytorch's ``vgg16_reducedfc.pth`` (converted Caffe weights: 0-255 pixels minus the mean
    (104, 117, 123), the preprocessing of ``BaseTransform``) or the output of ``utils/convert_vgg.py``
    (torchvision weights: RGB scaled to [0, 1], then normalised by ImageNet's mean and std).
    """
    state = extract_state_dict(read_checkpoint(path), path)
    state = {k[len("vgg.") :] if k.startswith("vgg.") else k: v for k, v in state.items()}
    _check_compatible(model.vgg, state, path, "the VGG-16 base (it needs width 1.0 without batch norm)")
    model.vgg.load_state_dict(state, strict=True)
    logger.info("loaded the VGG-16 base from %s", path)
