"""What every command-line script shares: logging set-up and turning user errors into one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

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
