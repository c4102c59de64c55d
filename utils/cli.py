"""What every command-line tool shares, below the project's own modules: the parser and its numeric flag types,
logging set-up, the memory allocator's and cuDNN's settings, and turning user errors into one line.

A leaf: it imports nothing of the project, so data/'s command-line tools use it without loading the model stack.
The flag groups that name the project's concepts (datasets, weights, Detect's settings) live in utils/flags.py."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import math
import sys
from collections.abc import Callable, Sequence

import torch

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
    freed and maps fresh, zero-filled pages for the next ones, so every SSD300 forward page-faults on its
    activations again (what that costs: docs/performance.md, "Performance"). The price is that the process keeps
    its peak memory. Returns whether the settings took (glibc only).
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


# --- the parser -------------------------------------------------------------------------------------------
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


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="debug logging")
