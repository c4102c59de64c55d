"""The training loop of train.py: one run's state (data, model, optimizer, schedule, DDP), its epochs, its
exact resume, and its logs. train.py parses flags and calls :class:`Trainer`; tests import it directly."""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.base import DetectionDataset, detection_collate
from data.build import build_dataset
from data.config import DatasetPreset, get_preset
from data.sampler import EpochSampler
from data.unlabeled import ContinuingSampler, UnlabeledImages
from layers.multibox_loss import MultiBoxLoss
from layers.prior_box import PRIOR_CONFIGS
from ssd import BACKBONES, SSD, ModelConfig, build_ssd
from utils.adaptation import (
    TARGET_SPLIT,
    AdaptationConfig,
    DomainAdaptation,
    adapt_batchnorm,
    check_adaptation_flags,
    has_batchnorm,
)
from utils.augmentations import PIXEL_NORMS, SSDAugmentation, TargetViews
from utils.checkpoint import (
    DetectorInfo,
    detector_info,
    load_base_weights,
    load_model_weights,
    read_checkpoint,
    save_checkpoint,
)
from utils.distributed import DistInfo, all_reduce_sum, convert_sync_batchnorm
from utils.evaluation import default_metric, evaluate
from utils.plots import plot_training
from utils.predict import Predictor
from utils.runs import check_writable, increment_run_dir
from utils.runtime import mixed_precision_dtype
from utils.schedule import Schedule, paper_voc_epochs
from utils.static_step import StaticTrainStep

logger = logging.getLogger(__name__)

# On --resume every argument comes from the checkpoint, except these: per-invocation ones, always from the
# command line, and operational ones, from the command line when given there.
PER_INVOCATION_ARGS = ("resume", "epochs_per_run")
OPERATIONAL_ARGS = ("device", "num_workers", "verbose")
# Arguments added since checkpoints were first written, with the value those checkpoints trained with where it
# is not the new default: an older run resumes as it started.
FORMER_DEFAULTS = {"crop_samplers": "ssd_pytorch"}

# Each backbone's ImageNet base as its usual source names the file (README, "Weights"), and the input normalisation
# (utils.augmentations.PIXEL_NORMS) those weights expect: the --basenet and --pixel_norm defaults.
BASE_NETWORKS: dict[str, tuple[str, str]] = {
    "vgg16": ("weights/vgg16_reducedfc.pth", "caffe"),
    "mobilenet_v3_large": ("weights/mobilenet_v3_large-8738ca79.pth", "torchvision"),
    "resnet50": ("weights/resnet50-0676ba61.pth", "torchvision"),
}
# Where each backbone's ImageNet base comes from (README, "Weights"), for the message of a missing --basenet file.
BASE_NETWORK_HELP = {
    "vgg16": "put ssd.pytorch's vgg16_reducedfc.pth there (README, 'Weights'), or convert torchvision's VGG-16 with "
    "utils/convert_vgg.py and pass --basenet <file> --pixel_norm torchvision",
    "mobilenet_v3_large": "put torchvision's ImageNet MobileNetV3-Large weights there (mobilenet_v3_large-8738ca79.pth "
    "from download.pytorch.org; README, 'Weights')",
    "resnet50": "put torchvision's ImageNet ResNet-50 weights there (resnet50-0676ba61.pth from download.pytorch.org; "
    "README, 'Weights')",
}
# The flags that describe the network; fine-tuning takes them from a checkpoint that describes itself.
ARCHITECTURE_FLAGS = ("backbone", "size", "priors", "width", "batch_norm")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says where."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
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
    basenet, pixel_norm = BASE_NETWORKS[args.backbone]
    if args.basenet is None:
        args.basenet = basenet
    if args.pixel_norm is None:
        args.pixel_norm = pixel_norm


