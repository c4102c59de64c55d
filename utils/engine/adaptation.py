"""Unsupervised domain adaptation for train.py: labeled source images, unlabeled target images, three methods.

* ``grl``: adversarial feature alignment through a gradient reversal layer (:mod:`layers.domain`): DA-Faster's
  image-level classifiers on the first ``grl_levels`` source maps (Chen et al., CVPR 2018), or with ``swda`` SWDA's
  strong local alignment on the first map (conv4_3) and weak global alignment on the second (Saito et al., CVPR
  2019).
* ``mean_teacher``: an EMA teacher labels the weak view of each target image; the student learns the pseudo-labels
  above ``pseudo_threshold`` on the strong view of the same image, classification only (Unbiased Teacher, Liu et
  al., ICLR 2021; Adaptive Teacher, Li et al., CVPR 2022). The teacher starts as a copy of the student after
  ``burn_in`` source-only steps. Combinable with ``grl``.
* ``adabn``: BatchNorm statistics re-estimated on the target images after every epoch (AdaBN, Li et al., 2016),
  for networks with BatchNorm (:mod:`utils.adabn`); eval.py's ``--adabn`` does the same to any checkpoint.

The detector's state_dict keeps its layout: a checkpoint keeps the discriminators and the teacher under
``"adaptation"`` (:meth:`DomainAdaptation.state_dict`), so eval.py, inference.py and export load it as any other.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from layers.detection import Detect
from layers.domain import GlobalDomainClassifier, ImageDomainClassifier, LocalDomainClassifier, grad_reverse
from layers.multibox_loss import MultiBoxLoss
from ssd import SSD
from utils.adabn import has_batchnorm
from utils.engine.config import TrainConfig
from utils.engine.step import batch_losses

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """A ``--da`` method as the training loop sees it.

    Args:
        name: its ``--da`` value.
        papers: where it comes from (docs/domain_adaptation.md, "Domain adaptation", says which defaults follow them).
        flags: its hyperparameters: train.py flags and :class:`AdaptationConfig` fields of the same names.
        views: the target views (:class:`~utils.augmentations.TargetViews` kinds) its steps read; none when it
            reads target images between epochs only. The student's target input is the last.
        needs_batchnorm: the network must have BatchNorm layers.
    """

    name: str
    papers: str
    flags: tuple[str, ...]
    views: tuple[str, ...]
    needs_batchnorm: bool = False


METHODS: dict[str, Method] = {
    "grl": Method("grl", "DA-Faster (Chen et al., CVPR 2018); SWDA (Saito et al., CVPR 2019)",
                  ("grl_weight", "grl_levels", "swda"), views=("augmented",)),
    "mean_teacher": Method("mean_teacher", "Unbiased Teacher (Liu et al., ICLR 2021); Adaptive Teacher (Li et al., "
                           "CVPR 2022)", ("ema_decay", "pseudo_threshold", "unsup_weight", "burn_in"),
                           views=("weak", "strong")),
    "adabn": Method("adabn", "AdaBN (Li et al., 2016)", (), views=(), needs_batchnorm=True),
}  # fmt: skip
DA_METHODS = tuple(METHODS)


@dataclass(frozen=True)
class AdaptationConfig:
    """The methods of a run and their hyperparameters (train.py's flags of the same names).

    Args:
        methods: names from :data:`DA_METHODS`.
        grl_weight: the domain loss's weight (DA-Faster's lambda: 0.1); the detector receives its reversed
            gradient.
        grl_levels: image-level classifiers on this many source maps, from the first (conv4_3, fc7, ...).
        swda: SWDA's local (least squares, map 0) and global (focal, gamma 5, map 1) classifiers instead.
        ema_decay: the teacher's EMA keep rate per step (Adaptive Teacher: 0.9996, for 10^5-step schedules).
        pseudo_threshold: a teacher detection is a pseudo-label when its score exceeds this (Adaptive Teacher's
            Cityscapes -> Foggy Cityscapes config: 0.7).
        unsup_weight: weight of the pseudo-label classification loss (Adaptive Teacher: 1.0).
        burn_in: source-only steps before the teacher is copied from the student.
    """

    methods: tuple[str, ...] = ()
    grl_weight: float = 0.1
    grl_levels: int = 2
    swda: bool = False
    ema_decay: float = 0.9996
    pseudo_threshold: float = 0.7
    unsup_weight: float = 1.0
    burn_in: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(DA_METHODS))
        if unknown:
            raise ValueError(f"unknown domain adaptation method(s) {unknown}; choose from {list(DA_METHODS)}")

    @property
    def views(self) -> tuple[str, ...]:
        """The target views the steps read: those of the method that reads the most (with ``mean_teacher``, the
        weak and strong views; the domain classifiers of ``grl`` then see the strong one, the student's input)."""
        return max((METHODS[name].views for name in self.methods), key=len, default=())

    @classmethod
    def from_settings(cls, settings: TrainConfig) -> AdaptationConfig:
        """The config of a run's settings (``--da`` and the flags named as the fields)."""
        values = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name != "methods"}
        return cls(methods=tuple(settings.da or ()), **values)


