"""Bad-file handling shared by the reader, the index and the tools.

Every problem with a file the user controls becomes a :class:`DataError` naming the file and
the reason. With ``on_error="skip"`` the dataset logs it on the ``samft.data`` logger, counts
it and moves on; with ``on_error="raise"`` the error propagates, also out of DataLoader workers
with its message intact (see :class:`DataError`).
"""

from __future__ import annotations

import logging
import re
from samft.errors import UserError

log = logging.getLogger("samft.data")

ON_ERROR = ("skip", "raise")

# How torch's ExceptionWrapper re-creates an exception raised in a DataLoader worker:
# "Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last): ..."
_WORKER_PREFIX = re.compile(r"^Caught (\w+) in (DataLoader worker process \d+|[^.\n]*)\.\nOriginal Traceback")


class DataError(UserError, ValueError):
    """A dataset folder, file or setting that cannot be used; the message says which and why.

    When raised inside a DataLoader worker, torch re-raises it in the main process as
    ``DataError("Caught DataError in DataLoader worker process N. Original Traceback ...")``.
    The constructor recognises that form and keeps only the original one-paragraph message
    (plus where it happened), so command-line tools print a readable error, not a traceback.
    """

    def __init__(self, message: str = "") -> None:
        match = _WORKER_PREFIX.match(message) if isinstance(message, str) else None
        if match:
            marker = f"{match.group(1)}: "
            original = message.rsplit(marker, 1)[-1].strip() if marker in message else message
            message = f"{original} (raised in {match.group(2)})"
        super().__init__(message)


class BadFile(DataError):
    """One unusable file; ``path`` and ``reason`` are kept for logging and counting."""

    def __init__(self, path: object = "", reason: str = "") -> None:
        if not reason:  # re-created by torch from a worker's formatted message
            super().__init__(str(path))
            self.path, self.reason = "", str(self)
            return
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def check_on_error(on_error: str) -> str:
    """Validate an ``on_error`` setting.

    Args:
        on_error: ``"skip"`` (log, count and leave the file out) or ``"raise"``.

    Returns:
        ``on_error`` unchanged.
    """
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
    return on_error
