"""Unsupervised domain adaptation for train.py: labeled source images, unlabeled target images, five methods.

* ``grl``: adversarial feature alignment through a gradient reversal layer (:mod:`layers.domain`): DA-Faster's
  image-level classifiers on the first ``grl_levels`` source maps (Chen et al., CVPR 2018), or with ``swda`` SWDA's
  strong local alignment and weak global alignment (Saito et al., CVPR 2019) where I3Net puts them on SSD:
  relu(conv3_2) and relu(conv4_3).
* ``i3net``: I3Net (Chen et al., CVPR 2021; :mod:`layers.i3net`): SWDA's classifiers with I3Net's weighted global
  loss, plus DCBR, COPM and RJCA; DCBR's weights, COPM and the KL term start at ``i3net_start`` (an epoch).
* ``mean_teacher``: an EMA teacher labels the weak view of each target image; the student learns the pseudo-labels
  above ``pseudo_threshold`` on the strong view of the same image, classification only (Unbiased Teacher, Liu et
  al., ICLR 2021; Adaptive Teacher, Li et al., CVPR 2022). The teacher starts as a copy of the student after
  ``burn_in`` source-only steps. Combinable with ``grl`` and ``i3net``.
* ``adabn``: BatchNorm statistics re-estimated on the target images after every epoch (AdaBN, Li et al., 2016),
  for networks with BatchNorm (:mod:`utils.adabn`); eval.py's ``--adabn`` does the same to any checkpoint.
* ``target_bn``: a control, not a method: source-only training whose steps also run the target images through the
  network in train mode, without a loss, so that BatchNorm's running statistics mix in the target's.

Every method that trains on the target runs the source batch and the target batch through separate forward
passes (``da_batch="separate"``), as SWDA (DA_Detection trainval_net_global_local.py:198-201 and :220), Adaptive
Teacher (adapteacher/modeling/meta_arch/rcnn.py:182 and :191) and I3Net (train_I3N.py:198 and :202) do: each
BatchNorm layer, the discriminators' too, normalises one domain at a time. ``da_batch="joint"`` runs one
concatenated batch instead, for the comparison in docs/domain_adaptation.md.

The detector's state_dict keeps its layout: a checkpoint keeps the discriminators, I3Net's state and the teacher
under ``"adaptation"`` (:meth:`DomainAdaptation.state_dict`), so eval.py, inference.py and export load it as any
other; the teacher is also saved as a detector checkpoint of its own (``teacher.pth``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from layers.detection import Detect
from layers.domain import (
    GlobalDomainClassifier,
    ImageDomainClassifier,
    LocalDomainClassifier,
    focal_loss,
    full_precision,
    grad_reverse,
    least_squares_loss,
    weighted_domain_loss,
)
from layers.i3net import (
    ClassPresenceHead,
    Prototypes,
    RandomLayer,
    batch_mean,
    class_means,
    dcbr_weights,
    joint_feature,
    layer_class_probs,
    layer_kl,
    presence_targets,
    prototype_loss,
)
from layers.multibox_loss import MultiBoxLoss
from ssd import SSD
from utils.adabn import has_batchnorm
from utils.engine.config import TrainConfig
from utils.engine.distributed import all_reduce_sum, differentiable_sum
from utils.engine.step import batch_losses

logger = logging.getLogger(__name__)

Outputs = dict[str, Tensor | list[Tensor]]


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
        needs_taps: the backbone must hand out VGG-16's relu(conv3_2) and relu(conv4_3) (``Backbone.tap_names``).
    """

    name: str
    papers: str
    flags: tuple[str, ...]
    views: tuple[str, ...]
    needs_batchnorm: bool = False
    needs_taps: bool = False


