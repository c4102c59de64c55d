"""What a training run is built from: the model (new, fine-tuned or from a base network), the optimizer, the lr
schedule, and the loaders of the labeled source and the unlabeled target images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from data.base import DetectionDataset, detection_collate
from data.build import build_dataset
from data.config import DatasetPreset, get_preset
from data.sampler import EpochSampler
from data.unlabeled import TARGET_SPLIT, ContinuingSampler, UnlabeledImages
from ssd import BACKBONES, SSD, build_ssd
from utils.adabn import has_batchnorm
from utils.augmentations import SSDAugmentation, TargetViews
from utils.checkpoint import (
    DetectorInfo,
    detector_info,
    load_base_weights,
    load_model_weights,
    match_classes,
    read_checkpoint,
)
from utils.engine.config import TrainConfig
from utils.engine.distributed import DistInfo, convert_sync_batchnorm
from utils.engine.schedule import Schedule, paper_voc_epochs
from utils.runtime import mixed_precision_dtype
from utils.transforms import PIXEL_NORMS


def build_model(settings: TrainConfig, preset: DatasetPreset) -> tuple[SSD, DetectorInfo]:
    """A new SSD for ``preset`` and its :class:`DetectorInfo`.

    With ``--finetune``, all but the checkpoint's conf heads, and the checkpoint's network, pixel normalisation and
    Detect settings when it describes them (a converted torchvision model keeps torchvision's); its test images are
    then resized as training resizes them (OpenCV), since the fine-tuned network is no longer torchvision's. Else
    the network of the flags (:func:`utils.engine.resume.resolve_model_flags`), initialised from ``--basenet`` (``none``: from
    scratch), with the backbone's test settings.
    """
    if settings.finetune:
        checkpoint = read_checkpoint(settings.finetune)
        if "model_config" in checkpoint:
            source = detector_info(checkpoint)
            model = SSD(replace(source.config, num_classes=preset.num_classes))
            load_model_weights(model, settings.finetune, skip_conf=True)
            preprocess = replace(source.preprocess, resize="opencv")
            return model, DetectorInfo(model.config, preset.class_names, preprocess, source.postprocess)
    from_scratch = not settings.basenet or settings.basenet.lower() == "none"
    reduced_tail = BACKBONES[settings.backbone].reduced_tail(from_scratch and not settings.finetune)
    model = build_ssd(settings.size, preset.num_classes, settings.priors or BACKBONES[settings.backbone].prior_family or
                      preset.prior_family, settings.width, settings.batch_norm, settings.backbone, reduced_tail)  # fmt: skip
    if settings.finetune:
        load_model_weights(model, settings.finetune, skip_conf=True)
    elif not from_scratch:
        if not Path(settings.basenet).is_file():
            raise FileNotFoundError(
                f"base network {settings.basenet} does not exist: {BACKBONES[settings.backbone].base_weights_source}, or train from "
                "scratch with --basenet none"
            )
        load_base_weights(model, settings.basenet)
    info = DetectorInfo(model.config, preset.class_names, PIXEL_NORMS[settings.pixel_norm],
                        BACKBONES[settings.backbone].test_settings)  # fmt: skip
    return model, info


def prepare_network(network: nn.Module, device: torch.device, dist: DistInfo, sync_bn: bool, adapting: bool) -> None:
    """Move the module a step runs to ``device`` and, under torchrun, make its BatchNorm synchronised (``--sync_bn``)
    or refuse domain adaptation with unsynchronised BatchNorm."""
    network.to(device)
    if dist.enabled and sync_bn:
        convert_sync_batchnorm(network)  # in place: the detector's and the domain classifiers' BatchNorm
    elif dist.enabled and adapting and has_batchnorm(network):
        raise ValueError(
            "with BatchNorm, domain adaptation under torchrun needs --sync_bn: each process's statistics (and a "
            "mean teacher's, and AdaBN's) would otherwise differ from one process's"
        )


def training_precision(amp: bool, graphed: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (None: float32). A recorded step (``--cuda_graph``) cannot scale float16
    losses (the overflow check waits on the host), so it trains in bfloat16."""
    if not amp:
        return None
    return torch.bfloat16 if graphed else mixed_precision_dtype(device)


def build_optimizer(settings: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD or AdamW over ``parameters`` (the detector's, then any domain classifiers'); ``--fused_optimizer``
    updates every parameter in one fused kernel (the same update up to float rounding; fewer launches on a GPU).
    ``--cuda_graph`` on a GPU implies it: a recorded step reads its learning rate from a GPU tensor, which fused SGD
    takes and AdamW only with ``capturable`` as well. A resumed state keeps these flags (:func:`match_optimizer_flags`).
    """
    graphed = settings.cuda_graph and bool(parameters) and parameters[0].is_cuda
    fused = (settings.fused_optimizer or graphed) or None
    if settings.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay,
                               fused=fused)  # fmt: skip
    return torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused, capturable=graphed)


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


def warmup_epochs(settings: TrainConfig) -> float:
    """``--warmup_epochs`` when given; else 1 epoch, except under the paper's schedule, which has none."""
    if settings.warmup_epochs is not None:
        return settings.warmup_epochs
    return 0.0 if settings.schedule == "paper_voc" else 1.0


def resolve_schedule(settings: TrainConfig, dataset_size: int, steps_per_epoch: int) -> tuple[int, Schedule]:
    """The number of epochs and the per-iteration lr schedule."""
    epochs, milestones, kind = settings.end_epoch, settings.milestones, settings.schedule
    if kind == "paper_voc":
        epochs, milestones = paper_voc_epochs(dataset_size, settings.batch_size)
        kind = "multistep"
    schedule = Schedule(
        total_iters=epochs * steps_per_epoch,
        warmup_iters=round(warmup_epochs(settings) * steps_per_epoch),
        kind=kind,
        milestones=tuple(m * steps_per_epoch for m in milestones),
        gamma=settings.gamma,
    )
    return epochs, schedule


def train_augmentation(settings: TrainConfig, info: DetectorInfo) -> SSDAugmentation:
    """The training augmentation of ``settings`` (``--max_expand``, ``--crop_samplers``) for ``info``'s detector.

    Training images are resized by OpenCV whatever ``info.preprocess.resize`` says (test time may resize as
    torchvision does, for checkpoints converted from it); both are bilinear with half-pixel centres.
    """
    preprocess = info.preprocess
    return SSDAugmentation(info.config.size, preprocess.mean, preprocess.std, max_expand=settings.max_expand,
                           crop_samplers=settings.crop_samplers)  # fmt: skip


def build_train_loader(
    settings: TrainConfig, preset: DatasetPreset, info: DetectorInfo, dist: DistInfo, device: torch.device
) -> tuple[DetectionDataset, EpochSampler, DataLoader]:
    """The augmented training set (:func:`train_augmentation`), its resumable sampler and the loader of this
    process's share of a batch."""
    augmentation = train_augmentation(settings, info)
    dataset = build_dataset(preset, settings.dataset_root, "train", augmentation, settings.image_set, settings.keep_difficult,
                            settings.skip_bad, settings.seed)  # fmt: skip
    if len(dataset) < settings.batch_size:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than --batch_size {settings.batch_size}")
    sampler = EpochSampler(len(dataset), settings.seed, dist.world_size, dist.rank, shuffle=True, drop_last=True)
    # Workers persist across epochs (no start-up per epoch); the sampler's keys carry the epoch to them.
    loader = DataLoader(dataset, settings.batch_size // dist.world_size, sampler=sampler, num_workers=settings.num_workers,
                        collate_fn=detection_collate, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=settings.num_workers > 0)  # fmt: skip
    return dataset, sampler, loader


def target_preset(settings: TrainConfig, source: DatasetPreset) -> DatasetPreset:
    """The preset of ``--target_dataset`` (default: the source's). It must share classes with the source, by name:
    the target's test split is scored on those (VOC -> Watercolor2k: 6 of VOC's 20)."""
    preset = get_preset(settings.target_dataset or source.name, settings.classes)
    try:
        match_classes(source.class_names, preset.class_names)
    except ValueError:
        raise ValueError(f"--target_dataset {preset.name} ({', '.join(preset.class_names)}) shares no class with "
                         f"--dataset {source.name} ({', '.join(source.class_names)}); adaptation needs classes in "
                         "common") from None  # fmt: skip
    return preset


def build_target_loader(
    settings: TrainConfig, info: DetectorInfo, views: tuple[str, ...], dist: DistInfo, device: torch.device
) -> tuple[ContinuingSampler, DataLoader]:
    """The unlabeled target images of ``--target_root`` (its trainval split; annotations never opened) as ``views``
    (:class:`~utils.augmentations.TargetViews`; "augmented" is the source's :func:`train_augmentation`), in batches of
    ``--batch_size`` split over the processes as the source's, in an order fixed by the training step."""
    preprocess = info.preprocess
    augmentation = train_augmentation(settings, info) if "augmented" in views else None
    transform = TargetViews(info.config.size, preprocess.mean, preprocess.std, views, augmentation=augmentation)
    dataset = UnlabeledImages([(settings.target_root, TARGET_SPLIT)], transform, settings.seed + 1)
    sampler = ContinuingSampler(len(dataset), settings.batch_size, settings.seed + 1, dist.world_size, dist.rank)
    loader = DataLoader(dataset, settings.batch_size // dist.world_size, sampler=sampler, num_workers=settings.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True)  # fmt: skip
    return sampler, loader
