"""The settings of a training run, typed: train.py turns its flags into a :class:`TrainConfig` once, and the engine
takes that, never the argparse Namespace."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, named as train.py's flags (``train.py --help`` says what each does).

    The fields without defaults are the flags; train.py's parser owns their defaults. A checkpoint keeps the
    config as a dict (``"args"``, :meth:`to_dict`), as does the run's args.json, and ``--resume`` rebuilds it from
    there (:meth:`from_dict`).
    """

    # dataset
    dataset: str
    dataset_root: str | None
    classes: str | None
    image_set: str | None
    keep_difficult: bool
    skip_bad: bool
    # augmentation
    max_expand: float
    crop_samplers: str
    # network
    backbone: str
    size: int | None  # None: the backbone's default, until resolved
    priors: str | None
    width: float
    batch_norm: bool
    basenet: str | None
    pixel_norm: str | None
    finetune: str | None
    # domain adaptation
    target_root: str | None
    target_dataset: str | None
    da: list[str] | None
    da_batch: str
    grl_weight: float | None  # None: the method's default
    grl_levels: int
    swda: bool
    grl_lambda: float
    focal_gamma: float
    dcbr_weight: float
    gcr_weight: float
    gf_weight: float
    kl_weight: float
    pa_layers: list[int]
    i3net_start: int | None  # None: 2/7 of the run
    ema_decay: float
    pseudo_threshold: float
    unsup_weight: float
    burn_in: int | None  # None: a fifth of the run
    teacher_bn: str
    # optimisation
    end_epoch: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    milestones: list[int]
    gamma: float
    warmup_epochs: float | None
    max_grad_norm: float
    no_channels_last: bool
    fused_optimizer: bool
    cuda_graph: bool
    # device and processes
    device: str
    amp: bool
    num_workers: int
    seed: int
    sync_bn: bool
    # the run
    resume: str | None
    save_period: int
    eval_interval: int
    eval_batch_size: int
    eval_metric: str | None
    epochs_per_run: int
    tensorboard: bool
    project: str
    name: str
    verbose: bool
    # What --resume ... --end_epoch N changed in the run, one note per change (not a flag).
    length_changes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The config as a checkpoint and args.json keep it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The config of ``data``: parsed flags (``vars(args)``) or a saved :meth:`to_dict`. Keys that are not
        settings (the parser's ``typed_flags``, flags that a checkpoint's version had and this one has not) are
        left out; a missing setting is a ValueError naming it."""
        names = {f.name for f in fields(cls)}
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.name != "length_changes")
        if missing:
            raise ValueError(f"the run's settings lack {missing}")
        unknown = sorted(set(data) - names - {"typed_flags"})
        if unknown:
            logger.info("settings of an older version that this one does not have, left out: %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in names})
