"""The SSD network: a VGG-16 base, extra feature layers and convolutional prediction heads.

SSD300 and SSD512 follow Liu et al., "SSD: Single Shot MultiBox Detector" (ECCV 2016), §2.1 and Fig. 2.
With the default arguments the module tree, parameter names and shapes are exactly ssd.pytorch's, so its
checkpoints load with ``load_state_dict(..., strict=True)`` and give the same outputs.

``forward`` returns raw logits only; softmax, decoding and NMS live in :class:`layers.detection.Detect` and
training targets in :class:`layers.multibox_loss.MultiBoxLoss`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.l2norm import L2Norm
from layers.prior_box import PriorConfig, prior_boxes, prior_config

# VGG-16 up to conv5_3: channel counts, "M" a 2x2 max-pool, "C" the same with ceil_mode so that
# 75 -> 38 at SSD300 (SSD §2.1 keeps conv4_3 at 38x38).
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)  # fmt: skip
CONV4_3_INDEX = 10  # conv4_3 is the 10th convolution; its ReLU output is the first source layer.

# Extra feature layers after fc7, as (out_channels, kernel, stride, padding); they alternate a 1x1
# bottleneck and a 3x3 (or 4x4) layer whose output is a source layer (SSD Fig. 2).
EXTRAS: dict[int, tuple[tuple[int, int, int, int], ...]] = {
    300: (
        (256, 1, 1, 0),
        (512, 3, 2, 1),  # conv8:  19 -> 10
        (128, 1, 1, 0),
        (256, 3, 2, 1),  # conv9:  10 -> 5
        (128, 1, 1, 0),
        (256, 3, 1, 0),  # conv10:  5 -> 3
        (128, 1, 1, 0),
        (256, 3, 1, 0),  # conv11:  3 -> 1
    ),
    512: (
        (256, 1, 1, 0),
        (512, 3, 2, 1),  # conv8:  32 -> 16
        (128, 1, 1, 0),
        (256, 3, 2, 1),  # conv9:  16 -> 8
        (128, 1, 1, 0),
        (256, 3, 2, 1),  # conv10:  8 -> 4
        (128, 1, 1, 0),
        (256, 3, 2, 1),  # conv11:  4 -> 2
        (128, 1, 1, 0),
        (256, 4, 1, 1),  # conv12:  2 -> 1, the 4x4 kernel of Caffe's SSD512
    ),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an :class:`SSD`; saved inside this project's checkpoints.

    Args:
        size: input side, 300 or 512.
        num_classes: C, including the background.
        priors: prior layout; its ``image_size`` must equal ``size``.
        width: multiplier on every channel count (1.0 is the paper's network).
        batch_norm: add BatchNorm after every convolution of the base and the extras (for training from
            scratch). Changes the state_dict layout, so ssd.pytorch checkpoints need the default False.
    """

    size: int
    num_classes: int
    priors: PriorConfig
    width: float = 1.0
    batch_norm: bool = False


