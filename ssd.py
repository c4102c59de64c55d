"""The SSD network: a base network, extra feature layers and convolutional prediction heads.

Three backbones, each an entry of :data:`BACKBONES` (``ModelConfig.backbone``):

* ``vgg16``: SSD300 and SSD512 of Liu et al., "SSD: Single Shot MultiBox Detector" (ECCV 2016), §2.1 and Fig. 2.
  With the default arguments the module tree, parameter names and shapes are exactly ssd.pytorch's, so its
  checkpoints load with ``load_state_dict(..., strict=True)`` and give the same outputs.
* ``mobilenet_v3_large``: SSDLite320 as torchvision builds it (MobileNetV3 §6.3, MobileNetV2 §6.2): sources at
  C4's expansion layer (20x20) and the last layer (10x10), four depthwise-separable extra blocks, depthwise-
  separable heads, BatchNorm and ReLU6 throughout. Module names are torchvision's under other prefixes
  (``base`` for ``backbone.features``, ``extras`` for ``backbone.extra``, ``loc``/``conf`` for the regression and
  classification heads), which is what lets ``utils.deploy.convert_torchvision`` rename keys and nothing else.
* ``resnet50``: SSD300 of NVIDIA's DeepLearningExamples: ResNet-50 up to layer3 with layer3's stride set to 1
  (1024 channels at 38x38), five BatchNorm extra blocks, 3x3 heads.

The base networks themselves are ``torchvision.models``' (``mobilenet_v3_large``, ``resnet50``); the feature
taps, extra layers, heads and priors are this module's. ``forward`` returns raw logits only; softmax, decoding
and NMS live in :class:`layers.detection.Detect` and training targets in :class:`layers.multibox_loss.MultiBoxLoss`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from layers.detection import DetectSettings
from layers.l2norm import L2Norm
from layers.prior_box import PriorConfig, prior_boxes, prior_config

# VGG-16 up to conv5_3: channel counts, "M" a 2x2 max-pool, "C" the same with ceil_mode so that
# 75 -> 38 at SSD300 (SSD §2.1 keeps conv4_3 at 38x38).
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)  # fmt: skip
CONV4_3_INDEX = 10  # conv4_3 is the 10th convolution; its ReLU output is the first source layer.
# conv3_2 is the 6th convolution: its ReLU output is ``vgg[:14]`` of ssd.pytorch's layout, where I3Net's local domain
# classifier reads (czzbb/I3Net ssd_I3N.py:219-224, ``for k in range(14)`` then ``self.netD_pixel(grad_reverse(x))``).
CONV3_2_INDEX = 6

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
# NVIDIA's ResNet-50 SSD300 extras: (mid, out, stride, padding) after layer3's 1024 channels; 38 -> 19 -> 10 -> 5
# -> 3 -> 1. The first three halve the map, the last two shrink it by 2 without padding, as VGG SSD300's do.
RESNET_EXTRAS: tuple[tuple[int, int, int, int], ...] = (
    (256, 512, 2, 1),
    (256, 512, 2, 1),
    (128, 256, 2, 1),
    (128, 256, 1, 0),
    (128, 256, 1, 0),
)
# SSDLite's extra blocks after MobileNetV3's last layer: output channels (times the width multiplier, at least 16);
# each halves the map: 10 -> 5 -> 3 -> 2 -> 1 at 320.
SSDLITE_EXTRAS: tuple[int, ...] = (512, 256, 256, 128)
# torchvision's SSDLite BatchNorm (ssdlite320_mobilenet_v3_large's norm_layer), also inside the MobileNetV3 base.
SSDLiteBatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an :class:`SSD`; saved inside this project's checkpoints.

    Args:
        size: input side (vgg16: 300 or 512; resnet50: 300; mobilenet_v3_large: 320).
        num_classes: C, including the background.
        priors: prior layout; its ``image_size`` must equal ``size``.
        width: multiplier on every channel count (1.0 is the paper's network; resnet50 has 1.0 only).
        batch_norm: vgg16 only: add BatchNorm after every convolution of the base and the extras (for training
            from scratch). Changes the state_dict layout, so ssd.pytorch checkpoints need the default False. The
            other backbones have BatchNorm by design.
        backbone: a key of :data:`BACKBONES`. Checkpoints written before there was a choice are vgg16.
        reduced_tail: mobilenet_v3_large only: MobileNetV3's last stage at half width (MobileNetV3 §6.3, Table 6),
            as in torchvision's COCO SSDLite; ImageNet's MobileNetV3 weights have the full tail.
    """

    size: int
    num_classes: int
    priors: PriorConfig
    width: float = 1.0
    batch_norm: bool = False
    backbone: str = "vgg16"
    reduced_tail: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A plain-container form for checkpoints (loadable with ``weights_only=True``); the priors as
        :meth:`PriorConfig.to_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; fields that older checkpoints lack take their defaults."""
        return cls(
            size=int(data["size"]),
            num_classes=int(data["num_classes"]),
            priors=PriorConfig.from_dict(data["priors"]),
            width=float(data.get("width", 1.0)),
            batch_norm=bool(data.get("batch_norm", False)),
            backbone=str(data.get("backbone", "vgg16")),
            reduced_tail=bool(data.get("reduced_tail", False)),
        )


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


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias), BatchNorm, ReLU6: torchvision's ``Conv2dNormActivation`` as SSDLite uses it (same
    module indices, hence the same state_dict keys)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        SSDLiteBatchNorm(out_channels),
        nn.ReLU6(inplace=True),
    )


class Backbone:
    """One entry of :data:`BACKBONES`: how an :class:`SSD` of this backbone builds, initialises and runs its
    feature layers, and the design that goes with them.

    Attributes:
        name: the ``--backbone`` value.
        sizes: input sizes the design has feature layers for; the first is the default.
        prior_family: the design's priors (``layers.prior_box.PRIOR_CONFIGS``), or None: the dataset's.
        test_settings: the design's Detect settings.
        batch_norm_option, tail_option: whether ``ModelConfig.batch_norm`` / ``reduced_tail`` apply to it.
        base_weights: the ImageNet base file as its usual source names it (the ``--basenet`` default).
        base_weights_source: where that file comes from (the message when it is missing).
        base_description: what :meth:`base_state` loads (the message when a file does not fit).
        base_file_key: a state_dict key that only this backbone's ImageNet files have.
        base_file_kind: what such a file is (the message when it is given for another backbone).
        pixel_norm: the input normalisation those weights expect (a ``utils.transforms.PIXEL_NORMS`` name).
    """

    name: str
    sizes: tuple[int, ...]
    prior_family: str | None = None
    test_settings: DetectSettings = DetectSettings()
    batch_norm_option: bool = False
    tail_option: bool = False
    base_weights: str
    base_weights_source: str
    base_description: str
    base_file_key: str
    base_file_kind: str
    pixel_norm: str = "torchvision"
    # The feature maps besides the sources that :meth:`sources` can hand out (``taps``): the alignment points of
    # ``--swda`` and ``--da i3net``, which are VGG-16 layers.
    tap_names: tuple[str, ...] = ()

    def has_batch_norm(self, batch_norm: bool) -> bool:
        """Whether a network of this backbone with ``ModelConfig.batch_norm == batch_norm`` has BatchNorm layers."""
        return batch_norm or not self.batch_norm_option

    def reduced_tail(self, from_scratch: bool) -> bool:
        """``ModelConfig.reduced_tail`` of a new network: the design's rule, given whether it trains from scratch."""
        return False

    def base_module(self, model: SSD) -> nn.Module:
        """The part of ``model`` that the ImageNet base file initialises."""
        return model.base

    def base_state(self, model: SSD, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The ImageNet file's ``state`` with :meth:`base_module`'s keys (parts the SSD does not use dropped)."""
        raise NotImplementedError

    def check_size(self, size: int) -> None:
        """Raise a ValueError unless the design has feature layers for ``size``."""
        if size not in self.sizes:
            raise ValueError(
                f"SSD input size must be one of {sorted(self.sizes)} for the {self.name} backbone, got {size}"
            )

    def check(self, config: ModelConfig) -> None:
        """Raise a ValueError naming what ``config`` asks that this backbone cannot build."""
        self.check_size(config.size)
        if config.batch_norm and not self.batch_norm_option:
            raise ValueError(f"the {self.name} design has BatchNorm throughout; batch_norm is a vgg16 option")
        if config.reduced_tail and not self.tail_option:
            raise ValueError(f"reduced_tail is a mobilenet_v3_large option, not one of {self.name}")

    def build(self, model: SSD, config: ModelConfig) -> list[int]:
        """Add the base and extra layers to ``model``; return the channels of each source layer."""
        raise NotImplementedError

    def head(self, in_channels: int, out_channels: int) -> nn.Module:
        """One prediction head: a source layer's features [B, in, H, W] -> [B, out, H, W]."""
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def sources(self, model: SSD, x: Tensor, taps: dict[str, Tensor] | None = None) -> list[Tensor]:
        """The feature maps the heads read, largest first; ``taps`` (when given) receives the maps of
        :attr:`tap_names`."""
        raise NotImplementedError

    def reset_parameters(self, model: SSD) -> None:
        """The initialisation of a model trained from scratch."""
        raise NotImplementedError


class VGG16(Backbone):
    """SSD §2.1: VGG-16 with reduced fc6/fc7, sources at conv4_3 (L2-normalised) and fc7, then the extras."""

    name = "vgg16"
    sizes = tuple(EXTRAS)
    batch_norm_option = True
    base_weights = "weights/vgg16_reducedfc.pth"
    base_weights_source = (
        "put ssd.pytorch's vgg16_reducedfc.pth there (docs/backbones.md, 'Weights'), or convert torchvision's VGG-16 "
        "with utils/deploy/convert_vgg.py and pass --basenet <file> --pixel_norm torchvision"
    )
    base_description = "the VGG-16 base (it needs width 1.0 without batch norm)"
    base_file_key = "31.weight"
    base_file_kind = "VGG-16 in reduced-fc form"
    pixel_norm = "caffe"  # converted Caffe weights: BGR 0-255 minus the mean (104, 117, 123)
    tap_names = ("conv3_2", "conv4_3")  # both after their ReLU; conv4_3 before L2Norm

    def base_module(self, model: SSD) -> nn.Module:
        return model.vgg

    def base_state(self, model: SSD, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """VGG-16 in reduced-fc form (``0.weight`` ... ``33.bias``), with or without a ``vgg.`` prefix."""
        return {k.removeprefix("vgg."): v for k, v in state.items()}

    def build(self, model: SSD, config: ModelConfig) -> list[int]:
        vgg, model._source_split = vgg_base(config.width, config.batch_norm)
        model.vgg = nn.ModuleList(vgg)
        convs = [i for i, layer in enumerate(model.vgg) if isinstance(layer, nn.Conv2d)]
        model._conv3_2_split = next(i for i in range(convs[CONV3_2_INDEX - 1], len(model.vgg))
                                    if isinstance(model.vgg[i], nn.ReLU)) + 1  # fmt: skip
        conv4_3_channels = _out_channels(model.vgg[: model._source_split])
        model.tap_channels = {"conv3_2": _out_channels(model.vgg[: model._conv3_2_split]), "conv4_3": conv4_3_channels}
        fc7_channels = _out_channels(model.vgg)
        model.L2Norm = L2Norm(conv4_3_channels, scale=20.0)
        model.extras = nn.ModuleList(extra_layers(config.size, fc7_channels, config.width, config.batch_norm))
        return [conv4_3_channels, fc7_channels] + [_out_channels(m) for m in model.extras[1::2]]

    def sources(self, model: SSD, x: Tensor, taps: dict[str, Tensor] | None = None) -> list[Tensor]:
        for layer in model.vgg[: model._conv3_2_split]:
            x = layer(x)
        if taps is not None:
            taps["conv3_2"] = x
        for layer in model.vgg[model._conv3_2_split : model._source_split]:
            x = layer(x)
        if taps is not None:
            taps["conv4_3"] = x
        features = [model.L2Norm(x)]
        for layer in model.vgg[model._source_split :]:
            x = layer(x)
        features.append(x)
        for k, layer in enumerate(model.extras):
            x = F.relu(layer(x), inplace=True)
            if k % 2 == 1:
                features.append(x)
        return features

    def reset_parameters(self, model: SSD) -> None:
        """Xavier-uniform convolutions with zero bias, as ssd.pytorch's train.py initialises SSD; the base is
        usually overwritten by ImageNet weights afterwards (:func:`utils.checkpoint.load_base_weights`)."""
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)


class StagedBackbone(Backbone):
    """A base network cut into stages (``model.base``) and extra blocks (``model.extras``); the output of every
    stage and every block is a source layer."""

    def sources(self, model: SSD, x: Tensor, taps: dict[str, Tensor] | None = None) -> list[Tensor]:
        features = []
        for stage in model.base:
            x = stage(x)
            features.append(x)
        for block in model.extras:
            x = block(x)
            features.append(x)
        return features


class MobileNetV3Large(StagedBackbone):
    """SSDLite320 (torchvision's ``ssdlite320_mobilenet_v3_large``).

    The base is cut inside C5's first block (the last stride-2 one): its 1x1 expansion output, at stride 16, is the
    first source (MobileNetV3 §6.3: "C4 ... the expansion layer"); the base's last layer, at stride 32, the second.
    Extra blocks are 1x1 (half width) -> 3x3 depthwise stride 2 -> 1x1; heads are 3x3 depthwise -> 1x1.
    """

    name = "mobilenet_v3_large"
    sizes = (320,)
    prior_family = "SSDLITE"
    tail_option = True
    base_weights = "weights/mobilenet_v3_large-8738ca79.pth"
    base_weights_source = (
        "put torchvision's ImageNet MobileNetV3-Large weights there (mobilenet_v3_large-8738ca79.pth from "
        "download.pytorch.org; docs/backbones.md, 'Weights')"
    )
    base_description = "the MobileNetV3-Large base (full tail, width 1.0)"
    base_file_key = "features.16.0.weight"
    base_file_kind = "torchvision's MobileNetV3-Large"
    # torchvision's SSDLite test settings (ssdlite320_mobilenet_v3_large's defaults).
    test_settings = DetectSettings(conf_thresh=0.001, nms_thresh=0.55, top_k=300, keep_top_k=300)

    def build(self, model: SSD, config: ModelConfig) -> list[int]:
        features = torchvision.models.mobilenet_v3_large(
            weights=None, width_mult=config.width, reduced_tail=config.reduced_tail, norm_layer=SSDLiteBatchNorm
        ).features
        c5 = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)][-1]
        assert not features[c5].use_res_connect, "C5's first block changes the resolution: no residual"
        model.base = nn.ModuleList(
            [
                nn.Sequential(*features[:c5], features[c5].block[0]),  # up to C5's expansion: stride 16
                nn.Sequential(features[c5].block[1:], *features[c5 + 1 :]),  # C5's depthwise onwards: stride 32
            ]
        )
        channels = [features[c5].block[0].out_channels, features[-1].out_channels]
        blocks = []
        for out_channels in SSDLITE_EXTRAS:
            out_channels = max(16, int(out_channels * config.width))
            middle = out_channels // 2
            blocks.append(
                nn.Sequential(
                    _conv_bn_relu6(channels[-1], middle, 1),
                    _conv_bn_relu6(middle, middle, 3, stride=2, groups=middle),
                    _conv_bn_relu6(middle, out_channels, 1),
                )
            )
            channels.append(out_channels)
        model.extras = nn.ModuleList(blocks)
        return channels

    def reduced_tail(self, from_scratch: bool) -> bool:
        """torchvision's rule: ImageNet's MobileNetV3 has the full tail; from scratch, SSDLite takes the reduced one."""
        return from_scratch

    def base_state(self, model: SSD, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """torchvision's ImageNet ``mobilenet_v3_large`` keys (``features.{i}.*``) in ``model.base``'s cut: stage 0 is
        ``features[:c5]`` plus C5's expansion layer (``features.{c5}.block.0``), stage 1 the rest of C5's block and
        the layers after it. The classifier is dropped."""
        c5 = len(model.base[0]) - 1
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] != "features":
                continue  # classifier.*: ImageNet's head
            index, rest = int(parts[1]), parts[2:]
            if index < c5:
                out[".".join(["0", str(index), *rest])] = value
            elif index == c5 and rest[:2] == ["block", "0"]:
                out[".".join(["0", str(c5), *rest[2:]])] = value
            elif index == c5:  # block.{j}: the rest of C5's block keeps its indices inside stage 1's first module
                out[".".join(["1", "0", *rest[1:]])] = value
            else:
                out[".".join(["1", str(index - c5), *rest])] = value
        return out

    def head(self, in_channels: int, out_channels: int) -> nn.Module:
        return nn.Sequential(_conv_bn_relu6(in_channels, in_channels, 3, groups=in_channels),
                             nn.Conv2d(in_channels, out_channels, kernel_size=1))  # fmt: skip

    def reset_parameters(self, model: SSD) -> None:
        """torchvision's SSDLite from scratch: every convolution N(0, 0.03) with zero bias, BatchNorm at 1 and 0."""
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.03)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()


class ResNet50(StagedBackbone):
    """NVIDIA's ResNet-50 SSD300: conv1 to layer3 with layer3's first block at stride 1 (38x38, 1024 channels),
    then five extra blocks of 1x1 -> 3x3 convolutions with BatchNorm and ReLU."""

    name = "resnet50"
    sizes = (300,)
    base_weights = "weights/resnet50-0676ba61.pth"
    base_weights_source = (
        "put torchvision's ImageNet ResNet-50 weights there (resnet50-0676ba61.pth from download.pytorch.org; "
        "docs/backbones.md, 'Weights')"
    )
    base_description = "the ResNet-50 base (conv1 to layer3)"
    base_file_key = "layer1.0.conv1.weight"
    base_file_kind = "torchvision's ResNet-50"

    def base_state(self, model: SSD, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """torchvision's ``resnet50`` keys up to layer3, in ``model.base``'s one stage (layer4 and fc dropped)."""
        return {f"0.{k}": v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}

    def check(self, config: ModelConfig) -> None:
        super().check(config)
        if config.width != 1.0:
            raise ValueError(
                f"the resnet50 backbone is torchvision's ResNet-50 at width 1.0 only, got width {config.width}"
            )

    def build(self, model: SSD, config: ModelConfig) -> list[int]:
        resnet = torchvision.models.resnet50(weights=None)
        first = resnet.layer3[0]  # torchvision's Bottleneck (v1.5) strides in conv2 and in the shortcut
        first.conv2.stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
        model.base = nn.ModuleList([nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in names))])
        channels = [1024]
        blocks = []
        for middle, out_channels, stride, padding in RESNET_EXTRAS:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels[-1], middle, kernel_size=1, bias=False),
                    nn.BatchNorm2d(middle),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(middle, out_channels, kernel_size=3, stride=stride, padding=padding, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                )
            )
            channels.append(out_channels)
        model.extras = nn.ModuleList(blocks)
        return channels

    def reset_parameters(self, model: SSD) -> None:
        """The base as torchvision initialises ResNet (Kaiming normal, fan-out); extras and heads Xavier-uniform
        with zero bias, as NVIDIA's SSD300 does."""
        for module in model.base.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in [*model.extras.modules(), *model.loc.modules(), *model.conf.modules()]:
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()


BACKBONES: dict[str, Backbone] = {backbone.name: backbone for backbone in (VGG16(), MobileNetV3Large(), ResNet50())}
# Every input size some backbone is built for.
SIZES: tuple[int, ...] = tuple(sorted({size for backbone in BACKBONES.values() for size in backbone.sizes}))


def backbone_of(name: str) -> Backbone:
    """The :data:`BACKBONES` entry ``name``, or a ValueError listing them."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


class SSD(nn.Module):
    """Single Shot MultiBox Detector, of any backbone of :data:`BACKBONES`.

    Attributes:
        vgg, L2Norm (vgg16): the base network (ssd.pytorch's indices) and the scale of the conv4_3 source.
        base (other backbones): the base network's stages, each ending at a source layer.
        extras: the extra feature layers.
        loc, conf: one prediction head per source layer.
        priors (Tensor[P, 4]): cxcywh priors, a non-persistent buffer (follows ``.to(device)``, absent from
            the state_dict).
    """

    priors: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        backbone = backbone_of(config.backbone)
        backbone.check(config)
        if config.priors.image_size != config.size:
            raise ValueError(
                f"prior config is for {config.priors.image_size}x{config.priors.image_size} input "
                f"but the model is SSD{config.size}"
            )
        if config.num_classes < 2:
            raise ValueError(f"num_classes must count the background and at least one class, got {config.num_classes}")
        self.config = config
        self.num_classes = config.num_classes

        source_channels = backbone.build(self, config)
        boxes = config.priors.boxes_per_location
        if len(source_channels) != len(boxes):
            raise ValueError(
                f"SSD{config.size} ({config.backbone}) has {len(source_channels)} source layers but the prior config "
                f"describes {len(boxes)}"
            )
        self.loc = nn.ModuleList(backbone.head(c, n * 4) for c, n in zip(source_channels, boxes, strict=True))
        self.conf = nn.ModuleList(
            backbone.head(c, n * config.num_classes) for c, n in zip(source_channels, boxes, strict=True)
        )
        self.register_buffer("priors", prior_boxes(config.priors), persistent=False)
        self.reset_parameters()

    @property
    def backbone(self) -> Backbone:
        """How this network's feature layers are built and run (its :data:`BACKBONES` entry)."""
        return BACKBONES[self.config.backbone]

    def reset_parameters(self) -> None:
        """The backbone's from-scratch initialisation (:meth:`Backbone.reset_parameters`)."""
        self.backbone.reset_parameters(self)

    def sources(self, x: Tensor, taps: dict[str, Tensor] | None = None) -> list[Tensor]:
        """The feature maps the heads read (vgg16: conv4_3 L2-normalised, fc7 and the extras' outputs); ``taps``,
        when given, receives the backbone's other maps by name (:attr:`Backbone.tap_names`)."""
        return self.backbone.sources(self, x, taps)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run the network.

        Args:
            x (Tensor[B, 3, size, size]): the preprocessed image batch.

        Returns:
            loc_preds (Tensor[B, P, 4]): box regression offsets, to be decoded against ``self.priors``.
            conf_preds (Tensor[B, P, C]): class logits (no softmax).
        """
        return self.heads(self.sources(x))

    def heads(self, sources: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The loc and conf heads on the source feature maps of :meth:`sources` (``forward`` is
        ``heads(sources(x))``; domain adaptation reads the maps in between)."""
        loc_parts: list[Tensor] = []
        conf_parts: list[Tensor] = []
        for feature, loc_head, conf_head in zip(sources, self.loc, self.conf, strict=True):
            # [B, A*4, H, W] -> [B, H, W, A*4]: prior order is row, column, box shape (see prior_boxes).
            loc_parts.append(loc_head(feature).permute(0, 2, 3, 1).flatten(1))
            conf_parts.append(conf_head(feature).permute(0, 2, 3, 1).flatten(1))
        batch_size = sources[0].shape[0]
        loc_preds = torch.cat(loc_parts, dim=1).view(batch_size, -1, 4)  # [B, P, 4]
        conf_preds = torch.cat(conf_parts, dim=1).view(batch_size, -1, self.num_classes)  # [B, P, C]
        return loc_preds, conf_preds

    def source_channels(self) -> list[int]:
        """The channels of each source feature map, read from the heads' first convolutions."""
        return [next(m for m in head.modules() if isinstance(m, nn.Conv2d)).in_channels for head in self.loc]


def build_ssd(
    size: int | None = None,
    num_classes: int = 21,
    priors: str | PriorConfig | None = None,
    width: float = 1.0,
    batch_norm: bool = False,
    backbone: str = "vgg16",
    reduced_tail: bool = False,
) -> SSD:
    """Build an SSD.

    Args:
        size: input side; default the backbone's first (vgg16 and resnet50: 300; mobilenet_v3_large: 320).
        num_classes: C, including the background (VOC: 21, COCO: 81, Cityscapes: 9).
        priors: a prior family name (``PRIOR_FAMILIES`` in :mod:`layers.prior_box`) or an explicit
            :class:`PriorConfig`. Never inferred from ``num_classes``. Default: the backbone's design
            (mobilenet_v3_large: SSDLITE), else VOC.
        width: channel multiplier; 1.0 is the paper's network.
        batch_norm: vgg16: BatchNorm after every base/extra convolution.
        backbone: a key of :data:`BACKBONES`.
        reduced_tail: mobilenet_v3_large: the half-width last stage of torchvision's COCO SSDLite.

    ``build_ssd()`` is exactly ssd.pytorch's ``build_ssd('train', 300, 21)`` network.
    """
    design = backbone_of(backbone)
    size = design.sizes[0] if size is None else size
    design.check_size(size)  # before looking up the priors of that size
    priors = (design.prior_family or "VOC") if priors is None else priors
    prior_cfg = prior_config(priors, size) if isinstance(priors, str) else priors
    config = ModelConfig(size, num_classes, prior_cfg, width, batch_norm, backbone, reduced_tail)
    return SSD(config)