class AdaptiveSSD(nn.Module):
    """The detector and its domain classifiers as one module, so one DistributedDataParallel forward covers both.

    ``forward(images, domains)`` returns the detector's ``(loc_preds [B, P, 4], conf_preds [B, P, C])`` and the
    domain classification loss of the images' source maps, reached through the gradient reversal layer.
    """

    def __init__(self, detector: SSD, config: AdaptationConfig) -> None:
        super().__init__()
        self.detector = detector
        self.weight = config.grl_weight
        channels = detector.source_channels()
        if config.swda:
            self.levels = [0, 1]
            self.classifiers = nn.ModuleList([LocalDomainClassifier(channels[0]), GlobalDomainClassifier(channels[1])])
        else:
            if not 1 <= config.grl_levels <= len(channels):
                raise ValueError(f"--grl_levels {config.grl_levels} must lie in 1..{len(channels)}, the source maps")
            self.levels = list(range(config.grl_levels))
            self.classifiers = nn.ModuleList([ImageDomainClassifier(channels[i]) for i in self.levels])

    def forward(self, images: Tensor, domains: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images (Tensor[B, 3, S, S]) and their domains (Tensor[B]: 0 source, 1 target) -> loc_preds, conf_preds
        and the weighted domain loss (a scalar)."""
        sources = self.detector.sources(images)
        loc_preds, conf_preds = self.detector.heads(sources)
        losses = [
            classifier.loss(classifier(grad_reverse(sources[level])), domains)
            for level, classifier in zip(self.levels, self.classifiers, strict=True)
        ]
        # DA-Faster's objective L_det + lambda * L_img: the classifiers descend lambda * L_img, and through the
        # reversal the detector ascends it.
        return loc_preds, conf_preds, self.weight * torch.stack(losses).sum()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for every floating-point parameter and buffer (BatchNorm's
    running statistics too); integer buffers (BatchNorm's batch count) are copied."""
    for mine, theirs in zip(teacher.state_dict().values(), student.state_dict().values(), strict=True):
        if mine.is_floating_point():
            mine.lerp_(theirs.to(mine.dtype), 1.0 - decay)
        else:
            mine.copy_(theirs)


def pseudo_labels(detect: Detect, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor) -> list[Tensor]:
    """Training targets from a teacher's output: the detections that ``detect`` keeps (its ``conf_thresh`` is the
    pseudo-label threshold), clipped to the image.

    Args:
        loc_preds (Tensor[B, P, 4]), conf_preds (Tensor[B, P, C]): the teacher's output on the weak views.
        priors (Tensor[P, 4]): cxcywh.

    Returns:
        B tensors [K, 5]: targets in the datasets' format (``data.base``).
    """
    targets = []
    for found in detect(loc_preds, conf_preds, priors):
        boxes = found["boxes"].clamp(0, 1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = (found["labels"][keep] - 1).to(boxes.dtype)
        targets.append(torch.cat([boxes[keep], labels[:, None]], dim=1))  # [K, 5]
    return targets


class DomainAdaptation:
    """One run's domain adaptation state and the losses of its steps.

    Args:
        config: the methods and hyperparameters.
        detector: the student network (trained, saved and evaluated as the run's detector).
    """

    def __init__(self, config: AdaptationConfig, detector: SSD) -> None:
        for name in config.methods:
            if METHODS[name].needs_batchnorm and not has_batchnorm(detector):
                raise ValueError(
                    f"--da {name} re-estimates BatchNorm statistics, and this {detector.config.backbone} SSD has no "
                    "BatchNorm; add --batch_norm (vgg16) or pick a backbone with BatchNorm"
                )
        self.config, self.detector = config, detector
        self.adversarial = AdaptiveSSD(detector, config) if "grl" in config.methods else None
        self.teacher: SSD | None = None
        self.detect = Detect(detector.num_classes, conf_thresh=config.pseudo_threshold, top_k=200, keep_top_k=100)

    @property
    def methods(self) -> tuple[str, ...]:
        return self.config.methods

    def network(self) -> nn.Module:
        """The module a step runs (and DDP wraps): the detector, with its domain classifiers for ``grl``."""
        return self.adversarial if self.adversarial is not None else self.detector

    def parameters(self) -> Iterable[nn.Parameter]:
        """The trained parameters besides the detector's (the domain classifiers)."""
        return self.adversarial.classifiers.parameters() if self.adversarial is not None else iter(())

    def uses_target(self, iteration: int) -> bool:
        """Whether step ``iteration`` trains on target images (adabn only reads them between epochs)."""
        return self.adversarial is not None or ("mean_teacher" in self.methods and iteration >= self.config.burn_in)

    def losses(
        self,
        net: nn.Module,
        criterion: MultiBoxLoss,
        images: Tensor,
        targets: list[Tensor],
        target_views: Tensor | None,
        iteration: int,
        autocast: torch.autocast,
    ) -> dict[str, Tensor]:
        """The loss terms of one step: :func:`utils.engine.step.batch_losses` of the source batch followed by the
        target batch, plus this method's terms.

        Args:
            net: :meth:`network`, possibly DDP-wrapped.
            images (Tensor[B, 3, S, S]), targets: the labeled source batch.
            target_views (Tensor[B_t, V, 3, S, S] | None): the target batch (None when :meth:`uses_target` is False).

        Returns:
            ``loss_l``, ``loss_c`` (source), and ``loss_domain`` (grl) and ``loss_unsup`` (mean_teacher) when used.
        """
        detector = self.detector
        memory_format = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else None
        pseudo: list[Tensor] | None = None
        unsure: Tensor | None = None
        student_images = images
        if target_views is not None:
            target_views = target_views.to(images.device, images.dtype, non_blocking=True)
            if "mean_teacher" in self.methods and iteration >= self.config.burn_in:
                if self.teacher is None:  # the end of the burn-in: the teacher starts as the student
                    self.teacher = copy.deepcopy(detector).eval().requires_grad_(False)
                    logger.info("mean teacher: teacher copied from the student at iteration %d", iteration)
                weak = target_views[:, 0].contiguous(memory_format=memory_format or torch.contiguous_format)
                with torch.no_grad(), autocast:
                    teacher_loc, teacher_conf = self.teacher(weak)  # weak: [B_t, 3, S, S]
                pseudo = pseudo_labels(self.detect, teacher_loc.float(), teacher_conf.float(), detector.priors)
                # SSD mines its negatives among the most object-like background priors, which on a target image are
                # the objects the teacher missed: only priors the teacher calls background as surely as it must call
                # a pseudo-label an object may be mined.
                unsure = teacher_conf.float().softmax(dim=-1)[..., 0] <= self.config.pseudo_threshold  # [B_t, P]
            student_images = torch.cat([images, target_views[:, -1]])  # [B + B_t, 3, S, S]; strong views for MT
            if memory_format is not None:
                student_images = student_images.contiguous(memory_format=memory_format)
        forward_kwargs = {}
        if self.adversarial is not None:
            domains = torch.zeros(student_images.shape[0], device=images.device)  # [B + B_t]: 0 source, 1 target
            domains[images.shape[0] :] = 1
            forward_kwargs["domains"] = domains
        terms, target_loc, target_conf = batch_losses(net, criterion, detector.priors, student_images, targets,
                                                      autocast, **forward_kwargs)  # fmt: skip
        if pseudo is not None:
            # Box regression from pseudo-labels is left out: their boxes are the noisiest part (Unbiased Teacher §3.3).
            _, unsup_c = criterion(target_loc, target_conf, detector.priors, pseudo, unsure)
            terms["loss_unsup"] = self.config.unsup_weight * unsup_c
        elif "mean_teacher" in self.methods:
            terms["loss_unsup"] = torch.zeros((), device=images.device)
        if "grl" in self.methods:
            terms.setdefault("loss_domain", torch.zeros((), device=images.device))
        return {name: terms[name] for name in self.term_names()}

    def term_names(self) -> tuple[str, ...]:
        """The loss terms :meth:`losses` returns, in order."""
        extra = (("loss_domain",) if "grl" in self.methods else ()) + (
            ("loss_unsup",) if "mean_teacher" in self.methods else ()
        )
        return ("loss_l", "loss_c", *extra)

    def after_step(self) -> None:
        """Move the teacher towards the student (once the teacher exists)."""
        if self.teacher is not None:
            ema_update(self.teacher, self.detector, self.config.ema_decay)

    def state_dict(self) -> dict:
        """What a checkpoint keeps under ``"adaptation"``: the config, the domain classifiers and the teacher."""
        return {
            "config": {**asdict(self.config), "methods": list(self.methods)},
            "classifiers": self.adversarial.classifiers.state_dict() if self.adversarial is not None else None,
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s classifiers and teacher (the teacher's layout is the detector's)."""
        if self.adversarial is not None and state.get("classifiers") is not None:
            self.adversarial.classifiers.load_state_dict(state["classifiers"])
        if state.get("teacher") is not None:
            self.teacher = copy.deepcopy(self.detector).eval().requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])