# The flags of every method that trains on target batches.
STEP_FLAGS = ("da_batch",)
METHODS: dict[str, Method] = {
    "grl": Method("grl", "DA-Faster (Chen et al., CVPR 2018); SWDA (Saito et al., CVPR 2019)",
                  ("grl_weight", "grl_levels", "swda", "grl_lambda", "focal_gamma", *STEP_FLAGS), views=("augmented",)),
    "i3net": Method("i3net", "I3Net (Chen et al., CVPR 2021)",
                    ("grl_lambda", "dcbr_weight", "gcr_weight", "gf_weight", "kl_weight", "pa_layers", "i3net_start",
                     *STEP_FLAGS), views=("augmented",), needs_taps=True),
    "mean_teacher": Method("mean_teacher", "Unbiased Teacher (Liu et al., ICLR 2021); Adaptive Teacher (Li et al., "
                           "CVPR 2022)", ("ema_decay", "pseudo_threshold", "unsup_weight", "burn_in", "teacher_bn",
                                          *STEP_FLAGS), views=("weak", "strong")),
    "adabn": Method("adabn", "AdaBN (Li et al., 2016)", (), views=(), needs_batchnorm=True),
    "target_bn": Method("target_bn", "a control: target images through BatchNorm, no loss", STEP_FLAGS,
                        views=("augmented",), needs_batchnorm=True),
}  # fmt: skip
DA_METHODS = tuple(METHODS)
# Methods that cannot share a run: both align the same maps, or the control would not be one.
EXCLUSIVE = (("grl", "i3net"), ("target_bn", "grl"), ("target_bn", "i3net"), ("target_bn", "mean_teacher"))

# SWDA's domain losses on Cityscapes are added with weight 1 (DA_Detection trainval_net_global_local.py:229, ``loss
# += (dloss_s + dloss_t + dloss_s_p + dloss_t_p)``; its ``--eta``, default 0.1 at lib/model/utils/parser_func.py:82,
# weighs only sim10k's, :226-227). DA-Faster's image-level loss has weight 0.1 (its lambda, Chen et al. §4.1).
SWDA_WEIGHT, DA_FASTER_WEIGHT = 1.0, 0.1
# I3Net's source global loss: ``0.5 * weight_ce_loss(domain_g, 0, torch.ones(domain_g.size(0))) * 0.1``
# (train_I3N.py:224); its target one is weighted by ``--dcbr_weight`` (:234).
I3NET_SOURCE_GLOBAL_WEIGHT = 0.1


