"""The checkpoint format: the one place that writes and reads detector checkpoints and the ImageNet base networks.

A checkpoint of this project is a dict of tensors and plain containers::

    {"model": state_dict,                      # ssd.pytorch's keys and shapes (or another backbone's)
     "model_config": {...},                    # ssd.ModelConfig: rebuilds the network
     "class_names": [...],                     # foreground classes; the network's class c is class_names[c - 1]
     "preprocess": {"mean": [...], "std": ...},   # utils.transforms.Preprocess
     "postprocess": {"conf_thresh": ..., ...},    # layers.detection.DetectSettings (test-time defaults)
     ...training state (optimizer, scheduler, epoch, args, rng; see utils.engine.trainer)}

:class:`DetectorInfo` holds everything but the weights and the training state. A raw ssd.pytorch or fork
state_dict (also with DataParallel's ``module.`` prefix) describes nothing about itself; :class:`RawWeights`
says what to assume for one. Every file is read with ``torch.load(..., weights_only=True)``: a checkpoint can
hold tensors and plain containers, never code. Files are written atomically (temporary file, then
``os.replace``).
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from data.config import VOC_CLASSES
from layers.detection import DetectSettings
from layers.prior_box import prior_config
from ssd import BACKBONES, SSD, Backbone, ModelConfig
from utils.transforms import Preprocess

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
# Keys under which a checkpoint may nest the model's state_dict: this project's ("model") and the
# common "state_dict"/"model_state_dict" of other trainers.
_NESTED_KEYS = ("model", "state_dict", "model_state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a truncated file. The file gets the
    mode any other new file gets (0666 less the umask), not the temporary file's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


# The first bytes of files that users pass as weights by mistake, and what to say about each.
_NOT_CHECKPOINTS = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1a\x45\xdf\xa3", "a WebM/Matroska video"),
)


def _describe_foreign(path: Path) -> str | None:
    """What ``path`` is when it is plainly not a PyTorch checkpoint (an ONNX model, an image), else None."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if path.suffix.lower() == ".onnx":
        return "an ONNX model: inference.py and eval.py run it (--weights <file>); export needs a PyTorch checkpoint"
    for magic, kind in _NOT_CHECKPOINTS:
        if head.startswith(magic):
            return f"{kind}, not a PyTorch checkpoint; pass a .pth file with --weights"
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video, not a PyTorch checkpoint; pass a .pth file with --weights"
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely onto the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a PyTorch checkpoint, holds code (pickled objects), or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; check the path (docs/backbones.md, 'Weights')")
    foreign = _describe_foreign(path)
    if foreign is not None:
        raise ValueError(f"{path} is {foreign}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # not pickled objects: random, truncated or foreign bytes
            raise ValueError(f"{path} is not a loadable PyTorch checkpoint (it is corrupt); re-download it") from error
        # The safe loader met a pickled Python object (and ran none of it).
        raise ValueError(
            f"{path} holds pickled Python objects, which this project never loads (they can run code); it is not "
            "a checkpoint of this project or ssd.pytorch. If you trust its source, re-save just its tensors "
            "(e.g. its state_dict) with torch.save"
        ) from error
    except Exception as error:  # torch raises several types for a corrupt file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, KeyError):  # the legacy reader met no PyTorch magic number: its key means nothing here
            first_line = "not a PyTorch file"
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
    if all(key.startswith(("backbone.", "head.")) for key in state):
        raise ValueError(
            f"{path} is a torchvision SSD state_dict; convert it first: python -m utils.deploy.convert_torchvision "
            f"--input {path} --output <checkpoint>"
        )
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


@dataclass(frozen=True)
class DetectorInfo:
    """What a checkpoint says about its detector, besides the weights.

    Args:
        config: rebuilds the network (:class:`ssd.ModelConfig`).
        class_names: the C - 1 foreground classes, in the network's order.
        preprocess: the pixel normalisation the network was trained with.
        postprocess: the model's test-time Detect settings; command-line flags override single fields.
    """

    config: ModelConfig
    class_names: tuple[str, ...]
    preprocess: Preprocess = field(default_factory=Preprocess)
    postprocess: DetectSettings = field(default_factory=DetectSettings)

    def __post_init__(self) -> None:
        if len(self.class_names) != self.config.num_classes - 1:
            raise ValueError(
                f"{len(self.class_names)} class names for a network with {self.config.num_classes - 1} classes"
            )

    @property
    def num_classes(self) -> int:
        """C, including the background."""
        return self.config.num_classes

    # The entries to_dict writes (a checkpoint's, or an exported file's metadata).
    KEYS: ClassVar[tuple[str, ...]] = ("model_config", "class_names", "preprocess", "postprocess")

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint entries (plain containers, loadable with ``weights_only=True``)."""
        return {
            "model_config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
            "postprocess": self.postprocess.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorInfo:
        """Inverse of :meth:`to_dict`; entries that older checkpoints lack take their defaults.

        Raises:
            ValueError: ``model_config`` or ``class_names`` is missing, an entry cannot be read (the message names
                it), or the class names do not fit the network.
        """
        return cls(
            config=_read_entry(data, "model_config", ModelConfig.from_dict),
            class_names=_read_entry(data, "class_names", tuple),
            preprocess=_read_entry(data, "preprocess", Preprocess.from_dict, optional=True),
            postprocess=_read_entry(data, "postprocess", DetectSettings.from_dict, optional=True),
        )


def _read_entry(data: Mapping[str, Any], key: str, read: Callable[[Any], Any], optional: bool = False) -> Any:
    """``read(data[key])``, a ValueError naming ``key`` where that fails; an optional entry that is absent or empty
    reads as ``{}`` (its defaults)."""
    if key not in data and not optional:
        raise ValueError(f"entry {key!r} is missing")
    try:
        return read(data.get(key) or {}) if optional else read(data[key])
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"entry {key!r} cannot be read ({type(error).__name__}: {error})") from error


@dataclass(frozen=True)
class RawWeights:
    """What to assume for a raw ssd.pytorch/fork state_dict, which does not describe its network.

    Args:
        size: 300 or 512 (``--size``).
        class_names: the dataset's classes (``--dataset``/``--classes``); fixes C.
        prior_family: the dataset's prior family (Cityscapes models used COCO's priors).
    """

    size: int = 300
    class_names: tuple[str, ...] = VOC_CLASSES
    prior_family: str = "VOC"

    def info(self) -> DetectorInfo:
        config = ModelConfig(self.size, len(self.class_names) + 1, prior_config(self.prior_family, self.size))
        return DetectorInfo(config, tuple(self.class_names))


def detector_info(checkpoint: Mapping[str, Any], raw: RawWeights | None = None) -> DetectorInfo:
    """The :class:`DetectorInfo` of a checkpoint dict: its own for this project's, ``raw``'s for a raw state_dict.

    A project checkpoint written before class names were stored takes ``raw.class_names``.
    """
    raw = raw or RawWeights()
    if "model_config" not in checkpoint:
        return raw.info()
    data = dict(checkpoint)
    data.setdefault("class_names", raw.class_names)
    return DetectorInfo.from_dict(data)


def save_checkpoint(path: str | Path, model: SSD, info: DetectorInfo, **training_state: Any) -> None:
    """Write ``model``'s weights, ``info`` and any training state (plain containers and tensors) atomically."""
    if model.config != info.config:
        raise ValueError("the model's config differs from the DetectorInfo's; save the info of this model")
    atomic_save({"model": model.state_dict(), **info.to_dict(), **training_state}, path)


