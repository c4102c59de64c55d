"""A run's arguments before anything is built: a new run's flags resolved and checked, ``--resume``'s taken from
its checkpoint, and the random number generators' states that an exact resume restores."""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layers.prior_box import PRIOR_CONFIGS
from ssd import BACKBONES, ModelConfig
from utils.augmentations import PIXEL_NORMS
from utils.checkpoint import (
    detector_info,
    read_checkpoint,
)
from utils.engine.adaptation import (
    check_adaptation_flags,
)
from utils.engine.distributed import DistInfo

logger = logging.getLogger(__name__)

# On --resume every argument comes from the checkpoint, except these: per-invocation ones, always from the
# command line, and operational ones, from the command line when given there.
PER_INVOCATION_ARGS = ("resume", "epochs_per_run")
OPERATIONAL_ARGS = ("device", "num_workers", "verbose")


# Arguments added since checkpoints were first written, with the value those checkpoints trained with where it
# is not the new default: an older run resumes as it started.
FORMER_DEFAULTS = {"crop_samplers": "ssd_pytorch"}
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


def resolve_model_flags(args: argparse.Namespace, typed: frozenset[str]) -> None:
    """Fill in a new run's network flags: ``--finetune``'s network when the checkpoint describes one (a typed flag
    that differs from it is refused, naming both), else the backbone's defaults for ``--size``, ``--basenet`` and
    ``--pixel_norm``."""
    if args.finetune:
        checkpoint = read_checkpoint(args.finetune)
        if "model_config" in checkpoint:
            info = detector_info(checkpoint)
            config = info.config
            network = {"backbone": config.backbone, "size": config.size, "priors": prior_family_of(config),
                       "width": config.width, "batch_norm": config.batch_norm}  # fmt: skip
            for name in ARCHITECTURE_FLAGS:
                if name in typed and getattr(args, name) != network[name]:
                    raise ValueError(
                        f"--finetune {args.finetune} is a {config.backbone} SSD{config.size} (priors "
                        f"{network['priors'] or 'of its own'}, width {config.width:g}, batch_norm {config.batch_norm}), "
                        f"so --{name} {getattr(args, name)} does not fit it; drop --{name}: fine-tuning keeps the "
                        "checkpoint's network"
                    )
            opencv = replace(info.preprocess, resize="opencv")
            pixel_norm = next((name for name, norm in PIXEL_NORMS.items() if norm == opencv), None)
            if "pixel_norm" in typed and args.pixel_norm != pixel_norm:
                raise ValueError(f"--finetune {args.finetune} was trained with its own input normalisation, so "
                                 f"--pixel_norm {args.pixel_norm} would be ignored; drop it")  # fmt: skip
            vars(args).update(network, pixel_norm=pixel_norm)
            return
    backbone = BACKBONES[args.backbone]
    if args.size is None:
        args.size = backbone.sizes[0]
    if args.basenet is None:
        args.basenet = backbone.base_weights
    if args.pixel_norm is None:
        args.pixel_norm = backbone.pixel_norm


