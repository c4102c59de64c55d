"""Adversarial feature alignment for domain adaptation: the gradient reversal layer, the domain classifiers and
their losses.

A domain classifier learns to tell source features (domain 0) from target features (domain 1); the gradient
reversal layer between it and the detector turns its gradient around, so the detector learns features on which
the classifier fails (Ganin & Lempitsky, ICML 2015). Each loss here scores one domain's batch: the methods run the
source and the target through separate forward passes, as their reference code does.

* :class:`ImageDomainClassifier`: DA-Faster's image-level classifier (Chen et al., CVPR 2018, §4.1): 1x1
  convolutions that classify every location of a feature map, trained with cross-entropy.
* :class:`LocalDomainClassifier`: SWDA's strong local alignment (Saito et al., CVPR 2019, §3.2): 1x1
  convolutions ending in a per-pixel sigmoid, trained with least squares (:func:`least_squares_loss`).
* :class:`GlobalDomainClassifier`: SWDA's weak global alignment (§3.1): strided 3x3 convolutions with BatchNorm
  and dropout, global average pooling and two logits per image, trained with the focal loss
  (:func:`focal_loss`, SWDA) or a per-image weighted cross-entropy (:func:`weighted_domain_loss`, I3Net).

The two SWDA classifiers have the layout that I3Net puts on SSD (czzbb/I3Net ssd_I3N.py:27-87), with their widths
scaled with the network's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: float) -> Tensor:  # noqa: ANN001 - autograd's context
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return -ctx.weight * grad, None


def grad_reverse(x: Tensor, weight: float = 1.0) -> Tensor:
    """The identity forward; backward multiplies the gradient by ``-weight`` (Ganin & Lempitsky 2015, eq. 9)."""
    return _GradientReversal.apply(x, weight)


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it is (losses and statistics are never computed in half precision)."""
    return x if x.dtype == torch.float64 else x.float()


def scaled(channels: int, width: float) -> int:
    """``channels`` of a full-width design at ``width`` (as the detector's own layers scale)."""
    return max(1, int(round(channels * width)))


class ImageDomainClassifier(nn.Module):
    """DA-Faster's image-level domain classifier: one domain logit per feature-map location.

    Args:
        in_channels: channels of the feature map it classifies.
        hidden: channels of its hidden 1x1 convolution (DA-Faster: 512).
    """

    def __init__(self, in_channels: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))

    def forward(self, features: Tensor) -> Tensor:
        """features (Tensor[B, in_channels, H, W]) -> domain logits (Tensor[B, 1, H, W]); 1 means target."""
        return self.net(features)

    @staticmethod
    def loss(logits: Tensor, domain: int) -> Tensor:
        """Binary cross-entropy of one domain's batch, averaged over images and locations.

        Args:
            logits (Tensor[B, 1, H, W]): this classifier's output.
            domain: 0 for a source batch, 1 for a target batch.
        """
        logits = full_precision(logits)
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(domain)))


class LocalDomainClassifier(nn.Module):
    """SWDA's local classifier: a domain probability per pixel, from three 1x1 convolutions without bias (256, 128
    and 1 channels at full width; DA_Detection lib/model/faster_rcnn/vgg16_global_local.py:32-36, I3Net
    ssd_I3N.py:30-35), initialised from N(0, 0.01) (ssd_I3N.py:49-51).

    Args:
        in_channels: channels of the low-level map it classifies (VGG-16's relu(conv3_2)).
        width: the network's width multiplier.
    """

    def __init__(self, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        hidden = (scaled(256, width), scaled(128, width))
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden[0], 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(hidden[0], hidden[1], 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(hidden[1], 1, 1, bias=False),
        )  # fmt: skip
        for module in self.net:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)

    def forward(self, features: Tensor) -> Tensor:
        """features (Tensor[B, in_channels, H, W]) -> domain logits (Tensor[B, 1, H, W]); the references' output
        is their sigmoid."""
        return self.net(features)


def least_squares_loss(logits: Tensor, domain: int) -> Tensor:
    """SWDA eq. 3 for one domain's batch: the mean squared distance of the per-pixel domain probability from the
    domain (DA_Detection trainval_net_global_local.py:212 ``torch.mean(out_d_pixel ** 2)`` for the source, :225
    ``torch.mean((1 - out_d_pixel) ** 2)`` for the target; the 0.5 in front of each is the caller's).

    Args:
        logits (Tensor[B, 1, H, W]): :class:`LocalDomainClassifier`'s output.
    """
    return ((full_precision(logits).sigmoid() - domain) ** 2).mean()


class GlobalDomainClassifier(nn.Module):
    """SWDA's global classifier as I3Net puts it on SSD (ssd_I3N.py:63-87): three stride-2 3x3 convolutions without
    bias (256, 128, 128 channels at full width), each followed by BatchNorm, ReLU and dropout (p 0.5, while
    training), global average pooling and a linear layer to two domain logits per image.

    Args:
        in_channels: channels of the map it classifies (VGG-16's relu(conv4_3)).
        width: the network's width multiplier.
        dropout: the dropout probability (``F.dropout``'s default, 0.5, in both references).
    """

    def __init__(self, in_channels: int, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        widths = (scaled(256, width), scaled(128, width), scaled(128, width))
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = in_channels
        for out in widths:
            self.convs.append(nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False))
            self.norms.append(nn.BatchNorm2d(out))
            channels = out
        self.fc = nn.Linear(channels, 2)
        self.dropout = dropout

    def forward(self, features: Tensor) -> Tensor:
        """features (Tensor[B, in_channels, H, W]) -> domain logits (Tensor[B, 2]: source, target)."""
        x = features
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.dropout(F.relu(norm(conv(x))), p=self.dropout, training=self.training)
        return self.fc(x.mean(dim=(2, 3)))  # pooled [B, C] -> [B, 2]


def focal_loss(logits: Tensor, domain: int, gamma: float) -> Tensor:
    """SWDA eq. 5 for one domain's batch: ``-(1 - p)^gamma log p`` of the true domain's softmax probability p,
    averaged over images (DA_Detection lib/model/utils/net_utils.py:150-178, alpha 1): hard-to-classify
    (globally dissimilar) images dominate, easy ones barely count.

    Args:
        logits (Tensor[B, 2]): :class:`GlobalDomainClassifier`'s output.
        gamma: the focusing parameter (SWDA: 5).
    """
    log_p = full_precision(logits).log_softmax(dim=1)[:, domain]  # [B]
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


def weighted_domain_loss(logits: Tensor, domain: int, weights: Tensor) -> Tensor:
    """I3Net's global domain loss for one domain's batch: the cross-entropy of the true domain, each image
    weighted, averaged over images (czzbb/I3Net train_I3N.py:501-509, ``weight_ce_loss``: the softmax clamped to
    [1e-6, 1] before the log).

    Args:
        logits (Tensor[B, 2]): :class:`GlobalDomainClassifier`'s output.
        weights (Tensor[B]): per-image weights (I3Net's DCBR weights on the target, ones on the source).
    """
    p = full_precision(logits).softmax(dim=1).clamp(1e-6, 1)[:, domain]  # [B]
    return (-weights * p.log()).mean()