def load_detector(
    path: str | Path, device: torch.device | str = "cpu", raw: RawWeights | None = None
) -> tuple[SSD, DetectorInfo]:
    """Rebuild and load the detector of a checkpoint, in eval mode on ``device``.

    Args:
        path: this project's checkpoint, or a raw ssd.pytorch/fork/DataParallel state_dict.
        raw: what a raw state_dict is assumed to be (this project's checkpoints describe themselves).

    Raises:
        FileNotFoundError, ValueError: the file is missing, not a checkpoint, or does not fit the network.
    """
    checkpoint = read_checkpoint(path)
    try:
        info = detector_info(checkpoint, raw)
    except ValueError as error:  # e.g. an old checkpoint without class names, read with another dataset's
        raise ValueError(f"{path}: {error}; pass the checkpoint's --dataset or --classes") from error
    model = SSD(info.config)
    _load_state(model, extract_state_dict(checkpoint, path), path, skip_conf=False)
    return model.to(device).eval(), info


def _listed(names: Sequence[str], limit: int = 10) -> str:
    """``a, b, c`` (at most ``limit`` names, then how many more)."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass(frozen=True)
class ClassMatch:
    """How a detector's classes meet a dataset's, by name (case-insensitively, as annotations are read).

    Args:
        to_dataset: None when the two lists are equal (labels are the dataset's); else int64 [C - 1], the dataset
            label of each of the detector's classes, -1 for a class the dataset lacks (its detections are dropped).
        scored: the dataset's classes that the detector has, in the dataset's order: the classes evaluation scores.
        model_only: the detector's classes the dataset lacks (a VOC model's 14 others on Watercolor2k).
        dataset_only: the dataset's classes the detector lacks: not scored, and left out of the mean.
    """

    to_dataset: np.ndarray | None
    scored: tuple[str, ...]
    model_only: tuple[str, ...] = ()
    dataset_only: tuple[str, ...] = ()

    def describe(self) -> str | None:
        """One line saying which classes are scored, or None when the detector's classes are the dataset's."""
        if self.to_dataset is None:
            return None
        line = (
            f"scored on the {len(self.scored)} classes the model and the dataset share by name: {_listed(self.scored)}"
        )
        if self.model_only:
            line += f"; the model's {len(self.model_only)} other classes are not scored ({_listed(self.model_only)})"
        if self.dataset_only:
            line += (f"; the dataset's {len(self.dataset_only)} classes the model lacks are not scored and left out of "
                     f"the mean ({_listed(self.dataset_only)})")  # fmt: skip
        return line


def match_classes(model_names: Sequence[str], dataset_names: Sequence[str]) -> ClassMatch:
    """Map a detector's classes to a dataset's by name: a VOC model (20 classes) scored on Watercolor2k's 6, a
    torchvision COCO model (90 category ids) on COCO's 80, a car-only model on Cityscapes' 8.

    Raises:
        ValueError: the two share no class name.
    """
    if tuple(model_names) == tuple(dataset_names):
        return ClassMatch(None, tuple(dataset_names))
    label_of = {name.lower(): label for label, name in enumerate(dataset_names)}
    to_dataset = np.array([label_of.get(name.lower(), -1) for name in model_names], dtype=np.int64)
    found = set(to_dataset.tolist())
    scored = tuple(name for label, name in enumerate(dataset_names) if label in found)
    if not scored:
        raise ValueError(
            f"the model's {len(model_names)} classes ({_listed(model_names)}) and the dataset's {len(dataset_names)} "
            f"({_listed(dataset_names)}) share no name"
        )
    model_only = tuple(name for name, label in zip(model_names, to_dataset.tolist(), strict=True) if label < 0)
    dataset_only = tuple(name for label, name in enumerate(dataset_names) if label not in found)
    return ClassMatch(to_dataset, scored, model_only, dataset_only)


def require_classes(info: DetectorInfo, class_names: Sequence[str], path: str | Path) -> ClassMatch:
    """How a detector's classes map to a dataset's (:func:`match_classes`); refuse one that shares none of them."""
    try:
        return match_classes(info.class_names, class_names)
    except ValueError:
        raise ValueError(
            f"{path} was trained for {info.num_classes - 1} classes but the dataset has {len(class_names)}, and they "
            f"share no class name (model: {_listed(info.class_names)}; dataset: {_listed(class_names)}); pick the "
            "matching --dataset or --classes"
        ) from None


def _base_file_kind(state: StateDict) -> Backbone | None:
    """The backbone whose ImageNet base file ``state`` is (told by a key only its files have), else None."""
    bare = {k.removeprefix("vgg.") for k in state}
    return next((backbone for backbone in BACKBONES.values() if backbone.base_file_key in bare), None)


def load_base_weights(model: SSD, path: str | Path) -> None:
    """Load ImageNet weights of the model's base network, as a file of its usual source holds them: each
    backbone's entry (``ssd.BACKBONES``) says which file that is, which part of the SSD it initialises and how its
    keys map (``Backbone.base_state``), and the pixel normalisation those weights expect (``Backbone.pixel_norm``).
    A file that belongs to another backbone is refused, naming both."""
    state = extract_state_dict(read_checkpoint(path), path)
    kind, backbone = _base_file_kind(state), BACKBONES[model.config.backbone]
    if kind is not None and kind is not backbone:
        raise ValueError(
            f"{path} holds {kind.base_file_kind} weights, the base of --backbone {kind.name}, but the model's "
            f"backbone is {backbone.name}; pass --backbone {kind.name} or the {backbone.name} base network's file"
        )
    module = backbone.base_module(model)
    state = backbone.base_state(model, state)
    _check_compatible(module, state, path, backbone.base_description)
    module.load_state_dict(state, strict=True)
    logger.info("loaded the %s base from %s", backbone.name, path)
