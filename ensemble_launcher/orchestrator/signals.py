"""SIGTERM, as batch systems send it before a job's end, unwinds a process like Ctrl-C."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class sigterm_interrupts:  # noqa: N801 - a context manager, named like contextlib's
    """Within the block, SIGTERM raises KeyboardInterrupt, so that tasks are stopped,
    runners reaped and results flushed on the way out."""

    def __enter__(self) -> None:
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
