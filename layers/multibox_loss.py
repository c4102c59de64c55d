"""The SSD training objective, SSD §2.2 "Training objective" and "Hard negative mining"."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.box_utils import DEFAULT_VARIANCES, Variances, match, pad_targets

# What both loss terms are divided by (MultiBoxLoss's docstring): "ratio" (default) or ssd.pytorch's positives.
NEGATIVES_NORMS = ("ratio", "ssd_pytorch")


class MultiBoxLoss(nn.Module):
    """Smooth-L1 localisation loss plus cross-entropy with 3:1 hard negative mining.

    The matching and mining are ssd.pytorch's, computed for the whole batch at once:

    * matching: :func:`layers.box_utils.match` (forced best prior, then IoU >= ``overlap_thresh``);
    * ``loss_l``: smooth-L1 summed over positive priors;
    * ``loss_c``: cross-entropy summed over positives and, per image, the ``neg_pos_ratio`` x (positives)
      background priors with the highest cross-entropy (positives are never mined as negatives);
    * both are divided by one count N (SSD §2.2: L = (L_conf + L_loc) / N), set by ``negatives_norm``.

    ssd.pytorch crashes on an image without ground truth; here such an image is a background-only sample
    whose ``empty_image_negatives`` hardest priors are penalised (3:1 of zero positives would mine none
    and the image would teach nothing).

    ``negatives_norm`` says what N counts:

    * ``"ratio"`` (default): each image's positives, and for an image without positives the positives its
      mined negatives stand for at 3:1, ``empty_image_negatives / neg_pos_ratio``. Every batch then mines
      ``neg_pos_ratio`` x N negatives, each weighing 1/N: together they weigh ``neg_pos_ratio`` times their
      mean cross-entropy, with or without objects in the batch. A batch whose every image has a ground
      truth (VOC: every image) gets exactly ssd.pytorch's loss.
    * ``"ssd_pytorch"``: the batch's positives, at least 1. An all-background batch divides its
      ``empty_image_negatives`` per image by 1, so each mined negative weighs as much as in a batch with a
      single positive, and the loss is two orders of magnitude above an ordinary batch's.

    Args:
        num_classes: C, including the background.
        overlap_thresh: IoU from which a prior is positive (SSD: 0.5).
        neg_pos_ratio: negatives mined per positive (SSD: 3).
        variances: encoding variances.
        empty_image_negatives: negatives mined in an image with no ground truth.
        negatives_norm: ``"ratio"`` or ``"ssd_pytorch"``, see above.
        normalizer: maps this batch's count N (a float tensor, a sum over images) to the number both terms
            are divided by. Under DDP, ``lambda n: all_reduce_sum(n).clamp(min=1) / world_size`` divides by
            the global batch's count over the number of processes, so the averaged gradients equal a single
            process's on the whole batch. Default: ``n.clamp(min=1)``.
    """

    def __init__(
        self,
        num_classes: int,
        overlap_thresh: float = 0.5,
        neg_pos_ratio: int = 3,
        variances: Variances = DEFAULT_VARIANCES,
        empty_image_negatives: int = 100,
        negatives_norm: str = "ratio",
        normalizer: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must count the background and at least one class, got {num_classes}")
        if negatives_norm not in NEGATIVES_NORMS:
            raise ValueError(f"negatives_norm must be one of {NEGATIVES_NORMS}, got {negatives_norm!r}")
        if negatives_norm == "ratio" and neg_pos_ratio <= 0:
            raise ValueError(f"negatives_norm='ratio' needs neg_pos_ratio > 0, got {neg_pos_ratio}")
        self.num_classes = num_classes
        self.overlap_thresh = overlap_thresh
        self.neg_pos_ratio = neg_pos_ratio
        self.variances = variances
        self.empty_image_negatives = empty_image_negatives
        self.negatives_norm = negatives_norm
        self.normalizer = normalizer

    def forward(
        self,
        loc_preds: Tensor,
        conf_preds: Tensor,
        priors: Tensor,
        targets: list[Tensor],
        ignore: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Compute ``(loss_l, loss_c)``.

        Args:
            loc_preds (Tensor[B, P, 4]): regression outputs of the network.
            conf_preds (Tensor[B, P, C]): class logits of the network.
            priors (Tensor[P, 4]): cxcywh.
            targets: B tensors [N_i, 5] of ``(xmin, ymin, xmax, ymax, label)``, relative xyxy, ``label`` the
                0-based foreground index; N_i may be 0.
            ignore (Tensor[B, P] bool | None): priors never mined as negatives (pseudo-labels: where the teacher is
                unsure, a prior is neither object nor background); a matched prior stays positive.

        Returns:
            Two scalar tensors, each divided by the count N (see the class docstring).
        """
        batch_size, num_priors, num_classes = conf_preds.shape
        if num_classes != self.num_classes:
            raise ValueError(f"conf_preds has {num_classes} classes but the loss was built for {self.num_classes}")
        if len(targets) != batch_size:
            raise ValueError(f"got {len(targets)} target tensors for a batch of {batch_size}")

        with torch.no_grad():
            truths, labels, valid = pad_targets([t.to(loc_preds.device, torch.float32) for t in targets])
            loc_targets, conf_targets = match(
                truths, labels, valid, priors, self.overlap_thresh, self.variances
            )  # [B, P, 4], [B, P]
        positive = conf_targets > 0  # [B, P]
        num_pos = positive.sum(dim=1)  # [B]

        loss_l = F.smooth_l1_loss(loc_preds[positive], loc_targets[positive].to(loc_preds.dtype), reduction="sum")

        with torch.no_grad():
            # Cross-entropy of every prior, [B, P], only to rank the negatives: no gradient is needed here.
            logits = conf_preds.detach().float().flatten(0, 1)  # [B*P, C]
            prior_loss = F.cross_entropy(logits, conf_targets.flatten(), reduction="none").view(batch_size, -1)
            # Per image, the num_neg background priors with the highest loss. One topk of the largest
            # num_neg in the batch (hundreds of priors, not all P) replaces a full sort per image.
            excluded = positive if ignore is None else positive | ignore
            mining_loss = prior_loss.masked_fill(excluded, float("-inf"))
            num_neg = self.neg_pos_ratio * num_pos
            num_neg = torch.where(num_pos > 0, num_neg, torch.full_like(num_neg, self.empty_image_negatives))
            num_neg = num_neg.clamp(max=num_priors - 1)  # [B]
            most = int(num_neg.max()) if batch_size else 0
            hardest = mining_loss.topk(most, dim=1).indices  # [B, most], hardest first
            chosen = torch.arange(most, device=num_neg.device) < num_neg.unsqueeze(1)  # [B, most]
            negative = torch.zeros_like(positive).scatter_(1, hardest, chosen) & ~excluded  # [B, P]

        # The differentiable cross-entropy only over the priors that count (positives and mined negatives).
        selected = positive | negative
        loss_c = F.cross_entropy(conf_preds[selected], conf_targets[selected], reduction="sum")
        if self.negatives_norm == "ratio":
            # An image without positives counts as the positives its mined negatives stand for at 3:1.
            count = torch.where(num_pos > 0, num_pos.float(), num_neg.float() / self.neg_pos_ratio).sum()
        else:
            count = num_pos.sum()
        count = count.to(loss_l.dtype)  # a sum over images: under DDP the all-reduced count is the global one
        count = count.clamp(min=1) if self.normalizer is None else self.normalizer(count)
        return loss_l / count, loss_c / count

    def forward_padded(
        self, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor, truths: Tensor, labels: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` with static shapes and no host synchronisation, for a captured (CUDA graph) or compiled
        training step: targets padded to a fixed count, masked sums instead of boolean indexing, and mining by a
        full sort instead of a top-k of a data-dependent size. The same loss as :meth:`forward` (up to the order of
        equal losses among mined negatives), whatever the padding.

        Args:
            truths (Tensor[B, N, 4]), labels (Tensor[B, N]), valid (Tensor[B, N]): the targets as
                :func:`layers.box_utils.pad_targets` gives them, padded to any fixed N with ``valid`` False.
        """
        batch_size, num_priors, _ = conf_preds.shape
        with torch.no_grad():
            loc_targets, conf_targets = match(truths, labels, valid, priors, self.overlap_thresh, self.variances,
                                              static_shapes=True)  # fmt: skip
        positive = conf_targets > 0  # [B, P]
        num_pos = positive.sum(dim=1)  # [B]
        smooth = F.smooth_l1_loss(loc_preds, loc_targets.to(loc_preds.dtype), reduction="none").sum(-1)  # [B, P]
        loss_l = (smooth * positive).sum()
        prior_loss = F.cross_entropy(conf_preds.flatten(0, 1), conf_targets.flatten(), reduction="none")
        prior_loss = prior_loss.view(batch_size, num_priors)  # [B, P]
        with torch.no_grad():
            mining_loss = prior_loss.detach().masked_fill(positive, float("-inf"))
            num_neg = torch.where(num_pos > 0, self.neg_pos_ratio * num_pos, self.empty_image_negatives)
            num_neg = num_neg.clamp(max=num_priors - 1)  # [B]
            rank = mining_loss.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # [B, P], 0 = hardest
            negative = (rank < num_neg.unsqueeze(1)) & ~positive
        loss_c = (prior_loss * (positive | negative)).sum()
        if self.negatives_norm == "ratio":
            count = torch.where(num_pos > 0, num_pos.float(), num_neg.float() / self.neg_pos_ratio).sum()
        else:
            count = num_pos.sum()
        count = count.to(loss_l.dtype)
        count = count.clamp(min=1) if self.normalizer is None else self.normalizer(count)
        return loss_l / count, loss_c / count
