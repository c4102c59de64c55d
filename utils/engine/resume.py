"""A run's arguments before anything is built: a new run's flags resolved and checked, ``--resume``'s taken from
its checkpoint, and the random number generators' states that an exact resume restores."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layers.prior_box import PRIOR_CONFIGS
from ssd import BACKBONES, ModelConfig
from utils.checkpoint import (
    detector_info,
    read_checkpoint,
)
from utils.engine.config import TrainConfig
from utils.engine.da_config import METHODS, AdaptationConfig, check_network
from utils.engine.distributed import DistInfo
from utils.transforms import PIXEL_NORMS

logger = logging.getLogger(__name__)

# On --resume every argument comes from the checkpoint, except these: per-invocation ones, always from the
# command line, and operational ones, from the command line when given there.
PER_INVOCATION_ARGS = ("resume", "epochs_per_run")
OPERATIONAL_ARGS = ("device", "num_workers", "verbose")


# Arguments added since checkpoints were first written, with the value those checkpoints trained with where it
# is not the new default: an older run resumes as it started.
# Checkpoints of earlier versions ran domain adaptation's two domains as one batch, with the teacher in eval mode.
FORMER_DEFAULTS = {"crop_samplers": "ssd_pytorch", "da_batch": "joint", "teacher_bn": "eval"}
# The flags that describe the network; fine-tuning takes them from a checkpoint that describes itself.
ARCHITECTURE_FLAGS = ("backbone", "size", "priors", "width", "batch_norm")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (the model's initialisation draws from them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """The global generators' states, as a checkpoint keeps them (tensors, not NumPy arrays, for weights_only)."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    """Put back :func:`rng_states`' states, so that a resumed run draws what the uninterrupted one would."""
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in states["python"]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def find_resume_checkpoint(resume: str, project: str) -> Path:
    """``--resume``'s checkpoint: the path given, or for ``auto`` the newest ``last.pth`` under ``project``."""
    if resume != "auto":
        return Path(resume)
    candidates = sorted(Path(project).glob("*/last.pth"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"--resume auto found no last.pth under {project}; pass the checkpoint path")
    return candidates[-1]


def prior_family_of(config: ModelConfig) -> str | None:
    """The name of ``config``'s prior preset (``--priors``), None for priors of no preset."""
    return next((family for (family, size), priors in PRIOR_CONFIGS.items() if priors == config.priors), None)


def resolve_model_flags(settings: TrainConfig, typed: frozenset[str]) -> TrainConfig:
    """A new run's network settings filled in: ``--finetune``'s network when the checkpoint describes one (a typed
    flag that differs from it is refused, naming both), else the backbone's defaults for ``--size``, ``--basenet``
    and ``--pixel_norm``."""
    if settings.finetune:
        checkpoint = read_checkpoint(settings.finetune)
        if "model_config" in checkpoint:
            info = detector_info(checkpoint)
            config = info.config
            network = {"backbone": config.backbone, "size": config.size, "priors": prior_family_of(config),
                       "width": config.width, "batch_norm": config.batch_norm}  # fmt: skip
            for name in ARCHITECTURE_FLAGS:
                if name in typed and getattr(settings, name) != network[name]:
                    raise ValueError(
                        f"--finetune {settings.finetune} is a {config.backbone} SSD{config.size} (priors "
                        f"{network['priors'] or 'of its own'}, width {config.width:g}, batch_norm {config.batch_norm}), "
                        f"so --{name} {getattr(settings, name)} does not fit it; drop --{name}: fine-tuning keeps the "
                        "checkpoint's network"
                    )
            opencv = replace(info.preprocess, resize="opencv")
            pixel_norm = next((name for name, norm in PIXEL_NORMS.items() if norm == opencv), None)
            if "pixel_norm" in typed and settings.pixel_norm != pixel_norm:
                raise ValueError(f"--finetune {settings.finetune} was trained with its own input normalisation, so "
                                 f"--pixel_norm {settings.pixel_norm} would be ignored; drop it")  # fmt: skip
            return replace(settings, **network, pixel_norm=pixel_norm)
    backbone = BACKBONES[settings.backbone]
    return replace(
        settings,
        size=backbone.sizes[0] if settings.size is None else settings.size,
        basenet=backbone.base_weights if settings.basenet is None else settings.basenet,
        pixel_norm=backbone.pixel_norm if settings.pixel_norm is None else settings.pixel_norm,
    )


def resolve_run(
    settings: TrainConfig, typed: frozenset[str], defaults: TrainConfig, device: torch.device, dist: DistInfo
) -> tuple[TrainConfig, dict[str, Any] | None, Path | None]:
    """The settings of the run to train, and the checkpoint and its path when ``--resume`` is given.

    train.py's refusals all happen here, before anything is built: a new run's flags are checked
    (:func:`check_train_flags`) before its network flags are resolved; a resumed run refuses typed flags that its
    checkpoint would override; both then check what this device and these processes can run
    (:func:`check_runnable`).

    Args:
        settings: the parsed flags.
        typed: the flags the user typed (``utils.cli.parse_args``'s ``typed_flags``).
        defaults: the parser's defaults.
        device, dist: where the run trains, and its processes.

    On ``--resume`` every setting comes from the checkpoint, except the per-invocation ones (always from the
    command line) and the operational ones, from the command line where they differ from ``defaults``.
    """
    if not settings.resume:
        check_train_flags(settings, typed)
        resolved = resolve_model_flags(settings, typed)
        check_runnable(resolved, device, dist)
        return resolved, None, None
    path = find_resume_checkpoint(settings.resume, settings.project)
    checkpoint = read_checkpoint(path)
    if "optimizer" not in checkpoint or "args" not in checkpoint:
        raise ValueError(f"{path} is not a train.py checkpoint (no optimizer state); use it with --finetune instead")
    # A typed flag that repeats the run's own setting changes nothing; any other would be ignored.
    started = checkpoint["args"]
    ignored = sorted(name for name in typed - set(OPERATIONAL_ARGS) - set(PER_INVOCATION_ARGS) - {"project", "end_epoch"}
                     if name not in started or getattr(settings, name) != started[name])  # fmt: skip
    if ignored:
        raise ValueError(
            f"--resume continues {path} with the settings it was started with, so "
            f"{', '.join('--' + name for name in ignored)} would be ignored; drop {'it' if len(ignored) == 1 else 'them'}"
            f", or start a new run from its weights with --finetune {path}"
        )
    # Settings added since the checkpoint was written: what it trained with, else the defaults.
    saved = {**defaults.to_dict(), **FORMER_DEFAULTS, **checkpoint["args"]}
    saved.update({k: getattr(settings, k) for k in OPERATIONAL_ARGS
                  if k in typed or getattr(settings, k) != getattr(defaults, k)})  # fmt: skip
    saved.update({k: getattr(settings, k) for k in PER_INVOCATION_ARGS})
    if "end_epoch" in typed:
        saved.update(change_length(saved, settings.end_epoch, int(checkpoint["epoch"]), path))
    resumed = TrainConfig.from_dict(saved)
    check_runnable(resumed, device, dist)
    return resumed, checkpoint, path


def check_adaptation_flags(settings: TrainConfig, typed: frozenset[str]) -> None:
    """Refuse domain adaptation flags that are wrong or would be ignored, before anything is built."""
    methods = settings.da or []
    target = settings.target_root
    if methods and not target:
        raise ValueError(f"--da {' '.join(methods)} adapts to unlabeled target images: give their folder "
                         "(any folder of images, or a VOC-format folder) with --target_root")  # fmt: skip
    if "target_dataset" in typed and not target:
        raise ValueError("--target_dataset names the dataset of --target_root; give --target_root too")
    if target and not Path(target).is_dir():
        what = "is a file" if Path(target).exists() else "does not exist"
        raise ValueError(f"--target_root {target} {what}; give the folder of the target's images")
    for name in sorted(typed & {flag for method in METHODS.values() for flag in method.flags}):
        owners = [method.name for method in METHODS.values() if name in method.flags]
        if not set(owners) & set(methods):
            raise ValueError(f"--{name} is a setting of --da {' or '.join(owners)}, which this run does not use; drop "
                             f"it or add {owners[0]} to --da")  # fmt: skip
    if settings.swda and "grl_levels" in typed:
        raise ValueError("--swda places its classifiers on relu(conv3_2) and relu(conv4_3), so --grl_levels would be "
                         "ignored; drop one")  # fmt: skip
    if "focal_gamma" in typed and not settings.swda:
        raise ValueError("--focal_gamma is the gamma of --swda's global classifier; add --swda or drop it")
    config = AdaptationConfig.from_settings(settings)  # refuses methods that cannot share a run
    if not settings.finetune:  # a fine-tuned network is the checkpoint's, checked when it is built
        backbone = BACKBONES[settings.backbone]
        check_network(config, backbone, backbone.has_batch_norm(settings.batch_norm))


def check_train_flags(settings: TrainConfig, typed: frozenset[str]) -> None:
    """A new run's refusals of its flags, one line each: a missing dataset, and flags that the others make
    meaningless, naming both (a typed flag is never ignored silently).

    Args:
        settings: the parsed flags.
        typed: the flags the user typed.
    """
    if settings.dataset_root is None:
        raise ValueError("--dataset_root is required (the dataset folder), unless you --resume a run")
    if settings.schedule == "paper_voc":
        for name in sorted(typed & {"end_epoch", "milestones"}):
            raise ValueError(
                f"--schedule paper_voc fixes the length and the lr drops (the paper's 120k iterations of 32 images, "
                f"x0.1 at 80k and 100k), so --{name} would be ignored; drop it, or use --schedule multistep "
                "--milestones ... --end_epoch N"
            )
    if settings.schedule == "cosine" and "milestones" in typed:
        raise ValueError("--milestones sets the lr drops of --schedule multistep; with --schedule cosine it would be "
                         "ignored: drop it, or pick --schedule multistep")  # fmt: skip
    if settings.finetune and "basenet" in typed:
        raise ValueError(f"--finetune {settings.finetune} starts from a whole detector (all but its conf heads), so "
                         f"--basenet {settings.basenet} would be ignored; give one of them")  # fmt: skip
    check_adaptation_flags(settings, typed)
    if settings.schedule == "paper_voc" and "warmup_epochs" in typed and settings.warmup_epochs > 0:
        logger.info("--schedule paper_voc with --warmup_epochs %g: a warmup the paper's schedule does not have",
                    settings.warmup_epochs)  # fmt: skip


def check_runnable(settings: TrainConfig, device: torch.device, dist: DistInfo) -> None:
    """Refuse what this device or these processes cannot run, for a new or a resumed run: a batch that does not
    split evenly over the processes, and ``--cuda_graph`` where the recorded step cannot run."""
    if settings.batch_size % dist.world_size:
        raise ValueError(f"--batch_size {settings.batch_size} must be divisible by the {dist.world_size} processes")
    if not settings.cuda_graph:
        return
    if settings.da or dist.enabled:
        raise ValueError("--cuda_graph records the supervised step of one process; drop it with --da or under torchrun")
    if settings.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--cuda_graph --amp trains in bfloat16, which {torch.cuda.get_device_name(device)} lacks; "
                         "drop --amp (float32) or --cuda_graph (float16 with loss scaling)")  # fmt: skip


def change_length(saved: dict[str, Any], end_epoch: int, trained: int, path: Path) -> dict[str, Any]:
    """The saved arguments' changes for ``--resume ... --end_epoch N``: training a run longer (or shorter).

    The lr schedule is recomputed for the new length, so from here on the run differs from an uninterrupted
    run of either length; the change is logged, kept in the arguments and noted in every later log record.
    """
    if saved["schedule"] == "paper_voc":
        raise ValueError(f"{path} follows --schedule paper_voc, whose length is fixed; --end_epoch cannot change it")
    if end_epoch <= trained:
        raise ValueError(f"{path} has trained {trained} epochs; --end_epoch {end_epoch} must be larger to train it on")
    if end_epoch == saved["end_epoch"]:
        return {}
    note = (f"--end_epoch changed from {saved['end_epoch']} to {end_epoch} on resuming after epoch {trained}: the lr "
            f"schedule was recomputed, so this run is not equal to an uninterrupted {end_epoch}-epoch run")  # fmt: skip
    logger.warning(note)
    return {"end_epoch": end_epoch, "length_changes": [*(saved.get("length_changes") or []), note]}
