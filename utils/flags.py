"""The flag groups: one name, one default and one help text per flag, each defined once here and added by every
script that takes it; and the functions that turn those flags into the library's typed settings."""

from __future__ import annotations

import argparse
import os

from data.config import DATASETS, DatasetPreset, get_preset
from layers.detection import DetectSettings
from ssd import EXTRAS
from utils.checkpoint import RawWeights
from utils.cli import NON_NEGATIVE_INT, POSITIVE_INT, PROBABILITY, add_verbose_flag, bounded
from utils.runs import DEVICE_FORMS

# --- flag groups ------------------------------------------------------------------------------------------
# Each flag is defined once, here; every script that takes it adds its group. add_hyphen_aliases() gives every
# underscore flag its hyphen spelling too (--batch_size and --batch-size).
DEFAULT_WEIGHTS = "weights/ssd300_mAP_77.43_v2.pth"
# Four loader processes, but never more than the machine has cores (PyTorch warns, and they only compete).
DEFAULT_NUM_WORKERS = min(4, os.cpu_count() or 1)
DATASET_NAMES = (*DATASETS, "Custom")


def _dataset_name(text: str) -> str:
    """``voc`` -> ``VOC``: dataset names are case-insensitive; unknown names fall through to argparse's choices."""
    return next((name for name in DATASET_NAMES if name.lower() == text.lower()), text)


def add_weights_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", "--trained_model", dest="weights", default=DEFAULT_WEIGHTS,
                        help="a checkpoint of this project or an ssd.pytorch state_dict (inference.py and eval.py: "
                             "also an exported .onnx or .pt2 file)")  # fmt: skip


def add_dataset_flags(parser: argparse.ArgumentParser, split: str, root_required: bool = False) -> None:
    """``--dataset``, ``--dataset_root``, ``--classes`` and ``--image_set`` (of the ``split`` split)."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", type=_dataset_name, choices=DATASET_NAMES, default="VOC",
                       help="the class set and folder layout (Custom: a VOC-format folder with --classes)")  # fmt: skip
    group.add_argument("--dataset_root", "--voc_root", dest="dataset_root", required=root_required, default=None,
                       help="VOCdevkit, COCO root or VOC-format folder")  # fmt: skip
    group.add_argument("--classes", default=None, help="class-names file (one per line), for Custom")
    group.add_argument("--image_set", default=None,
                       help=f"override the {split} split: e.g. 2007:{'test' if split == 'test' else 'trainval'} (VOC), "
                            f"{'val2017' if split == 'test' else 'train2017'} (COCO), a split file name (VOC format)")  # fmt: skip


def add_raw_weights_flags(parser: argparse.ArgumentParser) -> None:
    """What a raw ssd.pytorch state_dict is (this project's checkpoints describe themselves)."""
    parser.add_argument("--size", type=int, default=300, choices=sorted(EXTRAS),
                        help="input size of a raw ssd.pytorch state_dict")  # fmt: skip


def add_detect_flags(parser: argparse.ArgumentParser) -> None:
    """Detect's settings; each flag overrides the model's own (stored in its checkpoint, Caffe SSD's by default)."""
    group = parser.add_argument_group("detection (default: the model's own settings)")
    defaults = DetectSettings()
    group.add_argument("--conf_thresh", type=bounded(float, 0, 1, high_open=True), default=None,
                       help=f"score a candidate must exceed (default {defaults.conf_thresh})")  # fmt: skip
    group.add_argument(
        "--nms_thresh", type=PROBABILITY, default=None, help=f"NMS IoU threshold (default {defaults.nms_thresh})"
    )
    group.add_argument("--top_k", type=POSITIVE_INT, default=None,
                       help=f"candidates per class into NMS (default {defaults.top_k})")  # fmt: skip
    group.add_argument("--keep_top_k", type=NON_NEGATIVE_INT, default=None,
                       help=f"detections kept per image, 0 = all (default {defaults.keep_top_k})")  # fmt: skip


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_FORMS)
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: float16 on a GPU, bfloat16 on a CPU (fast on CPUs with bfloat16 "
                             "instructions; check the mAP it gives)")  # fmt: skip


def add_workers_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num_workers",
        type=NON_NEGATIVE_INT,
        default=DEFAULT_NUM_WORKERS,
        help=f"data-loading processes (default: 4, or the cores if fewer: {DEFAULT_NUM_WORKERS} here)",
    )


def add_run_flags(parser: argparse.ArgumentParser, project: str) -> None:
    """Where outputs go (``<project>/<name><N>``) and how much is logged."""
    parser.add_argument("--project", default=project, help="outputs go to <project>/<name><N>")
    parser.add_argument("--name", default="exp")
    add_verbose_flag(parser)


def dataset_preset(args: argparse.Namespace) -> DatasetPreset:
    return get_preset(args.dataset, args.classes)


def raw_weights(args: argparse.Namespace, preset: DatasetPreset) -> RawWeights:
    """What ``--size`` and ``--dataset`` say a raw state_dict is."""
    return RawWeights(args.size, preset.class_names, preset.prior_family)


def check_size_flag(args: argparse.Namespace, size: int) -> None:
    """Refuse a typed ``--size`` that a model of input ``size`` would ignore (it describes itself: ``--size`` only
    says what a raw state_dict is)."""
    if "size" in getattr(args, "typed_flags", frozenset()) and args.size != size:
        raise ValueError(f"{args.weights} is a {size}x{size} model and says so; --size {args.size} only describes raw "
                         "ssd.pytorch state_dicts: drop it")  # fmt: skip


def detect_settings(args: argparse.Namespace, base: DetectSettings) -> DetectSettings:
    """``base`` (the model's settings) with the detection flags that were given."""
    return base.override(args.conf_thresh, args.nms_thresh, args.top_k, args.keep_top_k)