def build_model(args: argparse.Namespace, preset: DatasetPreset) -> tuple[SSD, DetectorInfo]:
    """A new SSD for ``preset`` and its :class:`DetectorInfo`.

    With ``--finetune``, all but the checkpoint's conf heads, and the checkpoint's network, pixel normalisation and
    Detect settings when it describes them (a converted torchvision model keeps torchvision's); its test images are
    then resized as training resizes them (OpenCV), since the fine-tuned network is no longer torchvision's. Else
    the network of the flags (:func:`resolve_model_flags`), initialised from ``--basenet`` (``none``: from
    scratch), with the backbone's test settings.
    """
    if args.finetune:
        checkpoint = read_checkpoint(args.finetune)
        if "model_config" in checkpoint:
            source = detector_info(checkpoint)
            model = SSD(replace(source.config, num_classes=preset.num_classes))
            load_model_weights(model, args.finetune, skip_conf=True)
            preprocess = replace(source.preprocess, resize="opencv")
            return model, DetectorInfo(model.config, preset.class_names, preprocess, source.postprocess)
    from_scratch = not args.basenet or args.basenet.lower() == "none"
    # torchvision's rule: ImageNet's MobileNetV3 has the full tail; from scratch, SSDLite takes the reduced one.
    reduced_tail = args.backbone == "mobilenet_v3_large" and from_scratch and not args.finetune
    model = build_ssd(args.size, preset.num_classes, args.priors or BACKBONES[args.backbone].prior_family or
                      preset.prior_family, args.width, args.batch_norm, args.backbone, reduced_tail)  # fmt: skip
    if args.finetune:
        load_model_weights(model, args.finetune, skip_conf=True)
    elif not from_scratch:
        if not Path(args.basenet).is_file():
            raise FileNotFoundError(
                f"base network {args.basenet} does not exist: {BASE_NETWORK_HELP[args.backbone]}, or train from "
                "scratch with --basenet none"
            )
        load_base_weights(model, args.basenet)
    info = DetectorInfo(model.config, preset.class_names, PIXEL_NORMS[args.pixel_norm],
                        BACKBONES[args.backbone].test_settings)  # fmt: skip
    return model, info


def build_optimizer(args: argparse.Namespace, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD or AdamW over ``parameters`` (the detector's, then any domain classifiers'); ``--fused_optimizer``
    updates every parameter in one fused kernel (the same update up to float rounding; fewer launches on a GPU).
    ``--cuda_graph`` on a GPU implies it: a recorded step reads its learning rate from a GPU tensor, which fused SGD
    takes and AdamW only with ``capturable`` as well. A resumed state keeps these flags (:func:`match_optimizer_flags`).
    """
    graphed = getattr(args, "cuda_graph", False) and bool(parameters) and parameters[0].is_cuda
    fused = (getattr(args, "fused_optimizer", False) or graphed) or None
    if args.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                               fused=fused)  # fmt: skip
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay, fused=fused, capturable=graphed)


def match_optimizer_flags(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: the implementation flags that :func:`build_optimizer` chose for this run and
    device, not those of the run that saved the state (a run saved on a CPU resumes with ``--cuda_graph`` on a
    GPU fused and capturable), and Adam's step counters where those flags keep them (on the parameter's device)."""
    flags = ("fused", "foreach", "capturable")
    for group in optimizer.param_groups:
        group.update({key: optimizer.defaults[key] for key in flags if key in group and key in optimizer.defaults})
        on_device = group.get("fused") or group.get("capturable")
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):
                device = param.device if on_device else torch.device("cpu")
                optimizer.state[param]["step"] = step.to(device, torch.float32)


def warmup_epochs(args: argparse.Namespace) -> float:
    """``--warmup_epochs`` when given; else 1 epoch, except under the paper's schedule, which has none."""
    if args.warmup_epochs is not None:
        return args.warmup_epochs
    return 0.0 if args.schedule == "paper_voc" else 1.0


def resolve_schedule(args: argparse.Namespace, dataset_size: int, steps_per_epoch: int) -> tuple[int, Schedule]:
    """The number of epochs and the per-iteration lr schedule."""
    epochs, milestones, kind = args.end_epoch, args.milestones, args.schedule
    if kind == "paper_voc":
        epochs, milestones = paper_voc_epochs(dataset_size, args.batch_size)
        kind = "multistep"
    schedule = Schedule(
        total_iters=epochs * steps_per_epoch,
        warmup_iters=round(warmup_epochs(args) * steps_per_epoch),
        kind=kind,
        milestones=tuple(m * steps_per_epoch for m in milestones),
        gamma=args.gamma,
    )
    return epochs, schedule


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


