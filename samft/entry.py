"""Running a command-line entry point: logging, user errors as one line, exit codes.

Below every command (train, evaluate, predict, export, the data tools): it imports only
:mod:`samft.errors`, so any command may use it without importing another command's modules.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from samft.errors import UserError


def is_main_process() -> bool:
    """False on the non-zero ranks of a torchrun job, which stay quiet."""
    return os.environ.get("RANK", "0") == "0"


def run_cli(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run ``main(argv)``; a :class:`~samft.errors.UserError` prints ``error: ...`` and returns 2.

    ``SAMFT_DEBUG=1`` re-raises it with its traceback instead.
    """
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        if os.environ.get("SAMFT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