def resolve_resume(
    args: argparse.Namespace, defaults: dict[str, Any]
) -> tuple[argparse.Namespace, dict[str, Any] | None, Path | None]:
    """The arguments of the run to train, and the checkpoint and its path when ``--resume`` is given.

    On ``--resume`` every argument comes from the checkpoint, except the per-invocation ones (always from the
    command line) and the operational ones, from the command line where they differ from ``defaults``.
    """
    typed = getattr(args, "typed_flags", frozenset())
    if not args.resume:
        if args.dataset_root is None:
            raise ValueError("--dataset_root is required (the dataset folder), unless you --resume a run")
        check_new_run_flags(args, typed)
        resolve_model_flags(args, typed)
        return args, None, None
    path = find_resume_checkpoint(args.resume, args.project)
    checkpoint = read_checkpoint(path)
    if "optimizer" not in checkpoint or "args" not in checkpoint:
        raise ValueError(f"{path} is not a train.py checkpoint (no optimizer state); use it with --finetune instead")
    # A typed flag that repeats the run's own setting changes nothing; any other would be ignored.
    started = checkpoint["args"]
    ignored = sorted(name for name in typed - set(OPERATIONAL_ARGS) - set(PER_INVOCATION_ARGS) - {"project", "end_epoch"}
                     if name not in started or getattr(args, name) != started[name])  # fmt: skip
    if ignored:
        raise ValueError(
            f"--resume continues {path} with the settings it was started with, so "
            f"{', '.join('--' + name for name in ignored)} would be ignored; drop {'it' if len(ignored) == 1 else 'them'}"
            f", or start a new run from its weights with --finetune {path}"
        )
    # Arguments added since the checkpoint was written: what it trained with, else the defaults.
    saved = {**defaults, **FORMER_DEFAULTS, **checkpoint["args"]}
    saved.update({k: getattr(args, k) for k in OPERATIONAL_ARGS if k in typed or getattr(args, k) != defaults[k]})
    saved.update({k: getattr(args, k) for k in PER_INVOCATION_ARGS})
    if "end_epoch" in typed:
        saved.update(change_length(saved, args.end_epoch, int(checkpoint["epoch"]), path))
    return argparse.Namespace(**saved), checkpoint, path


def check_new_run_flags(args: argparse.Namespace, typed: frozenset[str]) -> None:
    """Refuse flags that the others make meaningless, naming both (a typed flag is never ignored silently)."""
    if args.schedule == "paper_voc":
        for name in sorted(typed & {"end_epoch", "milestones"}):
            raise ValueError(
                f"--schedule paper_voc fixes the length and the lr drops (the paper's 120k iterations of 32 images, "
                f"x0.1 at 80k and 100k), so --{name} would be ignored; drop it, or use --schedule multistep "
                "--milestones ... --end_epoch N"
            )
    if args.schedule == "cosine" and "milestones" in typed:
        raise ValueError("--milestones sets the lr drops of --schedule multistep; with --schedule cosine it would be "
                         "ignored: drop it, or pick --schedule multistep")  # fmt: skip
    if args.finetune and "basenet" in typed:
        raise ValueError(f"--finetune {args.finetune} starts from a whole detector (all but its conf heads), so "
                         f"--basenet {args.basenet} would be ignored; give one of them")  # fmt: skip
    check_adaptation_flags(args, typed)
    if args.schedule == "paper_voc" and "warmup_epochs" in typed and args.warmup_epochs > 0:
        logger.info("--schedule paper_voc with --warmup_epochs %g: a warmup the paper's schedule does not have",
                    args.warmup_epochs)  # fmt: skip


def check_run_flags(args: argparse.Namespace, device: torch.device, dist: DistInfo) -> None:
    """Refuse what the device or the processes cannot run, before anything is built: ``--cuda_graph`` where the
    recorded step cannot run, and a batch that does not split evenly over the processes."""
    if args.batch_size % dist.world_size:
        raise ValueError(f"--batch_size {args.batch_size} must be divisible by the {dist.world_size} processes")
    if not getattr(args, "cuda_graph", False):
        return
    if getattr(args, "da", None) or dist.enabled:
        raise ValueError("--cuda_graph records the supervised step of one process; drop it with --da or under torchrun")
    if args.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--cuda_graph --amp trains in bfloat16, which {torch.cuda.get_device_name(device)} lacks; "
                         "drop --amp (float32) or --cuda_graph (float16 with loss scaling)")  # fmt: skip


def run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments a run saves (args.json, its checkpoints): all but the parser's record of the typed flags."""
    return {k: v for k, v in vars(args).items() if k != "typed_flags"}


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
    return {"end_epoch": end_epoch, "length_changes": [*saved.get("length_changes", []), note]}
