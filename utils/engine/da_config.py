"""The domain adaptation methods of train.py's ``--da`` and their settings: the registry (:data:`METHODS`), a run's
:class:`AdaptationConfig`, and the refusals of what a network cannot run (:func:`check_network`). What each method
computes is in :mod:`utils.engine.adaptation`; docs/domain_adaptation.md describes them."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ssd import Backbone
from utils.engine.config import TrainConfig


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
# The maps besides the sources that SWDA's and I3Net's classifiers read (``Backbone.tap_names``): local, global.
TAPS = ("conv3_2", "conv4_3")
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
    "target_bn": Method("target_bn", "a control: target images through BatchNorm, no loss", (),
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


def check_network(config: AdaptationConfig, backbone: Backbone, batch_norm: bool) -> None:
    """Refuse methods that this network cannot run: BatchNorm statistics without BatchNorm layers, and VGG-16's
    alignment points (``Backbone.tap_names``) on another backbone.

    Args:
        backbone: the network's :data:`ssd.BACKBONES` entry.
        batch_norm: whether the network has BatchNorm layers.
    """
    for name in config.methods:
        if METHODS[name].needs_batchnorm and not batch_norm:
            raise ValueError(f"--da {name} needs BatchNorm statistics, and a {backbone.name} SSD without --batch_norm "
                             "has none; add --batch_norm (vgg16) or pick a backbone with BatchNorm")  # fmt: skip
    needs_taps = config.swda or any(METHODS[name].needs_taps for name in config.methods)
    if needs_taps and not set(TAPS) <= set(backbone.tap_names):
        raise ValueError(f"--swda and --da i3net align VGG-16's relu(conv3_2) and relu(conv4_3), which the "
                         f"{backbone.name} backbone does not have; use --da grl without --swda (DA-Faster's "
                         "classifiers on the source maps), or --backbone vgg16")  # fmt: skip


@dataclass(frozen=True)
class RunLength:
    """What the schedule-dependent defaults scale with: the steps of an epoch and the run's epochs."""

    steps_per_epoch: int
    epochs: int
