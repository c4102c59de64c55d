"""torchvision's SSD checkpoints as checkpoints of this project, and back.

    python -m utils.deploy.convert_torchvision --input ssd300_vgg16_coco-b556d3b4.pth --output weights/ssd300_vgg16_coco.pth
    python -m utils.deploy.convert_torchvision --input ssdlite320_mobilenet_v3_large_coco-a79551df.pth \\
        --output weights/ssdlite320_mobilenet_v3_large_coco.pth
    python -m utils.deploy.convert_torchvision --to torchvision --input runs/train/exp1/best.pth --output ssd_tv.pth

torchvision -> this project. The architecture is recognised from the state_dict's keys and shapes (never from the
file name): ``ssd300_vgg16``, or ``ssdlite320_mobilenet_v3_large`` with the reduced tail of torchvision's COCO
model or the full tail of one built on ImageNet's MobileNetV3. The tensors are copied unchanged under this
project's names (:func:`torchvision_key`). The checkpoint also carries torchvision's semantics, which eval.py and
inference.py apply from it, so that they give torchvision's detections on the same image files:

* preprocessing (``Preprocess(resize="torchvision")``): RGB in [0, 1], normalised by the model's ``image_mean``
  and ``image_std``, then bilinear ``F.interpolate`` to 300 or 320;
* Detect (``DetectSettings``): the model's test settings, boxes clipped to the image before NMS, the log-size
  offsets clamped at ``log(1000 / 16)`` (``BoxCoder``'s ``bbox_xform_clip``);
* classes: all the head's logits go through the softmax, as in torchvision. A COCO model has 91 outputs: class
  ``c`` (1..90) is COCO category id ``c``, ten ids of which name no category. This project's 0-based label of a
  detection is ``c - 1`` (``class_names[c - 1]``: COCO's names by id, ``unused_<id>`` for the ten), and eval.py
  scores such a model on COCO's 80 classes by name (``utils.checkpoint.match_classes``).

this project -> torchvision (``--to torchvision``): vgg16 SSD300 (width 1.0, no BatchNorm) and mobilenet_v3_large
SSDLite320 (width 1.0), the architectures torchvision has. The output is a plain state_dict for
``torchvision.models.detection.ssd300_vgg16`` / ``ssdlite320_mobilenet_v3_large``; the command prints how to build
the model with this checkpoint's preprocessing, test settings and priors, and writes the class names beside it.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from data.config import coco_names_by_id, read_class_names
from layers.detection import DetectSettings
from layers.prior_box import PriorConfig, prior_config
from ssd import BACKBONES, SSD, ModelConfig
from utils.checkpoint import (
    DetectorInfo,
    StateDict,
    atomic_save,
    extract_state_dict,
    load_detector,
    read_checkpoint,
    save_checkpoint,
)
from utils.cli import add_verbose_flag, make_parser, run_cli
from utils.transforms import Preprocess

logger = logging.getLogger(__name__)

# torchvision's BoxCoder clamps dw and dh at this before exp (bbox_xform_clip).
TORCHVISION_DECODE_CLAMP = math.log(1000.0 / 16)
# torchvision's VGG feature extractor: features[:23] ends with conv4_3's ReLU (index 23 is pool4); extra.0 holds
# features[23:30] (pool4 to conv5_3's ReLU) and then fc = (pool5, fc6, ReLU, fc7, ReLU) as its module 7. This
# project's vgg keeps torchvision's indices up to 29, then pool5 is 30, fc6 31 and fc7 33.
_VGG_POOL4, _VGG_POOL5 = 23, 30
_HEADS = {"loc": "head.regression_head.module_list", "conf": "head.classification_head.module_list"}


@dataclass(frozen=True)
class TorchvisionDesign:
    """One torchvision SSD builder and what its checkpoints mean.

    Args:
        builder: the ``torchvision.models.detection`` function.
        backbone, size, prior_family: the network here (``ssd.BACKBONES``, ``layers.prior_box.PRIOR_CONFIGS``).
        image_mean, image_std: torchvision's normalisation, RGB in [0, 1] units.
        settings: torchvision's test-time post-processing, as Detect settings.
        class_key: the head tensor whose output count is (boxes of the first source) x C.
    """

    builder: str
    backbone: str
    size: int
    prior_family: str
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    settings: DetectSettings
    class_key: str

    def config(self, num_classes: int, reduced_tail: bool = False) -> ModelConfig:
        priors = prior_config(self.prior_family, self.size)
        return ModelConfig(self.size, num_classes, priors, backbone=self.backbone, reduced_tail=reduced_tail)

    def preprocess(self) -> Preprocess:
        """torchvision's preprocessing in this project's units (BGR, 0-255)."""
        mean = tuple(v * 255.0 for v in reversed(self.image_mean))
        std = tuple(v * 255.0 for v in reversed(self.image_std))
        return Preprocess(mean, std, resize="torchvision")


_TORCHVISION_POSTPROCESS = {"clip_boxes": True, "decode_clamp": TORCHVISION_DECODE_CLAMP}
DESIGNS: dict[str, TorchvisionDesign] = {
    "ssd300_vgg16": TorchvisionDesign(
        "ssd300_vgg16", "vgg16", 300, "TORCHVISION", (0.48235, 0.45882, 0.40784), (1.0 / 255.0,) * 3,
        DetectSettings(0.01, 0.45, 400, 200, **_TORCHVISION_POSTPROCESS), f"{_HEADS['conf']}.0.weight",
    ),
    "ssdlite320_mobilenet_v3_large": TorchvisionDesign(
        "ssdlite320_mobilenet_v3_large", "mobilenet_v3_large", 320, "SSDLITE", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
        replace(BACKBONES["mobilenet_v3_large"].test_settings, **_TORCHVISION_POSTPROCESS), f"{_HEADS['conf']}.0.1.weight",
    ),
}  # fmt: skip
BUILDER_OF_BACKBONE = {design.backbone: design for design in DESIGNS.values()}


def torchvision_key(config: ModelConfig, key: str) -> str:
    """The torchvision state_dict key of this project's ``key``, for a vgg16 SSD300 or a mobilenet_v3_large SSDLite."""
    first, rest = key.split(".", 1)
    if first in _HEADS:
        return f"{_HEADS[first]}.{rest}"
    if config.backbone == "mobilenet_v3_large":
        return {"base": "backbone.features", "extras": "backbone.extra"}[first] + f".{rest}"
    if first == "L2Norm":
        return "backbone.scale_weight"
    index_text, rest = rest.split(".", 1)
    index = int(index_text)
    if first == "extras":  # (1x1, 3x3) pairs here; torchvision's extra blocks 1..4 with a ReLU between, at 0 and 2
        return f"backbone.extra.{index // 2 + 1}.{index % 2 * 2}.{rest}"
    if index < _VGG_POOL4:
        return f"backbone.features.{index}.{rest}"
    if index < _VGG_POOL5:
        return f"backbone.extra.0.{index - _VGG_POOL4}.{rest}"
    return f"backbone.extra.0.7.{index - _VGG_POOL5}.{rest}"