def _channels(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def vgg_base(width: float = 1.0, batch_norm: bool = False) -> tuple[list[nn.Module], int]:
    """Build the VGG-16 base with SSD's changes (SSD §2.1 / §3.1 "Base network").

    pool5 becomes 3x3 stride 1, fc6 a 3x3 convolution with dilation 6 and fc7 a 1x1 convolution, both
    1024-wide (the "reduced fc" layers).

    Returns:
        The layer list (module ``vgg.{i}`` in the state_dict), and the index just past conv4_3's ReLU,
        where the first source layer is tapped.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    num_convs = 0
    conv4_3_end = -1
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            out_channels = _channels(int(item), width)
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
            num_convs += 1
            if num_convs == CONV4_3_INDEX:
                conv4_3_end = len(layers)
    fc_channels = _channels(1024, width)
    layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))  # pool5
    layers.append(nn.Conv2d(in_channels, fc_channels, kernel_size=3, padding=6, dilation=6))  # fc6
    if batch_norm:
        layers.append(nn.BatchNorm2d(fc_channels))
    layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Conv2d(fc_channels, fc_channels, kernel_size=1))  # fc7
    if batch_norm:
        layers.append(nn.BatchNorm2d(fc_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers, conv4_3_end


def extra_layers(size: int, in_channels: int, width: float = 1.0, batch_norm: bool = False) -> list[nn.Module]:
    """The extra feature layers for ``size``; each entry is a conv (or conv+BN) followed by a ReLU in
    :meth:`SSD.forward`, and every second entry is a source layer."""
    layers: list[nn.Module] = []
    for out_channels, kernel, stride, padding in EXTRAS[size]:
        out_channels = _channels(out_channels, width)
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel, stride=stride, padding=padding)
        layers.append(nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if batch_norm else conv)
        in_channels = out_channels
    return layers


def _out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class SSD(nn.Module):
    """Single Shot MultiBox Detector.

    Attributes:
        vgg: the base network (``nn.ModuleList``, ssd.pytorch's indices).
        L2Norm: scale of the conv4_3 source.
        extras: the extra feature layers.
        loc, conf: one 3x3 prediction head per source layer.
        priors (Tensor[P, 4]): cxcywh priors, a non-persistent buffer (follows ``.to(device)``, absent from
            the state_dict).
    """

    priors: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.size not in EXTRAS:
            raise ValueError(f"SSD input size must be one of {sorted(EXTRAS)}, got {config.size}")
        if config.priors.image_size != config.size:
            raise ValueError(
                f"prior config is for {config.priors.image_size}x{config.priors.image_size} input "
                f"but the model is SSD{config.size}"
            )
        if config.num_classes < 2:
            raise ValueError(f"num_classes must count the background and at least one class, got {config.num_classes}")
        self.config = config
        self.num_classes = config.num_classes

        vgg, self._source_split = vgg_base(config.width, config.batch_norm)
        self.vgg = nn.ModuleList(vgg)
        conv4_3_channels = _out_channels(self.vgg[: self._source_split])
        fc7_channels = _out_channels(self.vgg)
        self.L2Norm = L2Norm(conv4_3_channels, scale=20.0)
        self.extras = nn.ModuleList(extra_layers(config.size, fc7_channels, config.width, config.batch_norm))

        source_channels = [conv4_3_channels, fc7_channels] + [_out_channels(m) for m in self.extras[1::2]]
        boxes = config.priors.boxes_per_location
        if len(source_channels) != len(boxes):
            raise ValueError(
                f"SSD{config.size} has {len(source_channels)} source layers but the prior config describes {len(boxes)}"
            )
        self.loc = nn.ModuleList(
            nn.Conv2d(c, n * 4, kernel_size=3, padding=1) for c, n in zip(source_channels, boxes, strict=True)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, n * config.num_classes, kernel_size=3, padding=1)
            for c, n in zip(source_channels, boxes, strict=True)
        )
        self.register_buffer("priors", prior_boxes(config.priors), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform convolutions with zero bias, as ssd.pytorch's train.py initialises SSD; the base
        is usually overwritten by ImageNet weights afterwards (:func:`utils.checkpoint.load_base_weights`)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def sources(self, x: Tensor) -> list[Tensor]:
        """The feature maps the heads read: conv4_3 (L2-normalised), fc7 and the extras' outputs."""
        for layer in self.vgg[: self._source_split]:
            x = layer(x)
        features = [self.L2Norm(x)]
        for layer in self.vgg[self._source_split :]:
            x = layer(x)
        features.append(x)
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x), inplace=True)
            if k % 2 == 1:
                features.append(x)
        return features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run the network.

        Args:
            x (Tensor[B, 3, size, size]): the preprocessed image batch.

        Returns:
            loc_preds (Tensor[B, P, 4]): box regression offsets, to be decoded against ``self.priors``.
            conf_preds (Tensor[B, P, C]): class logits (no softmax).
        """
        loc_parts: list[Tensor] = []
        conf_parts: list[Tensor] = []
        for feature, loc_head, conf_head in zip(self.sources(x), self.loc, self.conf, strict=True):
            # [B, A*4, H, W] -> [B, H, W, A*4]: prior order is row, column, box shape (see prior_boxes).
            loc_parts.append(loc_head(feature).permute(0, 2, 3, 1).flatten(1))
            conf_parts.append(conf_head(feature).permute(0, 2, 3, 1).flatten(1))
        batch_size = x.shape[0]
        loc_preds = torch.cat(loc_parts, dim=1).view(batch_size, -1, 4)  # [B, P, 4]
        conf_preds = torch.cat(conf_parts, dim=1).view(batch_size, -1, self.num_classes)  # [B, P, C]
        return loc_preds, conf_preds


def build_ssd(
    size: int = 300,
    num_classes: int = 21,
    priors: str | PriorConfig = "VOC",
    width: float = 1.0,
    batch_norm: bool = False,
) -> SSD:
    """Build an SSD300 or SSD512.

    Args:
        size: 300 or 512.
        num_classes: C, including the background (VOC: 21, COCO: 81, Cityscapes: 9).
        priors: a prior family name (``PRIOR_FAMILIES`` in :mod:`layers.prior_box`) or an explicit
            :class:`PriorConfig`. Never inferred from ``num_classes``.
        width: channel multiplier; 1.0 is the paper's network.
        batch_norm: BatchNorm after every base/extra convolution.

    ``build_ssd()`` is exactly ssd.pytorch's ``build_ssd('train', 300, 21)`` network.
    """
    prior_cfg = prior_config(priors, size) if isinstance(priors, str) else priors
    return SSD(ModelConfig(size=size, num_classes=num_classes, priors=prior_cfg, width=width, batch_norm=batch_norm))


def model_config_to_dict(config: ModelConfig) -> dict:
    """A plain-container form of ``config`` for checkpoints (loadable with ``weights_only=True``)."""
    return asdict(config)


def model_config_from_dict(data: dict) -> ModelConfig:
    """Inverse of :func:`model_config_to_dict`."""
    p = data["priors"]
    priors = PriorConfig(
        image_size=int(p["image_size"]),
        feature_maps=tuple(p["feature_maps"]),
        steps=tuple(p["steps"]),
        min_sizes=tuple(p["min_sizes"]),
        max_sizes=tuple(p["max_sizes"]),
        aspect_ratios=tuple(tuple(ratios) for ratios in p["aspect_ratios"]),
        clip=bool(p.get("clip", True)),
    )
    return ModelConfig(
        size=int(data["size"]),
        num_classes=int(data["num_classes"]),
        priors=priors,
        width=float(data.get("width", 1.0)),
        batch_norm=bool(data.get("batch_norm", False)),
    )
