"""How the root reacts to SIGTERM and SIGINT, the way batch systems warn before a job ends.

The first signal asks for a graceful shutdown: dispatch stops, running tasks get
``grace`` seconds to finish, the rest is recorded as not run. A second signal, or the end
of the grace period, cancels at once (KeyboardInterrupt unwinds: tasks are stopped,
runners reaped, the journal flushed). Child processes use :class:`sigterm_interrupts`:
their parent decides, so SIGTERM simply unwinds them.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any


class GraceExpired(KeyboardInterrupt):
    """The grace period of a graceful shutdown ran out."""


class GracefulShutdown:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.requested_at: float | None = None
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulShutdown:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested_at is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.requested_at = time.monotonic()
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def check(self) -> None:
        """Raise GraceExpired once the grace period of a requested shutdown is over."""
        if self.requested_at is not None and time.monotonic() > self.requested_at + self.grace:
            raise GraceExpired(f"the {self.grace:g} s grace period after {self.signal_name} "
                               "ran out")


class sigterm_interrupts:  # noqa: N801 - a context manager, named like contextlib's
    """Within the block, SIGTERM raises KeyboardInterrupt."""

    def __enter__(self) -> None:
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
