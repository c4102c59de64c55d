"""What every command-line script shares: the flag groups (one name, one default and one help text per flag),
logging set-up, the memory allocator's and cuDNN's settings, and turning user errors into one line."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence

import torch

from data.config import DATASETS, DatasetPreset, get_preset
from layers.detection import DetectSettings
from ssd import EXTRAS
from utils.checkpoint import RawWeights
from utils.runs import DEVICE_FORMS

logger = logging.getLogger(__name__)

# Errors a user's input can cause (a bad flag, a missing or corrupt file). Library code raises these with a
# message naming the file or value; scripts print that message alone and exit with status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for library in ("matplotlib", "PIL"):  # --verbose is about this project's steps, not their font searches
        logging.getLogger(library).setLevel(logging.WARNING)


# glibc mallopt parameters (malloc.h) and the size below which freed memory stays in the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 1 GiB for reuse instead of returning them to the OS.

    PyTorch's CPU tensors come from malloc. By default glibc gives large blocks back to the OS when they are
    freed and maps fresh, zero-filled pages for the next ones, so every SSD300 forward page-faults thousands of
    times for its activations (README, "Performance"). The cost is that the process keeps its peak memory. Returns whether the settings took (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
        )
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def configure_torch() -> None:
    """The process-wide settings every script and benchmark starts with: :func:`keep_freed_memory`, and cuDNN's
    autotuner (``cudnn.benchmark``), which times the convolution algorithms once per input shape and keeps the
    fastest. That pays off here because every SSD input has one fixed size (300 or 512); it has no effect on a CPU."""
    keep_freed_memory()
    torch.backends.cudnn.benchmark = True


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` plus ``typed_flags``: the destinations of the flags the user typed.

    argparse cannot tell a typed value from a default one; scripts need to, to refuse a typed flag that would be
    ignored (train.py on ``--resume``) instead of dropping it silently.
    """
    args = parser.parse_args(argv)
    defaults = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in defaults:
            action.default = argparse.SUPPRESS
        typed, _ = parser.parse_known_args(argv)
    finally:
        for action, default in defaults:
            action.default = default
    args.typed_flags = frozenset(vars(typed))
    return args


def run_cli(
    main: Callable[[argparse.Namespace], int | None],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``main`` and map a user error to one ``error: ...`` line and exit status 2.

    Returns the exit status (``main``'s return value, 0 when it returns None); Ctrl-C gives 130.
    """
    args = parse_args(parser, argv)
    setup_logging(getattr(args, "verbose", False))
    configure_torch()
    try:
        status = main(args)
    except USER_ERRORS as error:
        message = (
            str(error)
            if not isinstance(error, OSError) or not error.filename
            else f"{error.filename}: {error.strerror}"
        )
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


# --- numeric flags -----------------------------------------------------------------------------------------
def bounded(
    kind: type[int] | type[float],
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], int | float]:
    """An argparse ``type`` that parses ``kind`` and refuses values outside ``[low, high]`` (``low_open``/
    ``high_open``: the bound itself is refused too), so a bad value stops the script before any work."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_low = low is not None and (value < low or (low_open and value == low))
        too_high = high is not None and (value > high or (high_open and value == high))
        if too_low or too_high:
            lower = "" if low is None else f"{low} <{'' if low_open else '='} "
            upper = "" if high is None else f" <{'' if high_open else '='} {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: need {lower}value{upper}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = bounded(int, 1)
NON_NEGATIVE_INT = bounded(int, 0)
POSITIVE_FLOAT = bounded(float, 0, low_open=True)
NON_NEGATIVE_FLOAT = bounded(float, 0)
PROBABILITY = bounded(float, 0, 1)


# --- flag groups ------------------------------------------------------------------------------------------
# Each flag is defined once, here; every script that takes it adds its group. add_hyphen_aliases() gives every
# underscore flag its hyphen spelling too (--batch_size and --batch-size).
DEFAULT_WEIGHTS = "weights/ssd300_mAP_77.43_v2.pth"
# Four loader processes, but never more than the machine has cores (PyTorch warns, and they only compete).
DEFAULT_NUM_WORKERS = min(4, os.cpu_count() or 1)
DATASET_NAMES = (*DATASETS, "Custom")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative None and False (a flag's help says what its absence means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def make_parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)


def add_hyphen_aliases(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Accept ``--a-b`` for every ``--a_b`` flag of ``parser`` (both spellings are common in users' scripts)."""
    for action in parser._actions:
        for option in list(action.option_strings):
            alias = option.replace("_", "-")
            if alias != option and alias not in parser._option_string_actions:
                action.option_strings.append(alias)
                parser._option_string_actions[alias] = action
    return parser


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


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="debug logging")


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
