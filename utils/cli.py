"""What every command-line script shares: logging set-up, the memory allocator's and cuDNN's settings and turning
user errors into one line."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
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


# glibc mallopt parameters (malloc.h) and the size below which freed memory stays in the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 1 GiB for reuse instead of returning them to the OS.

    PyTorch's CPU tensors come from malloc. By default glibc gives large blocks back to the OS when they are
    freed and maps fresh, zero-filled pages for the next ones, so every SSD300 forward page-faults ~10,000
    times for its activations: 15% of its time on this project's VM (python benchmarks/bench_forward.py).
    The cost is that the process keeps its peak memory. Returns whether the settings took (glibc only).
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


def run_cli(
    main: Callable[[argparse.Namespace], int | None],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``main`` and map a user error to one ``error: ...`` line and exit status 2.

    Returns the exit status (``main``'s return value, 0 when it returns None); Ctrl-C gives 130.
    """
    args = parser.parse_args(argv)
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
