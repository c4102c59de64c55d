"""Unsupervised domain adaptation for train.py: labeled source images, unlabeled target images, five methods: what a
step computes (:class:`DomainAdaptation`). The registry and settings are :mod:`utils.engine.da_config`'s, the network
of the two passes :mod:`utils.engine.adaptive_ssd`'s.

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
from dataclasses import asdict

import torch
from torch import Tensor, nn

from layers.detection import Detect
from layers.domain import (
    ImageDomainClassifier,
    focal_loss,
    full_precision,
    least_squares_loss,
    weighted_domain_loss,
)
from layers.i3net import (
    batch_mean,
    class_means,
    dcbr_weights,
    layer_class_probs,
    layer_kl,
    presence_targets,
    prototype_loss,
)
from layers.multibox_loss import MultiBoxLoss
from ssd import SSD
from utils.adabn import has_batchnorm
from utils.engine.adaptive_ssd import AdaptiveSSD, Outputs
from utils.engine.da_config import I3NET_SOURCE_GLOBAL_WEIGHT, AdaptationConfig, RunLength, check_network
from utils.engine.distributed import all_reduce_sum, differentiable_sum
from utils.engine.step import batch_losses

logger = logging.getLogger(__name__)


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
        check_network(config, detector.backbone, has_batchnorm(detector))
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
            self.teacher = self.copy_detector()
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
            "schedule": {"burn_in": self.burn_in, "i3net_start": self.i3net_start},
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (the teacher's layout is the detector's)."""
        if self.adaptive is not None and len(self.adaptive.parts):
            if state.get("parts") is None:
                raise ValueError(
                    "the checkpoint's domain adaptation modules were saved by an older version of train.py, in a "
                    "layout this one does not read; start a new run from its weights with --finetune"
                )
            self.adaptive.parts.load_state_dict(state["parts"])
        if state.get("counts") is not None:
            self.counts = state["counts"].clone()
        if state.get("schedule") is not None:  # the run's own, not what another --end_epoch would give
            self.burn_in, self.i3net_start = int(state["schedule"]["burn_in"]), int(state["schedule"]["i3net_start"])
        if state.get("teacher") is not None:
            self.teacher = self.copy_detector()
            self.teacher.load_state_dict(state["teacher"])

    def copy_detector(self) -> SSD:
        """A frozen copy of the student, without its gradients (the teacher)."""
        teacher = copy.deepcopy(self.detector).requires_grad_(False)
        for parameter in teacher.parameters():
            parameter.grad = None
        return teacher