def check_cuda_graph_flags(args: argparse.Namespace, device: torch.device, dist: DistInfo) -> None:
    """Refuse ``--cuda_graph`` where the recorded step cannot run, before anything is built."""
    if not getattr(args, "cuda_graph", False):
        return
    if getattr(args, "da", None) or dist.enabled:
        raise ValueError("--cuda_graph records the supervised step of one process; drop it with --da or under torchrun")
    if args.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
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
    return {"end_epoch": end_epoch, "length_changes": [*saved.get("length_changes", []), note]}


def train_augmentation(args: argparse.Namespace, info: DetectorInfo) -> SSDAugmentation:
    """The training augmentation of ``args`` (``--max_expand``, ``--crop_samplers``) for ``info``'s detector.

    Training images are resized by OpenCV whatever ``info.preprocess.resize`` says (test time may resize as
    torchvision does, for checkpoints converted from it); both are bilinear with half-pixel centres.
    """
    preprocess = info.preprocess
    return SSDAugmentation(info.config.size, preprocess.mean, preprocess.std, max_expand=args.max_expand,
                           crop_samplers=args.crop_samplers)  # fmt: skip


def build_train_loader(
    args: argparse.Namespace, preset: DatasetPreset, info: DetectorInfo, dist: DistInfo, device: torch.device
) -> tuple[DetectionDataset, EpochSampler, DataLoader]:
    """The augmented training set (:func:`train_augmentation`), its resumable sampler and the loader of this
    process's share of a batch."""
    augmentation = train_augmentation(args, info)
    dataset = build_dataset(preset, args.dataset_root, "train", augmentation, args.image_set, args.keep_difficult,
                            args.skip_bad, args.seed)  # fmt: skip
    if len(dataset) < args.batch_size:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than --batch_size {args.batch_size}")
    sampler = EpochSampler(len(dataset), args.seed, dist.world_size, dist.rank, shuffle=True, drop_last=True)
    # Workers persist across epochs (no start-up per epoch); the sampler's keys carry the epoch to them.
    loader = DataLoader(dataset, args.batch_size // dist.world_size, sampler=sampler, num_workers=args.num_workers,
                        collate_fn=detection_collate, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=args.num_workers > 0)  # fmt: skip
    return dataset, sampler, loader


def target_preset(args: argparse.Namespace, source: DatasetPreset) -> DatasetPreset:
    """The preset of ``--target_dataset`` (default: the source's); its classes must be the source's."""
    preset = get_preset(args.target_dataset or source.name, args.classes)
    if preset.class_names != source.class_names:
        raise ValueError(f"--target_dataset {preset.name} has classes {list(preset.class_names)} but --dataset "
                         f"{source.name} has {list(source.class_names)}; adaptation needs the same classes")  # fmt: skip
    return preset