@dataclass(frozen=True)
class AdaptationConfig:
    """The methods of a run and their hyperparameters (train.py's flags of the same names).

    Args:
        methods: names from :data:`DA_METHODS`.
        da_batch: ``"separate"`` forward passes for the source and the target batch, or one ``"joint"``
            concatenated pass.
        grl_weight: the weight of grl's domain loss; None: DA-Faster's 0.1, or SWDA's 1.0 with ``swda``.
        grl_levels: image-level classifiers on this many source maps, from the first (conv4_3, fc7, ...).
        swda: SWDA's local (least squares, relu(conv3_2)) and global (focal, relu(conv4_3)) classifiers instead.
        grl_lambda: the gradient reversal's factor (1.0 in DA_Detection lib/model/utils/net_utils.py:267 and
            I3Net ssd_I3N.py:20).
        focal_gamma: SWDA's focal loss gamma (DA_Detection lib/model/utils/parser_func.py:25-27, default 5).
        dcbr_weight, gcr_weight, kl_weight: I3Net's loss weights (train_I3N.py:34-36: 0.05, 1, 0.1).
        gf_weight: I3Net's weight of RJCA's joint-feature loss (train_I3N.py:237: ``38 *``).
        pa_layers: the source maps of COPM's prototypes and the KL term (train_I3N.py:37: ``[1, 3]``, fc7 and
            conv9_2).
        i3net_start: the epoch after which DCBR's weights, COPM and the KL term apply (train_I3N.py:213 and
            :244, ``epoch > 20`` of ``--end_epoch 70``, :46); None: 2/7 of the run's epochs.
        ema_decay: the teacher's EMA keep rate per step (Adaptive Teacher configs/faster_rcnn_VGG_cross_city.yaml:46:
            0.9996, for its 100,000-step schedule).
        pseudo_threshold: a teacher detection is a pseudo-label when its score exceeds this
            (configs/faster_rcnn_VGG_cross_city.yaml:43, ``BBOX_THRESHOLD: 0.8``).
        unsup_weight: weight of the pseudo-label classification loss (the same file, :47: 1.0).
        burn_in: source-only steps before the teacher is copied from the student; None: a fifth of the run
            (the same file: ``BURN_UP_STEP: 20000`` at :45 of ``MAX_ITER: 100000`` at :29).
        teacher_bn: the teacher's BatchNorm mode: ``"train"`` normalises each weak target batch with its own
            statistics, as Adaptive Teacher's teacher, never put in eval mode (adapteacher/engine/trainer.py:294
            builds it, :547-553 runs it under no_grad only); ``"eval"`` uses its running statistics.
    """

    methods: tuple[str, ...] = ()
    da_batch: str = "separate"
    grl_weight: float | None = None
    grl_levels: int = 2
    swda: bool = False
    grl_lambda: float = 1.0
    focal_gamma: float = 5.0
    dcbr_weight: float = 0.05
    gcr_weight: float = 1.0
    gf_weight: float = 38.0
    kl_weight: float = 0.1
    pa_layers: tuple[int, ...] = (1, 3)
    i3net_start: int | None = None
    ema_decay: float = 0.9996
    pseudo_threshold: float = 0.8
    unsup_weight: float = 1.0
    burn_in: int | None = None
    teacher_bn: str = "train"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(DA_METHODS))
        if unknown:
            raise ValueError(f"unknown domain adaptation method(s) {unknown}; choose from {list(DA_METHODS)}")
        for pair in EXCLUSIVE:
            if set(pair) <= set(self.methods):
                raise ValueError(f"--da {pair[0]} and {pair[1]} cannot share a run; pick one")
        if self.da_batch not in ("separate", "joint"):
            raise ValueError(f"--da_batch must be separate or joint, got {self.da_batch!r}")
        if self.teacher_bn not in ("train", "eval"):
            raise ValueError(f"--teacher_bn must be train or eval, got {self.teacher_bn!r}")
        if "i3net" in self.methods and len(self.pa_layers) != 2:
            raise ValueError(f"--pa_layers takes two source maps (I3Net's KL term compares two), got {self.pa_layers}")

    @property
    def views(self) -> tuple[str, ...]:
        """The target views the steps read: those of the method that reads the most (with ``mean_teacher``, the
        weak and strong views; the domain classifiers then see the strong one, the student's input)."""
        return max((METHODS[name].views for name in self.methods), key=len, default=())

    @property
    def domain_weight(self) -> float:
        """grl's loss weight (:attr:`grl_weight`, or its method's default)."""
        if self.grl_weight is not None:
            return self.grl_weight
        return SWDA_WEIGHT if self.swda else DA_FASTER_WEIGHT

    @classmethod
    def from_settings(cls, settings: TrainConfig) -> AdaptationConfig:
        """The config of a run's settings (``--da`` and the flags named as the fields)."""
        values = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name != "methods"}
        values["pa_layers"] = tuple(values["pa_layers"])
        return cls(methods=tuple(settings.da or ()), **values)


@dataclass(frozen=True)
class RunLength:
    """What the schedule-dependent defaults scale with: the steps of an epoch and the run's epochs."""

    steps_per_epoch: int
    epochs: int


