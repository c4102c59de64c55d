"""I3Net's modules and losses (Chen et al., "I3Net: Implicit Instance-Invariant Network for Adapting One-Stage
Object Detectors", CVPR 2021), written from its reference code, czzbb/I3Net ``ssd_I3N.py`` and ``train_I3N.py``.

Three parts besides SWDA's discriminators (:mod:`layers.domain`):

* DCBR, dynamic class-balanced reweighting: a multi-label head on relu(conv4_3) (:class:`ClassPresenceHead`),
  trained on the source's image-level labels, whose target predictions weight each target image's global domain
  loss (:func:`dcbr_weights`): images of confidently predicted and of rarely predicted classes count more.
* COPM, category-aware object pattern matching: per-class prototypes of two source maps (fc7 and conv9_2 by
  default), moving averages over steps (:class:`Prototypes`), pulled together across domains and pushed apart
  across classes (:func:`prototype_loss`).
* RJCA, regularised joint category alignment: a random multilinear fusion of relu(conv4_3) and the first head's
  class probabilities (:class:`RandomLayer`, :func:`joint_feature`), matched across domains; and the symmetric KL
  between the class predictions of the two prototype maps on the target (:func:`layer_kl`).

The reference keeps one list of prototypes for both domains (ssd_I3N.py:190 ``self.fea_lists``, returned as such
at :286), so its target forward overwrites the source's and the cross-domain term compares the list with itself.
:class:`Prototypes` keeps one set per domain, the paper's intent (docs/domain_adaptation.md, 'I3Net').

Batch statistics (class means, the joint feature's batch mean) take a ``total`` function: the identity in one
process, a differentiable all-reduce sum under DistributedDataParallel, so that N processes compute the statistics
of their whole batch, as the reference does on one GPU.

Shapes: a prediction map of ``A`` priors per location is ``[B, H*W*A, C]`` (the layer's slice of the detector's
``conf_preds``; location-major, as ssd.pytorch's ``permute(0, 2, 3, 1)``), C counting the background.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.domain import full_precision

Sum = Callable[[Tensor], Tensor]


def _local(x: Tensor) -> Tensor:
    return x


# ssd_I3N.py:324: ``self.fea_lists[i][j].detach()*0.7 + cur_fea_lists[i][j]*0.3``.
PROTOTYPE_KEEP = 0.7
# ssd_I3N.py:187: ``RandomLayer([512, num_classes*4], 1024)``.
RANDOM_LAYER_DIM = 1024
# ssd_I3N.py:291: ``pre = pre.view(-1, pre.size(-1))/2``, the temperature of the KL term's softmax.
KL_TEMPERATURE = 2.0


class ClassPresenceHead(nn.Module):
    """DCBR's multi-label classifier (ssd_I3N.py:118-126, ``net_gcr_simple``): global average pooling and a 1x1
    convolution to one logit per foreground class.

    Args:
        in_channels: channels of relu(conv4_3).
        num_foreground: C - 1.
    """

    def __init__(self, in_channels: int, num_foreground: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_foreground, 1)

    def forward(self, features: Tensor) -> Tensor:
        """features (Tensor[B, in_channels, H, W]) -> class logits (Tensor[B, C - 1])."""
        return self.conv(features.mean(dim=(2, 3), keepdim=True)).flatten(1)


def presence_targets(targets: list[Tensor], num_foreground: int) -> Tensor:
    """The multi-hot image labels of a labeled batch (train_I3N.py:413-420, ``gt_classes2cls_onehot``).

    Args:
        targets: B tensors [N_i, 5], the label (0-based, foreground) last.

    Returns:
        Tensor[B, C - 1]: 1 where the image has an object of the class.
    """
    hot = torch.zeros(len(targets), num_foreground, device=targets[0].device if targets else None)
    for row, target in enumerate(targets):
        hot[row, target[:, 4].long()] = 1.0
    return hot


def dcbr_weights(logits: Tensor, previous_counts: Tensor) -> tuple[Tensor, Tensor]:
    """DCBR's per-image weights of the target's global domain loss (train_I3N.py:206-213).

    ``w1`` is 1 plus the mean probability of the classes predicted above 0.5 (``dcbr_w1_weight``, :511-516);
    ``w2 = exp(1 - n_c / n)``, with ``c`` the image's top class and ``n_c`` of the ``n`` target images of the
    previous epoch predicted as ``c``; the weight is their mean.

    Args:
        logits (Tensor[B, C - 1]): :class:`ClassPresenceHead` on the target batch (its gradient is not used).
        previous_counts (Tensor[C - 1]): the previous epoch's counts of top classes (zeros in the first epoch).

    Returns:
        The weights (Tensor[B]) and the batch's top classes (Tensor[B], to be counted for the next epoch).
    """
    probs = full_precision(logits.detach()).sigmoid()  # [B, C - 1]
    top = probs.argmax(dim=1)  # [B]
    confident = (probs > 0.5).to(probs.dtype)
    w1 = (probs * confident).sum(dim=1) / (confident.sum(dim=1) + 1e-7) + 1
    # train_I3N.py:212 divides by img_per_epoch, the images of an epoch, which is what the counts add up to.
    seen = previous_counts.sum().clamp(min=1)
    w2 = torch.exp(1 - previous_counts.to(probs.device)[top] / seen)
    return (w1 + w2) * 0.5, top


class RandomLayer(nn.Module):
    """RJCA's random multilinear map (ssd_I3N.py:128-140): ``(x1 R1) * (x2 R2) / sqrt(d)`` for two inputs, with
    fixed Gaussian matrices. They are buffers drawn from ``seed``, so they are saved with the network and a
    resumed run uses the same ones (the reference draws them anew in each process).

    Args:
        input_dims: the widths of the two inputs.
        output_dim: d (the reference: 1024).
        seed: the matrices' seed.
    """

    def __init__(self, input_dims: tuple[int, int], output_dim: int = RANDOM_LAYER_DIM, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix_0", torch.randn(input_dims[0], output_dim, generator=generator))
        self.register_buffer("matrix_1", torch.randn(input_dims[1], output_dim, generator=generator))
        self.output_dim = output_dim

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """x0 (Tensor[N, d0]), x1 (Tensor[N, d1]) -> Tensor[N, d]."""
        return (x0 @ self.matrix_0) / math.pow(self.output_dim, 1.0 / 2) * (x1 @ self.matrix_1)


def joint_feature(features: Tensor, conf: Tensor, layer: RandomLayer) -> Tensor:
    """RJCA's per-image joint feature (ssd_I3N.py:330-343, ``get_feature_vector``): at every location of
    relu(conv4_3), the random map of its features and of the first head's class probabilities there (all A
    priors), reduced to its mean square; the map of one image is L2-normalised.

    Args:
        features (Tensor[B, Ch, H, W]): relu(conv4_3).
        conf (Tensor[B, H*W*A, C]): the first head's logits (the reference detaches them; so does the caller).
        layer: the random map, with input widths Ch and A*C.

    Returns:
        Tensor[B, H*W]: one unit vector per image (the loss compares their :func:`batch_mean`, ssd_I3N.py:341).
    """
    batch, channels = features.shape[:2]
    f1 = full_precision(features).permute(0, 2, 3, 1).reshape(-1, channels)  # [B*H*W, Ch]
    locations = f1.shape[0] // batch
    num_classes = conf.shape[-1]
    f2 = full_precision(conf).reshape(batch * locations, -1, num_classes).softmax(dim=-1).flatten(1)  # [B*H*W, A*C]
    joint = layer(f1, f2).pow(2).mean(dim=1).view(batch, locations)  # [B, H*W]
    return F.normalize(joint, p=2, dim=1)


def batch_mean(x: Tensor, total: Sum = _local) -> Tensor:
    """The mean over the batch (all processes' batches, through ``total``): x (Tensor[B, ...]) -> Tensor[...]."""
    return total(x.sum(dim=0)) / total(x.new_tensor(float(x.shape[0])))


def class_means(features: Tensor, conf: Tensor, total: Sum = _local) -> tuple[Tensor, Tensor]:
    """The mean feature of each class over the locations a head assigns to it (ssd_I3N.py:346-358,
    ``get_fea_list``): a location's class is that of its largest logit over all A priors and C classes.

    Args:
        features (Tensor[B, Ch, H, W]): a source map.
        conf (Tensor[B, H*W*A, C]): its head's logits.
        total: sums over the processes' batches.

    Returns:
        means (Tensor[C - 1, Ch]) of the foreground classes (zeros where absent), and present (Tensor[C - 1] bool).
    """
    batch, channels = features.shape[:2]
    flat = full_precision(features).permute(0, 2, 3, 1).reshape(-1, channels)  # [N, Ch], N = B*H*W
    num_classes = conf.shape[-1]
    labels = conf.reshape(flat.shape[0], -1).argmax(dim=1) % num_classes  # [N]
    hot = F.one_hot(labels, num_classes)[:, 1:].to(flat.dtype)  # [N, C - 1]
    counts = total(hot.sum(dim=0))  # [C - 1]
    means = total(hot.t() @ flat) / counts.clamp(min=1)[:, None]  # [C - 1, Ch]
    return means, counts > 0


class Prototypes(nn.Module):
    """COPM's class prototypes of one map, one set per domain: the moving average ``0.7 * previous + 0.3 *
    batch`` of :func:`class_means` (ssd_I3N.py:319-328, ``Moving_average``), the previous value detached. A class
    absent from a batch keeps its prototype; a class never seen has none.

    Buffers ``value`` (Tensor[2, C - 1, Ch]) and ``seen`` (Tensor[2, C - 1] bool), indexed by domain (0 source,
    1 target), are saved with the network, so a resumed run continues the same averages.
    """

    def __init__(self, num_foreground: int, channels: int) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(2, num_foreground, channels))
        self.register_buffer("seen", torch.zeros(2, num_foreground, dtype=torch.bool))

    def update(self, domain: int, means: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Fold one batch's class means into ``domain``'s prototypes.

        Args:
            means (Tensor[C - 1, Ch]), present (Tensor[C - 1] bool): :func:`class_means` of the batch.

        Returns:
            The prototypes (Tensor[C - 1, Ch]; the batch's part carries its gradient) and which exist
            (Tensor[C - 1] bool).
        """
        previous, seen = self.value[domain].clone(), self.seen[domain].clone()  # the buffers change below
        blended = torch.where(seen[:, None], PROTOTYPE_KEEP * previous + (1 - PROTOTYPE_KEEP) * means, means)
        value = torch.where(present[:, None], blended, previous)
        exists = seen | present
        with torch.no_grad():
            self.value[domain] = value.detach()
            self.seen[domain] = exists
        return value, exists


def prototype_loss(source: Tensor, source_seen: Tensor, target: Tensor, target_seen: Tensor) -> Tensor:
    """COPM's loss on one map (train_I3N.py:363-410, ``get_pa_loss``): the intra-class term, the mean squared
    distance between a class's source and target prototypes, plus the inter-class term, which pushes prototypes of
    different classes (from either domain, in all four pairings) to at least distance 1: ``max(1 - d, 0)^2 (1 -
    d)^2`` with ``d`` the root mean squared distance (``contrasive_separation``, :406-410). Each term averages
    over the pairs that exist, and is 0 without any.

    Args:
        source (Tensor[K, Ch]), source_seen (Tensor[K] bool): the source prototypes (:class:`Prototypes`).
        target (Tensor[K, Ch]), target_seen (Tensor[K] bool): the target's.
    """
    both = source_seen & target_seen
    intra = ((source - target) ** 2).mean(dim=1)[both]
    intra_loss = intra.mean() if intra.numel() else source.new_zeros(())
    everything = torch.cat([source, target])  # [2K, Ch]
    seen = torch.cat([source_seen, target_seen])
    classes = torch.arange(source.shape[0], device=source.device).repeat(2)
    pairs = (classes[:, None] < classes[None, :]) & seen[:, None] & seen[None, :]  # [2K, 2K]
    squared = ((everything[:, None] - everything[None, :]) ** 2).mean(dim=2)  # [2K, 2K]
    distance = torch.where(pairs, squared, torch.ones_like(squared)).sqrt()
    separation = torch.clamp(1 - distance, min=0) ** 2 * (1 - distance) ** 2
    inter_loss = separation[pairs].mean() if pairs.any() else source.new_zeros(())
    return intra_loss + inter_loss


def layer_class_probs(conf: Tensor, priors_per_location: int, total: Sum = _local) -> tuple[Tensor, Tensor]:
    """The mean class probabilities of the locations each foreground class wins, for the KL term
    (ssd_I3N.py:290-303): per location, the softmax of the logits / 2 averaged over its A priors; a location's
    class is the largest of these; each present class gets the mean over its locations, plus 1e-6.

    Args:
        conf (Tensor[B, H*W*A, C]): a head's logits.
        priors_per_location: A.
        total: sums over the processes' batches.

    Returns:
        Tensor[C - 1, C] of mean probabilities, and present (Tensor[C - 1] bool).
    """
    num_classes = conf.shape[-1]
    logits = full_precision(conf) / KL_TEMPERATURE
    probs = logits.reshape(-1, priors_per_location, num_classes).softmax(dim=-1).mean(dim=1)  # [N, C]
    labels = probs.argmax(dim=1)  # [N]
    hot = F.one_hot(labels, num_classes)[:, 1:].to(probs.dtype)  # [N, C - 1]
    counts = total(hot.sum(dim=0))
    means = total(hot.t() @ probs) / counts.clamp(min=1)[:, None] + 1e-6  # [C - 1, C]
    return means, counts > 0


def layer_kl(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> Tensor:
    """RJCA's consistency of two maps' class predictions on the target (ssd_I3N.py:305-316): for each class
    present in both, the symmetric KL ``p log(p/q) + q log(q/p)`` of their mean probabilities, averaged over
    the C entries and halved; the mean over those classes (0 without any).

    Args:
        first, second: :func:`layer_class_probs` of the two maps.
    """
    (p, p_present), (q, q_present) = first, second
    both = p_present & q_present
    if not both.any():
        return p.new_zeros(())
    p, q = p[both], q[both]
    return ((p * torch.log(p / q) + q * torch.log(q / p)).mean(dim=1) / 2).mean()