def build_target_loader(
    args: argparse.Namespace, info: DetectorInfo, views: tuple[str, ...], dist: DistInfo, device: torch.device
) -> tuple[ContinuingSampler, DataLoader]:
    """The unlabeled target images of ``--target_root`` (its trainval split; annotations never opened) as ``views``
    (:class:`~utils.augmentations.TargetViews`; "augmented" is the source's :func:`train_augmentation`), in batches of
    ``--batch_size`` split over the processes as the source's, in an order fixed by the training step."""
    preprocess = info.preprocess
    augmentation = train_augmentation(args, info) if "augmented" in views else None
    transform = TargetViews(info.config.size, preprocess.mean, preprocess.std, views, augmentation=augmentation)
    dataset = UnlabeledImages([(args.target_root, TARGET_SPLIT)], transform, args.seed + 1)
    sampler = ContinuingSampler(len(dataset), args.batch_size, args.seed + 1, dist.world_size, dist.rank)
    loader = DataLoader(dataset, args.batch_size // dist.world_size, sampler=sampler, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True)  # fmt: skip
    return sampler, loader


class Trainer:
    """Holds what one training run owns and runs it epoch by epoch.

    Args:
        args: train.py's arguments, already resolved by :func:`resolve_resume`.
        checkpoint: the checkpoint to resume from, or None for a new run.
        resume_path: its path (the run folder is its folder).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        device: torch.device,
        dist: DistInfo,
        checkpoint: dict[str, Any] | None = None,
        resume_path: Path | None = None,
    ) -> None:
        self.args, self.device, self.dist = args, device, dist
        check_cuda_graph_flags(args, device, dist)
        if args.batch_size % dist.world_size:
            raise ValueError(f"--batch_size {args.batch_size} must be divisible by the {dist.world_size} processes")
        if dist.is_main and resume_path is None:
            check_writable(args.project)  # the run folder itself is made once everything is built
        seed_everything(args.seed)

        self.preset = get_preset(args.dataset, args.classes)
        if checkpoint is None:
            self.model, self.info = build_model(args, self.preset)
        else:  # the weights are loaded by load_state below
            self.info = detector_info(checkpoint)
            self.model = SSD(self.info.config)
        self.model.to(device)
        self.dataset, self.sampler, self.loader = build_train_loader(args, self.preset, self.info, dist, device)
        self.steps_per_epoch = len(self.dataset) // args.batch_size
        self.target_preset = target_preset(args, self.preset) if getattr(args, "target_root", None) else None
        config = AdaptationConfig.from_args(args)
        self.adaptation = DomainAdaptation(config, self.model) if config.methods else None
        self.target_sampler, self.target_loader = (None, None)
        if config.views:
            self.target_sampler, self.target_loader = build_target_loader(args, self.info, config.views, dist, device)
        network = self.adaptation.network(self.model) if self.adaptation is not None else self.model
        network.to(device)
        if dist.enabled and getattr(args, "sync_bn", False):
            convert_sync_batchnorm(network)  # in place: the detector's and the domain classifiers' BatchNorm
        elif dist.enabled and self.adaptation is not None and has_batchnorm(network):
            raise ValueError(
                "with BatchNorm, domain adaptation under torchrun needs --sync_bn: each process's statistics (and a "
                "mean teacher's, and AdaBN's) would otherwise differ from one process's"
            )
        self.memory_format = torch.preserve_format if args.no_channels_last else torch.channels_last
        self.model.to(memory_format=self.memory_format)
        parameters = list(self.model.parameters())
        if self.adaptation is not None:
            parameters += list(self.adaptation.parameters())
        self.optimizer = build_optimizer(args, parameters)
        self.epochs, schedule = resolve_schedule(args, len(self.dataset), self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule.factor)
        graphed = getattr(args, "cuda_graph", False)
        # A recorded step cannot scale float16 losses (the overflow check waits on the host): bfloat16 instead.
        self.amp_dtype = (torch.bfloat16 if graphed else mixed_precision_dtype(device)) if args.amp else None
        # float16 needs loss scaling against gradient underflow; bfloat16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch, self.epoch_step, self.iteration, self.best_map = 0, 0, 0, None
        # The running loss sums, step count and time of the current epoch: a checkpoint saved mid-epoch keeps
        # them, so the resumed epoch logs the mean over all its steps.
        self.term_names = self.adaptation.term_names() if self.adaptation is not None else ("loss_l", "loss_c")
        self.epoch_sums = torch.zeros(len(self.term_names), dtype=torch.float64)
        self.epoch_steps, self.epoch_time = 0, 0.0
        if checkpoint is not None:
            self.load_state(checkpoint)

        ddp_args = {"device_ids": [device.index]} if device.type == "cuda" else {}
        self.net = DistributedDataParallel(network, **ddp_args) if dist.enabled else network
        normalizer = (lambda n: all_reduce_sum(n).clamp(min=1) / dist.world_size) if dist.enabled else None
        self.criterion = MultiBoxLoss(self.preset.num_classes, normalizer=normalizer)
        self.static_step = None
        if graphed:
            self.static_step = StaticTrainStep(self.model, self.criterion, self.optimizer, self.amp_dtype,
                                               args.max_grad_norm, self.memory_format)  # fmt: skip
        evaluates = dist.is_main and args.eval_interval > 0
        self.test_dataset = self.build_test_dataset(self.preset, args.dataset_root) if evaluates else None
        self.target_test_dataset = None
        if evaluates and self.target_preset is not None:
            self.target_test_dataset = self.build_test_dataset(self.target_preset, args.target_root)
        self.records: list[dict] = []
        self.stop_requested = False
        self.run_dir: Path | None = None
        if dist.is_main:
            self.run_dir = resume_path.parent if resume_path is not None else increment_run_dir(args.project, args.name)
        self.tensorboard = self.open_tensorboard() if dist.is_main and args.tensorboard else None
        if self.run_dir is not None:
            saved_args = {k: v for k, v in vars(args).items() if k != "typed_flags"}
            (self.run_dir / "args.json").write_text(json.dumps(saved_args, indent=2, default=str))
            log = self.run_dir / "log.txt"
            if log.is_file():  # a resumed run keeps the epochs its checkpoint covers
                self.records = [r for r in map(json.loads, log.read_text().splitlines()) if r["epoch"] <= self.epoch]
                log.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def build_test_dataset(self, preset: DatasetPreset, root: str) -> DetectionDataset | None:
        try:
            transform = self.info.preprocess.transform(self.info.config.size)
            return build_dataset(preset, root, "test", transform)
        except (FileNotFoundError, ValueError) as error:
            logger.warning("no evaluation on %s during training: %s", root, error)
            return None

    def open_tensorboard(self):  # noqa: ANN201 - SummaryWriter is optional
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("--tensorboard: the tensorboard package is not installed (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.run_dir))

    def training_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the detector, for an exact ``--resume``."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "iteration": self.iteration,
            "best_map": self.best_map,
            "epoch_sums": self.epoch_sums.clone(),
            "epoch_steps": self.epoch_steps,
            "epoch_time": self.epoch_time,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items() if k != "typed_flags"},
            "rng": rng_states(),
            **({"adaptation": self.adaptation.state_dict()} if self.adaptation is not None else {}),
        }

    def load_state(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        match_optimizer_flags(self.optimizer)
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.epoch_step = int(checkpoint["epoch"]), int(checkpoint["epoch_step"])
        self.iteration, self.best_map = int(checkpoint["iteration"]), checkpoint["best_map"]
        if self.adaptation is not None:
            self.adaptation.load_state_dict(checkpoint["adaptation"], self.model)
        if "epoch_sums" in checkpoint:  # older checkpoints: the resumed epoch's log covers its new steps only
            self.epoch_sums = checkpoint["epoch_sums"].to(torch.float64)
            self.epoch_steps, self.epoch_time = int(checkpoint["epoch_steps"]), float(checkpoint["epoch_time"])
        restore_rng_states(checkpoint["rng"])
        logger.info("resuming at epoch %d, step %d (iteration %d)", self.epoch + 1, self.epoch_step, self.iteration)

    def save(self, name: str) -> Path | None:
        if self.run_dir is None:
            return None
        path = self.run_dir / name
        save_checkpoint(path, self.model, self.info, **self.training_state())
        return path

    def train_step(
        self, images: torch.Tensor, targets: list[torch.Tensor], target_views: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One optimisation step; returns the process-averaged loss terms (``self.term_names``).

        Args:
            target_views (Tensor[B, V, 3, S, S] | None): unlabeled target images, with domain adaptation.
        """
        if self.static_step is not None:  # --cuda_graph: the update is applied before the loss is checked
            terms = self.static_step(images, targets)
            self.check_finite(terms)
            self.scheduler.step()
            return terms
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = [t.to(self.device, non_blocking=True) for t in targets]
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        if self.adaptation is not None:
            losses = self.adaptation.losses(self.net, self.model, self.criterion, images, targets, target_views,
                                            self.iteration, autocast)  # fmt: skip
            parts = list(losses.values())
        else:
            with autocast:
                loc_preds, conf_preds = self.net(images)
            parts = list(self.criterion(loc_preds.float(), conf_preds.float(), self.model.priors, targets))
        terms = all_reduce_sum(torch.stack([part.detach() for part in parts])) / self.dist.world_size
        self.check_finite(terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(torch.stack(parts).sum()).backward()
        if self.args.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for group in self.optimizer.param_groups for p in group["params"]],
                                           self.args.max_grad_norm)  # fmt: skip
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.adaptation is not None:
            self.adaptation.after_step(self.model)
        return terms

    def check_finite(self, terms: torch.Tensor) -> None:
        """Stop on a non-finite loss term, naming the iteration (nothing is saved: the last checkpoint is intact)."""
        if not torch.isfinite(terms).all():
            values = ", ".join(f"{name}={value}" for name, value in zip(self.term_names, terms.tolist(), strict=True))
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iteration} (epoch {self.epoch + 1}, lr "
                f"{self.scheduler.get_last_lr()[0]:.3g}): {values}; "
                "the last checkpoint is intact. Lower --lr, set --max_grad_norm, or check the data"
            )

    def train_epoch(self, bar: tqdm | None) -> dict:
        self.model.train()
        self.sampler.set_epoch(self.epoch, start=self.epoch_step * self.loader.batch_size)
        start, steps_this_run = time.perf_counter() - self.epoch_time, 0
        target_batches = self.target_batches()
        for images, targets in self.loader:
            lr = self.scheduler.get_last_lr()[0]
            target_views = next(target_batches)
            terms = self.train_step(images, targets, target_views).cpu()
            self.epoch_sums += terms
            self.epoch_steps += 1
            steps_this_run += 1
            self.epoch_step += 1
            self.iteration += 1
            self.epoch_time = time.perf_counter() - start
            if bar is not None:
                speed = self.epoch_steps * self.args.batch_size / self.epoch_time
                bar.set_description(f"epoch {self.epoch + 1}/{self.epochs}")
                losses = {name: f"{value:.3f}" for name, value in zip(self.term_names, terms.tolist(), strict=True)}
                bar.set_postfix(**losses, lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                bar.update(1)
            if self.tensorboard is not None:
                self.tensorboard.add_scalars(
                    "loss", dict(zip(self.term_names, terms.tolist(), strict=True)), self.iteration
                )
                self.tensorboard.add_scalar("lr", lr, self.iteration)
            if self.stop_requested:  # Ctrl-C: stop between steps, where the state is whole
                raise KeyboardInterrupt
        means = (self.epoch_sums / max(self.epoch_steps, 1)).tolist()
        record = {"epoch": self.epoch + 1, "iteration": self.iteration, "loss": sum(means),
                  **dict(zip(self.term_names, means, strict=True)), "lr": self.scheduler.get_last_lr()[0],
                  "images_per_s": self.epoch_steps * self.args.batch_size / max(self.epoch_time, 1e-9),
                  "time_s": self.epoch_time}  # fmt: skip
        if getattr(self.args, "length_changes", None):
            record["note"] = self.args.length_changes[-1]
        return record

    def next_epoch(self) -> None:
        """Move to the next epoch, with new running sums (a checkpoint saved before this keeps the finished
        epoch's, so a resumed run completes its end-of-epoch work from them)."""
        self.epoch, self.epoch_step = self.epoch + 1, 0
        self.epoch_sums = torch.zeros(len(self.term_names), dtype=torch.float64)
        self.epoch_steps, self.epoch_time = 0, 0.0

    def target_batches(self) -> Iterator[torch.Tensor | None]:
        """The target batch of each remaining step of this epoch (None where a step takes none): the loader's
        batches for the steps that use the target, in the order fixed by their iteration numbers."""
        steps = range(self.iteration, self.iteration + self.steps_per_epoch - self.epoch_step)
        using = [step for step in steps if self.adaptation is not None and self.adaptation.uses_target(step)]
        if not using:
            yield from (None for _ in steps)
            return
        # The steps that use the target are the last ones of the epoch (the burn-in comes first).
        self.target_sampler.set_steps(using[0], len(using))
        batches = iter(self.target_loader)
        for step in steps:
            yield next(batches) if step >= using[0] else None

    def reestimate_batchnorm(self) -> None:
        """``--da adabn``: the BatchNorm statistics of the target's training images, on every process."""
        if self.adaptation is None or "adabn" not in self.adaptation.methods:
            return
        args = self.args
        seen = adapt_batchnorm(self.model, self.info, args.target_root, args.batch_size, args.num_workers, self.device)
        logger.info("adabn: BatchNorm statistics re-estimated on %d target images", seen)

    def evaluate(self) -> dict:
        """The source test split's ``map`` and ``ap`` (best.pth is chosen on them) and, with ``--target_root``, the
        target test split's ``target_map`` and ``target_ap`` (reported only: the target's labels choose nothing)."""
        metric = self.args.eval_metric or default_metric(self.preset.name)
        predictor = Predictor.for_model(self.model, self.info)
        scores = {}
        for prefix, dataset in (("", self.test_dataset), ("target_", self.target_test_dataset)):
            if dataset is not None:
                result = evaluate(predictor, dataset, self.args.eval_batch_size, self.args.num_workers, metric,
                                  progress=False)  # fmt: skip
                scores.update({f"{prefix}map": result["map"], f"{prefix}ap": result["ap"]})
        return scores

    def end_epoch(self, record: dict) -> None:
        """Evaluate, save and log, on the main process."""
        finished = self.epoch == self.epochs
        if self.args.eval_interval > 0 and (self.epoch % self.args.eval_interval == 0 or finished):
            record.update(self.evaluate())
        mean_ap = record.get("map")
        if mean_ap is not None and not np.isnan(mean_ap) and (self.best_map is None or mean_ap > self.best_map):
            self.best_map = mean_ap
            self.save("best.pth")
        if self.epoch % self.args.save_period == 0 or finished:
            self.save("last.pth")
        self.records.append(record)
        with (self.run_dir / "log.txt").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.write_results()
        terms = ", ".join(f"{name[5:]} {record[name]:.4f}" for name in self.term_names)
        message = f"epoch {record['epoch']}/{self.epochs}: loss {record['loss']:.4f} ({terms}), {record['images_per_s']:.1f} img/s"
        message += f", mAP {mean_ap:.4f}" if mean_ap is not None else ""
        logger.info(message + (f", target mAP {record['target_map']:.4f}" if "target_map" in record else ""))
        if self.tensorboard is not None and mean_ap is not None:
            self.tensorboard.add_scalar("mAP", mean_ap, self.iteration)

    def write_results(self) -> None:
        columns = ("epoch", "iteration", "loss", *self.term_names, "lr", "images_per_s", "map", "target_map")
        rows = [",".join(columns)] + [
            ",".join("" if r.get(c) is None else str(r.get(c)) for c in columns) for r in self.records
        ]
        (self.run_dir / "results.csv").write_text("\n".join(rows) + "\n")
        plot_training(self.run_dir / "results.png", self.records)

    def request_stop(self, signum: int, frame: Any) -> None:
        """SIGINT handler: the first Ctrl-C asks the loop to save and stop after the current step (raising from a
        signal handler can land inside library code that swallows it); a second one stops at once."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def fit(self) -> int:
        """Train to the last epoch (or ``--epochs_per_run``); returns the exit status."""
        if self.epoch >= self.epochs:
            logger.warning("the run has already trained its %d epochs; resume with --end_epoch N (N > %d) to train it "
                           "longer", self.epochs, self.epochs)  # fmt: skip
            return 0
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self.request_stop) if in_main_thread else None
        try:
            return self._fit()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _fit(self) -> int:
        args = self.args
        total = self.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True) if self.dist.is_main else None
        epochs_this_run = 0
        try:
            while self.epoch < self.epochs:
                # An epoch whose steps all ran before a Ctrl-C has no step left here, only its end-of-epoch work.
                record = self.train_epoch(bar)
                self.reestimate_batchnorm()
                self.next_epoch()
                epochs_this_run += 1
                if self.dist.is_main:
                    self.end_epoch(record)
                if args.epochs_per_run and epochs_this_run >= args.epochs_per_run and self.epoch < self.epochs:
                    path = self.save("last.pth")
                    if path is not None:
                        logger.info("stopped after %d epoch(s) (--epochs_per_run); resume with: python train.py "
                                    "--resume %s", epochs_this_run, path)  # fmt: skip
                    return 0
        except KeyboardInterrupt:
            return self.interrupted()
        except Exception:
            if self.stop_requested:  # the Ctrl-C also stopped the loader's worker processes
                return self.interrupted()
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        if self.run_dir is not None:
            best = f", best mAP {self.best_map:.4f} ({self.run_dir / 'best.pth'})" if self.best_map is not None else ""
            logger.info("finished %d epochs: %s%s", self.epochs, self.run_dir / "last.pth", best)
        return 0

    def interrupted(self) -> int:
        """Save ``last.pth`` after a Ctrl-C and say how to resume; exit status 130."""
        path = self.save("last.pth")
        if path is not None:
            message = f"interrupted at epoch {self.epoch + 1}, step {self.epoch_step}; saved {path}; resume with: python train.py --resume {path}"
            print(f"\n{message}", file=sys.stderr)
        return 130
