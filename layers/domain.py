"""Adversarial feature alignment for domain adaptation: the gradient reversal layer, the domain classifiers and
their losses.

A domain classifier learns to tell source features (domain label 0) from target features (label 1); the gradient
reversal layer between it and the detector turns its gradient around, so the detector learns features on which
the classifier fails (Ganin & Lempitsky, ICML 2015). Three classifiers are here:

* :class:`ImageDomainClassifier`: DA-Faster's image-level classifier (Chen et al., CVPR 2018, §4.1): 1x1
  convolutions that classify every location of a feature map, trained with cross-entropy.
* :class:`LocalDomainClassifier`: SWDA's strong local alignment (Saito et al., CVPR 2019, §3.2): 1x1
  convolutions ending in a per-pixel sigmoid, trained with a least-squares loss, on a low-level map (conv4_3).
* :class:`GlobalDomainClassifier`: SWDA's weak global alignment (§3.1): strided 3x3 convolutions, global
  average pooling and one logit per image, trained with a focal loss that ignores easily classified images.
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
    def loss(logits: Tensor, domains: Tensor) -> Tensor:
        """Binary cross-entropy averaged over images and locations.

        Args:
            logits (Tensor[B, 1, H, W]): this classifier's output.
            domains (Tensor[B]): 0 for a source image, 1 for a target image.
        """
        labels = domains.to(logits.dtype).view(-1, 1, 1, 1).expand_as(logits)  # [B, 1, H, W]
        return F.binary_cross_entropy_with_logits(logits, labels)


class LocalDomainClassifier(nn.Module):
    """SWDA's local classifier: a domain probability per pixel, from three 1x1 convolutions (256, 128, 1 channels,
    as in the paper's code).

    Args:
        in_channels: channels of the low-level map it classifies (conv4_3 for VGG-16).
        hidden: channels of the first hidden convolution (the second has half as many).
    """

    def __init__(self, in_channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden // 2, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(hidden // 2, 1, 1, bias=False),
        )  # fmt: skip

    def forward(self, features: Tensor) -> Tensor:
        """features (Tensor[B, in_channels, H, W]) -> domain logits (Tensor[B, 1, H, W])."""
        return self.net(features)

    @staticmethod
    def loss(logits: Tensor, domains: Tensor) -> Tensor:
        """SWDA eq. 3: the squared error of the per-pixel domain probability, averaged (least squares keeps the
        gradient of well-aligned pixels small and stable)."""
        labels = domains.to(logits.dtype).view(-1, 1, 1, 1)  # [B, 1, 1, 1], broadcast over the pixels
        return ((logits.sigmoid() - labels) ** 2).mean()


class GlobalDomainClassifier(nn.Module):
    """SWDA's global classifier: three strided 3x3 convolutions with BatchNorm, global average pooling and a
    linear layer: one domain logit per image.

    Args:
        in_channels: channels of the high-level map it classifies.
        hidden: channels of its convolutions (SWDA: 512, then 128 for the linear layer's input).
        gamma: the focal loss's focusing parameter (SWDA: 5).
    """

    def __init__(self, in_channels: int, hidden: int = 512, gamma: float = 5.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (hidden, hidden // 4, hidden // 4):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]  # fmt: skip
            channels = out
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, 1)
        self.gamma = gamma

    def forward(self, features: Tensor) -> Tensor:
        """features (Tensor[B, in_channels, H, W]) -> domain logits (Tensor[B, 1])."""
        return self.fc(self.net(features).mean(dim=(2, 3)))  # pooled [B, hidden // 4] -> [B, 1]

    def loss(self, logits: Tensor, domains: Tensor) -> Tensor:
        """SWDA eq. 5, the focal loss ``-(1 - p)^gamma log p`` of the true domain's probability p, averaged over
        images: hard-to-classify (globally dissimilar) images dominate, easy ones barely count."""
        labels = domains.to(logits.dtype).view(-1, 1)  # [B, 1]
        log_p = -F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # log p of the true domain
        return (-((1 - log_p.exp()) ** self.gamma) * log_p).mean()
