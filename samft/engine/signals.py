"""Preemption: SIGTERM/SIGINT ask the loop to stop after the current step instead of dying mid-write."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopSignals:
    """Context manager that records SIGTERM/SIGINT instead of raising, then restores the old handlers.

    A second SIGINT while a stop is pending raises KeyboardInterrupt, so a user can still force quit.
    Outside the main thread (where handlers cannot be installed) it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