def _layout(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """torchvision key -> (shape, this project's key) of the network of ``config``, built on the meta device."""
    with torch.device("meta"):
        model = SSD(config)
    return {torchvision_key(config, k): (tuple(v.shape), k) for k, v in model.state_dict().items()}


def recognise(state: StateDict, source: str | Path = "<state_dict>") -> tuple[TorchvisionDesign, ModelConfig]:
    """The torchvision design and this project's config of a torchvision SSD state_dict, by its keys and shapes.

    Raises:
        ValueError: in one line, when the keys and shapes are exactly those of no supported torchvision SSD.
    """
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    for design in DESIGNS.values():
        if design.class_key not in shapes:
            continue
        boxes = prior_config(design.prior_family, design.size).boxes_per_location[0]
        num_classes, remainder = divmod(shapes[design.class_key][0], boxes)
        if remainder or num_classes < 2:
            continue
        for reduced_tail in (True, False) if BACKBONES[design.backbone].tail_option else (False,):
            config = design.config(num_classes, reduced_tail)
            if {key: shape for key, (shape, _) in _layout(config).items()} == shapes:
                return design, config
    if any(key.startswith(("vgg.", "base.", "L2Norm.")) for key in state):
        raise ValueError(f"{source} is already in this project's format; to go the other way pass --to torchvision")
    raise ValueError(
        f"{source} is not a state_dict of torchvision's {' or '.join(DESIGNS)} (its {len(shapes)} keys and shapes match "
        "neither, e.g. SSD512, another width or backbone, or another detector); nothing was written"
    )


def from_torchvision(
    state: StateDict, class_names: Sequence[str] | None = None, source: str | Path = "<state_dict>"
) -> tuple[SSD, DetectorInfo]:
    """A torchvision SSD state_dict as this project's network and :class:`DetectorInfo` (see the module docstring).

    Args:
        class_names: the C - 1 classes after the background; default: COCO's by category id for a 91-output
            head, else ``class_1`` ... .
    """
    design, config = recognise(state, source)
    num_foreground = config.num_classes - 1
    if class_names is None:
        class_names = (
            coco_names_by_id() if num_foreground == 90 else tuple(f"class_{i}" for i in range(1, num_foreground + 1))
        )
    if len(class_names) != num_foreground:
        raise ValueError(
            f"{source} has {num_foreground} classes after the background but {len(class_names)} names were given"
        )
    model = SSD(config)
    model.load_state_dict({key: state[tv_key] for tv_key, (_, key) in _layout(config).items()}, strict=True)
    info = DetectorInfo(config, tuple(class_names), design.preprocess(), design.settings)
    return model.eval(), info


def _torchvision_scales(priors: PriorConfig) -> list[float]:
    """DefaultBoxGenerator's ``scales`` for ``priors``: each layer's min size, then the last max size, relative."""
    if any(priors.max_sizes[k] != priors.min_sizes[k + 1] for k in range(len(priors.min_sizes) - 1)):
        raise ValueError(
            "these priors have a max size that is not the next layer's min size, which torchvision's "
            "DefaultBoxGenerator cannot express"
        )
    return [size / priors.image_size for size in (*priors.min_sizes, priors.max_sizes[-1])]


def to_torchvision(model: SSD, info: DetectorInfo, source: str | Path = "<model>") -> tuple[StateDict, str, list[str]]:
    """This project's SSD as a torchvision state_dict, the Python that builds the torchvision model for it (with this
    checkpoint's preprocessing, test settings and priors), and notes on what torchvision will do differently.

    Raises:
        ValueError: torchvision has no such architecture (resnet50, SSD512, other widths, BatchNorm VGG), or its
            ``DefaultBoxGenerator`` cannot express the priors.
    """
    config = model.config
    design = BUILDER_OF_BACKBONE.get(config.backbone)
    if design is None or config.size != design.size or config.width != 1.0 or config.batch_norm:
        raise ValueError(
            f"{source} is a {config.backbone} SSD{config.size} (width {config.width:g}"
            f"{', BatchNorm' if config.batch_norm else ''}); torchvision has only ssd300_vgg16 (vgg16, 300, width 1, "
            "no BatchNorm) and ssdlite320_mobilenet_v3_large (mobilenet_v3_large, 320, width 1)"
        )
    state = {torchvision_key(config, key): value.detach().clone() for key, value in model.state_dict().items()}
    preprocess, settings = info.preprocess, info.postprocess
    mean = [round(v / 255.0, 8) for v in reversed(preprocess.mean)]
    std = [round(v / 255.0, 8) for v in reversed(preprocess.std or (1.0, 1.0, 1.0))]
    keep = settings.keep_top_k or settings.top_k * (config.num_classes - 1)
    # torchvision's SSDLite builder makes the full tail only with ImageNet backbone weights (which it downloads, and
    # which the state_dict then overwrites); without them it makes the reduced tail.
    full_tail = design.backbone == "mobilenet_v3_large" and not config.reduced_tail
    arguments = (
        f"weights=None, weights_backbone={'MobileNet_V3_Large_Weights.IMAGENET1K_V1' if full_tail else None}, "
        f"num_classes={config.num_classes}, image_mean={mean}, image_std={std}, score_thresh={settings.conf_thresh}, "
        f"nms_thresh={settings.nms_thresh}, topk_candidates={settings.top_k}, detections_per_img={keep}"
    )
    code = f"model = torchvision.models.detection.{design.builder}({arguments})"
    notes = []
    priors = config.priors
    if priors != prior_config(design.prior_family, design.size):
        scales = [round(s, 8) for s in _torchvision_scales(priors)]
        ratios = [list(r) for r in priors.aspect_ratios]
        steps = None if priors.steps is None else list(priors.steps)
        code += (
            "; model.anchor_generator = torchvision.models.detection.anchor_utils.DefaultBoxGenerator("
            f"{ratios}, scales={scales}, steps={steps})"
        )
        outside = sum(
            int(((torch.arange(f) + 0.5) / priors.grid_pitch(k) > 1).sum()) for k, f in enumerate(priors.feature_maps)
        )
        if priors.clip and priors.clip_centres and outside:
            notes.append(
                "torchvision's DefaultBoxGenerator does not clip prior centres: the priors of the grid rows and columns "
                "whose centre lies outside the image (the 10x10 map's last ones at SSD300) sit up to 4 px further out "
                "there, so detections from them differ slightly; train with --priors TORCHVISION for an exact match"
            )
    if not (preprocess.resize == "torchvision" and settings.clip_boxes and settings.decode_clamp is not None):
        notes.append(
            "torchvision resizes with F.interpolate after normalising, clips boxes before NMS and clamps dw/dh at "
            "log(1000/16); this checkpoint's own pipeline does not do all of that, so its detections differ slightly"
        )
    code += "; model.load_state_dict(torch.load(<output>, weights_only=True))"
    return state, code, notes


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser("Convert torchvision's SSD checkpoints to this project's format, or back (--to torchvision).")
    parser.add_argument("--input", required=True, help="a torchvision SSD state_dict (or, with --to torchvision, a checkpoint of this project)")  # fmt: skip
    parser.add_argument("--output", required=True, help="where to write the converted file")
    parser.add_argument("--to", choices=("project", "torchvision"), default="project",
                        help="project: torchvision -> this project's checkpoint; torchvision: the other way")  # fmt: skip
    parser.add_argument("--classes", default=None,
                        help="class-names file for a torchvision model not trained on COCO (default class_1, ...)")  # fmt: skip
    add_verbose_flag(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if args.to == "torchvision":
        model, info = load_detector(args.input)
        state, code, notes = to_torchvision(model, info, args.input)
        atomic_save(state, output)
        names = output.with_suffix(".classes.txt")
        names.write_text("".join(f"{name}\n" for name in info.class_names))
        print(f"wrote {output} ({len(state)} tensors) and {names} (torchvision label c is line c); build it with")
        print(f"  {code}")
        for note in notes:
            print(f"note: {note}")
        return 0
    checkpoint = read_checkpoint(args.input)
    if "model_config" in checkpoint:
        raise ValueError(
            f"{args.input} is already a checkpoint of this project; to go the other way pass --to torchvision"
        )
    state = extract_state_dict(checkpoint, args.input)
    class_names = read_class_names(args.classes) if args.classes else None
    model, info = from_torchvision(state, class_names, args.input)
    save_checkpoint(output, model, info)
    design = BUILDER_OF_BACKBONE[info.config.backbone]
    tail = " (reduced tail)" if info.config.reduced_tail else ""
    print(f"wrote {output}: torchvision's {design.builder}{tail}, {info.num_classes} outputs, with its preprocessing "
          "and test settings; use it with --weights")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