class AdaptiveSSD(nn.Module):
    """The detector and the modules its adaptation trains, as one module, so that one DistributedDataParallel
    forward covers both domains.

    ``forward(source, target)`` returns one dict of outputs per domain (``target``'s is None without target
    images): the detector's ``loc`` [B, P, 4] and ``conf`` [B, P, C], and what the method's losses read: the
    domain classifiers' logits (reached through the gradient reversal), I3Net's class-presence logits, joint
    features and prototype maps.

    Args:
        detector: the student network.
        config: the methods and hyperparameters.
        seed: seeds I3Net's random layer.
    """

    def __init__(self, detector: SSD, config: AdaptationConfig, seed: int = 0) -> None:
        super().__init__()
        self.detector, self.config = detector, config
        self.parts = nn.ModuleDict()
        methods = config.methods
        taps = getattr(detector, "tap_channels", {})
        width = detector.config.width
        if "grl" in methods and not config.swda:
            channels = detector.source_channels()
            if not 1 <= config.grl_levels <= len(channels):
                raise ValueError(f"--grl_levels {config.grl_levels} must lie in 1..{len(channels)}, the source maps")
            self.parts["image"] = nn.ModuleList(ImageDomainClassifier(channels[i]) for i in range(config.grl_levels))
        if config.swda or "i3net" in methods:
            self.parts["local"] = LocalDomainClassifier(taps["conv3_2"], width)
            self.parts["global"] = GlobalDomainClassifier(taps["conv4_3"], width)
        if "i3net" in methods:
            num_foreground = detector.num_classes - 1
            self.priors_per_location = [head.out_channels // 4 for head in detector.loc]
            channels = detector.source_channels()
            if not all(0 <= layer < len(channels) for layer in config.pa_layers):
                raise ValueError(f"--pa_layers {list(config.pa_layers)} must name source maps 0..{len(channels) - 1}")
            self.parts["presence"] = ClassPresenceHead(taps["conv4_3"], num_foreground)
            self.parts["random"] = RandomLayer((taps["conv4_3"], self.priors_per_location[0] * detector.num_classes),
                                               seed=seed)  # fmt: skip
            self.parts["prototypes"] = nn.ModuleList(Prototypes(num_foreground, channels[i]) for i in config.pa_layers)

    def forward(self, source: Tensor, target: Tensor | None) -> tuple[Outputs, Outputs | None]:
        """source (Tensor[B, 3, S, S]) and target (Tensor[B_t, 3, S, S] | None) -> their outputs."""
        if target is None:
            return self._pass(source), None
        if "target_bn" in self.config.methods:  # the control: BatchNorm sees the target, no loss does
            with torch.no_grad():
                self.detector(target)
            return self._pass(source), None
        if self.config.da_batch == "joint":
            both = self._pass(torch.cat([source, target]))
            return _split(both, 0, source.shape[0]), _split(both, source.shape[0], None)
        return self._pass(source), self._pass(target)

    def _pass(self, images: Tensor) -> Outputs:
        parts, config = self.parts, self.config
        taps: dict[str, Tensor] = {}
        sources = self.detector.sources(images, taps if "local" in parts else None)
        loc, conf = self.detector.heads(sources)
        out: Outputs = {"loc": loc, "conf": conf}
        if "image" in parts:
            out["image"] = [clf(grad_reverse(sources[i], config.grl_lambda)) for i, clf in enumerate(parts["image"])]
        if "local" in parts:
            out["local"] = parts["local"](grad_reverse(taps["conv3_2"], config.grl_lambda))
            out["global"] = parts["global"](grad_reverse(taps["conv4_3"], config.grl_lambda))
        if "presence" in parts:
            layers = self._layer_conf(sources, conf)
            out["presence"] = parts["presence"](taps["conv4_3"])
            # train_I3N.py:266: ``self.get_feature_vector(feat1, feat2.detach())`` (feat2: the first head's logits).
            out["joint"] = joint_feature(taps["conv4_3"], layers[0].detach(), parts["random"])
            out["pa_features"] = [sources[i] for i in config.pa_layers]
            out["pa_conf"] = [layers[i] for i in config.pa_layers]
        return out

    def _layer_conf(self, sources: list[Tensor], conf: Tensor) -> list[Tensor]:
        """Each source map's slice of ``conf`` (Tensor[B, P, C]): Tensor[B, H*W*A, C] per map."""
        sizes = [s.shape[2] * s.shape[3] * a for s, a in zip(sources, self.priors_per_location, strict=True)]
        return list(conf.split(sizes, dim=1))


def _split(outputs: Outputs, start: int, stop: int | None) -> Outputs:
    """The images ``start:stop`` of a joint pass's outputs."""
    return {k: ([t[start:stop] for t in v] if isinstance(v, list) else v[start:stop]) for k, v in outputs.items()}


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for every floating-point parameter and buffer (BatchNorm's
    running statistics too, as Adaptive Teacher's ``_update_teacher_model`` walks the whole state_dict,
    adapteacher/engine/trainer.py:710-714); integer buffers (BatchNorm's batch count) are copied."""
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
        length: the run's length, which the schedule defaults (``burn_in``, ``i3net_start``) scale with.
        seed: the run's seed (I3Net's random layer).
    """

    def __init__(self, config: AdaptationConfig, detector: SSD, length: RunLength, seed: int = 0) -> None:
        for name in config.methods:
            if METHODS[name].needs_batchnorm and not has_batchnorm(detector):
                raise ValueError(
                    f"--da {name} needs BatchNorm statistics, and this {detector.config.backbone} SSD has no "
                    "BatchNorm; add --batch_norm (vgg16) or pick a backbone with BatchNorm"
                )
        if (config.swda or "i3net" in config.methods) and not hasattr(detector, "tap_channels"):
            raise ValueError(
                f"--swda and --da i3net align VGG-16's relu(conv3_2) and relu(conv4_3), which the "
                f"{detector.config.backbone} backbone does not have; use --da grl without --swda (DA-Faster's "
                "classifiers on the source maps), or --backbone vgg16"
            )
        self.config, self.detector, self.length = config, detector, length
        steps = length.steps_per_epoch * length.epochs
        self.burn_in = config.burn_in if config.burn_in is not None else steps // 5
        self.i3net_start = config.i3net_start if config.i3net_start is not None else round(length.epochs * 2 / 7)
        self.adaptive = AdaptiveSSD(detector, config, seed) if self.methods_on_target() else None
        self.teacher: SSD | None = None
        self.detect = Detect(detector.num_classes, conf_thresh=config.pseudo_threshold, top_k=200, keep_top_k=100)
        # DCBR's counts of the target's top classes: the previous epoch's (used) and the current one's (counted).
        self.counts = torch.zeros(2, detector.num_classes - 1)
        if "mean_teacher" in config.methods:
            logger.info(
                "mean teacher: %d burn-in steps, pseudo-label threshold %g", self.burn_in, config.pseudo_threshold
            )
        if "i3net" in config.methods:
            logger.info("i3net: DCBR weights, COPM and the KL term from epoch %d", self.i3net_start + 1)

    @property
    def methods(self) -> tuple[str, ...]:
        return self.config.methods

    def network(self) -> nn.Module:
        """The module a step runs (and DDP wraps): the detector, with its adaptation's modules."""
        return self.adaptive if self.adaptive is not None else self.detector

    def parameters(self) -> Iterable[nn.Parameter]:
        """The trained parameters besides the detector's (the domain classifiers, I3Net's presence head)."""
        return self.adaptive.parts.parameters() if self.adaptive is not None else iter(())

    def uses_target(self, iteration: int) -> bool:
        """Whether step ``iteration`` trains on target images (adabn only reads them between epochs)."""
        if self.adaptive is None:
            return False
        if self.methods_on_target() == {"mean_teacher"}:  # only the teacher's pseudo-labels need target images
            return iteration >= self.burn_in
        return True

    def methods_on_target(self) -> set[str]:
        """The run's methods that train on target batches."""
        return {"grl", "i3net", "mean_teacher", "target_bn"} & set(self.methods)

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
        """The loss terms of one step: MultiBoxLoss on the source batch, plus the methods' terms.

        Args:
            net: :meth:`network`, possibly DDP-wrapped.
            images (Tensor[B, 3, S, S]), targets: the labeled source batch.
            target_views (Tensor[B_t, V, 3, S, S] | None): the target batch (None when :meth:`uses_target` is False).

        Returns:
            :meth:`term_names`, in order.
        """
        detector, config = self.detector, self.config
        if self.adaptive is None:  # adabn alone: its steps are source-only, it reads the target between epochs
            return batch_losses(net, criterion, detector.priors, images, targets, autocast)
        memory_format = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else None
        layout = memory_format or torch.contiguous_format
        student_target, pseudo, unsure = None, None, None
        if target_views is not None:
            target_views = target_views.to(images.device, images.dtype, non_blocking=True)
            student_target = target_views[:, -1].contiguous(memory_format=layout)  # the strong view for MT
            if "mean_teacher" in self.methods and iteration >= self.burn_in:
                pseudo, unsure = self.teacher_labels(target_views[:, 0].contiguous(memory_format=layout), autocast)
        with autocast:
            source_out, target_out = net(images, student_target)
        loss_l, loss_c = criterion(full_precision(source_out["loc"]), full_precision(source_out["conf"]), detector.priors,
                                 targets)  # fmt: skip
        terms = {"loss_l": loss_l, "loss_c": loss_c}
        zero = torch.zeros((), device=images.device)
        if target_out is not None and "grl" in self.methods:
            terms["loss_domain"] = config.domain_weight * self.alignment_loss(source_out, target_out)
        if target_out is not None and "i3net" in self.methods:
            terms.update(self.i3net_losses(source_out, target_out, targets, iteration))
        if pseudo is not None:
            # Box regression from pseudo-labels is left out: their boxes are the noisiest part (Unbiased Teacher §3.3;
            # Adaptive Teacher zeroes ``loss_box_reg_pseudo``, adapteacher/engine/trainer.py:635-637).
            target_loc, target_conf = full_precision(target_out["loc"]), full_precision(target_out["conf"])
            _, unsup_c = criterion(target_loc, target_conf, detector.priors, pseudo, unsure)
            terms["loss_unsup"] = config.unsup_weight * unsup_c
        return {name: terms.get(name, zero) for name in self.term_names()}

    def teacher_labels(self, weak: Tensor, autocast: torch.autocast) -> tuple[list[Tensor], Tensor]:
        """The teacher's pseudo-labels of the weak views (Tensor[B_t, 3, S, S]), and the priors that SSD's negative
        mining may use (Tensor[B_t, P] bool); the teacher is copied from the student at the end of the burn-in."""
        if self.teacher is None:
            self.teacher = copy.deepcopy(self.detector).requires_grad_(False)
            logger.info("mean teacher: teacher copied from the student after %d burn-in steps", self.burn_in)
        self.teacher.train(self.config.teacher_bn == "train")
        with torch.no_grad(), autocast:
            teacher_loc, teacher_conf = self.teacher(weak)
        pseudo = pseudo_labels(self.detect, teacher_loc.float(), teacher_conf.float(), self.detector.priors)
        # SSD mines its negatives among the most object-like background priors, which on a target image are the
        # objects the teacher missed: only priors the teacher calls background as surely as it must call a
        # pseudo-label an object may be mined.
        unsure = teacher_conf.float().softmax(dim=-1)[..., 0] <= self.config.pseudo_threshold  # [B_t, P]
        return pseudo, unsure

    def alignment_loss(self, source: Outputs, target: Outputs) -> Tensor:
        """grl's domain loss, before its weight: the mean over the two domains of each classifier's loss.

        DA-Faster: the image-level cross-entropy, summed over the classifiers. SWDA: ``0.5 * FL(source) + 0.5 *
        FL(target)`` of the global classifier plus ``0.5 * LS(source) + 0.5 * LS(target)`` of the local one
        (DA_Detection trainval_net_global_local.py:210, :212, :223, :225).
        """
        if "image" in source:
            pairs = zip(source["image"], target["image"], strict=True)
            return torch.stack([0.5 * (ImageDomainClassifier.loss(s, 0) + ImageDomainClassifier.loss(t, 1))
                                for s, t in pairs]).sum()  # fmt: skip
        gamma = self.config.focal_gamma
        global_loss = 0.5 * (focal_loss(source["global"], 0, gamma) + focal_loss(target["global"], 1, gamma))
        local_loss = 0.5 * (least_squares_loss(source["local"], 0) + least_squares_loss(target["local"], 1))
        return global_loss + local_loss

    def i3net_losses(
        self, source: Outputs, target: Outputs, targets: list[Tensor], iteration: int
    ) -> dict[str, Tensor]:
        """I3Net's terms (train_I3N.py:198-252), one step.

        ``loss_domain``: the local least squares and the global weighted cross-entropy, on both domains (:218-234);
        ``loss_gcr``: DCBR's multi-label loss on the source (:240); ``loss_gf``: RJCA's joint-feature distance
        (:237); ``loss_pa`` (COPM, both maps) and ``loss_kl`` (RJCA's KL on the target) once past
        ``i3net_start`` (:244-248). Prototypes and DCBR's counts are updated at every step, as the reference does.
        Batch statistics cover every process's batch (:func:`~utils.engine.distributed.differentiable_sum`).
        """
        total = differentiable_sum
        config = self.config
        started = iteration // self.length.steps_per_epoch >= self.i3net_start
        adaptive = self.adaptive
        # DCBR (:206-213): the target's per-image weights, from last epoch's counts of its top classes.
        weights, top = dcbr_weights(target["presence"], self.counts[0])
        counted = torch.bincount(top, minlength=self.counts.shape[1]).to(self.counts.dtype)
        self.counts[1] += all_reduce_sum(counted).cpu()
        if not started:
            weights = torch.ones_like(weights)
        ones = torch.ones(source["global"].shape[0], device=weights.device)
        domain = (
            0.5 * least_squares_loss(source["local"], 0)  # :218
            + 0.5 * weighted_domain_loss(source["global"], 0, ones) * I3NET_SOURCE_GLOBAL_WEIGHT  # :224
            + 0.5 * least_squares_loss(target["local"], 1)  # :228
            + 0.5 * weighted_domain_loss(target["global"], 1, weights) * config.dcbr_weight  # :234
        )
        num_foreground = self.detector.num_classes - 1
        presence = presence_targets(targets, num_foreground)
        logits = full_precision(source["presence"])
        gcr = torch.nn.functional.binary_cross_entropy_with_logits(logits, presence.to(logits.dtype))
        gf = (batch_mean(source["joint"], total) - batch_mean(target["joint"], total)).pow(2).mean()
        # COPM: each domain's prototypes, updated at every step (ssd_I3N.py:267).
        pa = []
        for i, prototypes in enumerate(adaptive.parts["prototypes"]):
            s = prototypes.update(0, *class_means(source["pa_features"][i], source["pa_conf"][i], total))
            t = prototypes.update(1, *class_means(target["pa_features"][i], target["pa_conf"][i], total))
            pa.append(prototype_loss(*s, *t))
        terms = {"loss_domain": domain, "loss_gcr": config.gcr_weight * gcr, "loss_gf": config.gf_weight * gf}
        if started:
            per_location = [adaptive.priors_per_location[i] for i in config.pa_layers]
            first, second = (layer_class_probs(conf, a, total)
                             for conf, a in zip(target["pa_conf"], per_location, strict=True))  # fmt: skip
            terms["loss_pa"] = torch.stack(pa).sum()
            terms["loss_kl"] = config.kl_weight * layer_kl(first, second)
        return terms

    def term_names(self) -> tuple[str, ...]:
        """The loss terms :meth:`losses` returns, in order."""
        names = ["loss_l", "loss_c"]
        if "grl" in self.methods:
            names.append("loss_domain")
        if "i3net" in self.methods:
            names += ["loss_domain", "loss_gcr", "loss_gf", "loss_pa", "loss_kl"]
        if "mean_teacher" in self.methods:
            names.append("loss_unsup")
        return tuple(names)

    def end_epoch(self) -> None:
        """DCBR's counts: this epoch's become the previous epoch's (train_I3N.py:302, ``old_state = new_state``)."""
        self.counts = torch.stack([self.counts[1], torch.zeros_like(self.counts[1])])

    def after_step(self) -> None:
        """Move the teacher towards the student (once the teacher exists)."""
        if self.teacher is not None:
            ema_update(self.teacher, self.detector, self.config.ema_decay)

    def state_dict(self) -> dict:
        """What a checkpoint keeps under ``"adaptation"``: the config, the adaptation's modules (classifiers,
        I3Net's head, random layer and prototypes), DCBR's counts and the teacher."""
        return {
            "config": {**asdict(self.config), "methods": list(self.methods), "pa_layers": list(self.config.pa_layers)},
            "parts": self.adaptive.parts.state_dict() if self.adaptive is not None else None,
            "counts": self.counts.clone(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (the teacher's layout is the detector's)."""
        if self.adaptive is not None and len(self.adaptive.parts):
            if state.get("parts") is None:
                raise ValueError(
                    "the checkpoint's domain adaptation modules are from an older version of train.py, whose "
                    "classifiers this one does not build; start a new run from its weights with --finetune"
                )
            self.adaptive.parts.load_state_dict(state["parts"])
        if state.get("counts") is not None:
            self.counts = state["counts"].clone()
        if state.get("teacher") is not None:
            self.teacher = copy.deepcopy(self.detector).requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])
