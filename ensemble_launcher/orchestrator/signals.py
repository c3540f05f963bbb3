"""How the root reacts to SIGTERM and SIGINT, the way batch systems warn before a job ends.

The first signal asks for a graceful shutdown: dispatch stops, running tasks get
``grace`` seconds to finish, the rest is recorded as not run. A second signal, or the end
of the grace period, cancels at once (KeyboardInterrupt unwinds: tasks are stopped,
runners reaped, the journal flushed). Child processes use :class:`left_to_parent`: a batch
system signals every process of the job at walltime, and a child that died of it would
lose its running tasks; its parent drains it (Halt, then Stop), and a child whose parent
is gone stops by itself. A parent that cannot wait longer for a child (one that ignored
Stop, or was declared lost) sends its process group the runners' cancel signal, on which
the child and its runners stop their commands and exit, before SIGKILL.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from ensemble_launcher.executors.runner import CANCEL_SIGNAL
from ensemble_launcher.states import FAILED, NOT_RUN, RunResult


class GraceExpired(KeyboardInterrupt):
    """The grace period of a graceful shutdown ran out."""


class GracefulShutdown:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.requested_at: float | None = None
        self.signal_name = ""
        self.by_request = False
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

    def request(self, reason: str) -> None:
        """Stop as on a signal, but on purpose (a rule's ``terminate``): the run then ends
        normally, and ``by_request`` says so."""
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            self.signal_name = reason
            self.by_request = True

    def check(self) -> None:
        """Raise GraceExpired once the grace period of a requested shutdown is over."""
        if self.requested_at is not None and time.monotonic() > self.requested_at + self.grace:
            raise GraceExpired(f"the {self.grace:g} s grace period after {self.signal_name} "
                               "ran out")


class Cancelled(KeyboardInterrupt):
    """Our parent sent the cancel signal: stop every task now and exit."""


class left_to_parent:  # noqa: N801 - a context manager, named like contextlib's
    """Within the block, SIGTERM and SIGINT are logged and otherwise ignored: the parent
    of the tree drives our shutdown. Its cancel signal (the runners' own) raises
    Cancelled, which unwinds like an interrupt: the pool cancels its runners, a
    sub-master stops its children."""

    def __enter__(self) -> None:
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, _note_signal)
            self._previous[CANCEL_SIGNAL] = signal.signal(CANCEL_SIGNAL, _cancel)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


#: The signals that stop a run (Slurm signals every process of the job at walltime), and
#: a shell's exit status for them.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
STOP_EXIT_CODES = frozenset(128 + s for s in STOP_SIGNALS)
_stop_signal_seen = False


def stop_signal_seen() -> bool:
    """Whether this child of the tree was sent a stop signal (its parent then drains it)."""
    return _stop_signal_seen


def died_of_stop_signal(result: RunResult) -> bool:
    """Whether a task failed because a stop signal killed it (or its shell said so)."""
    if result.state != FAILED:
        return False
    return (result.reason == "signal" and result.signal in STOP_SIGNALS) or \
        (result.reason == "exit_code" and result.returncode in STOP_EXIT_CODES)


def interrupted(result: RunResult) -> RunResult:
    """``result`` of a task the stopping run did not let finish, recorded as not run (and
    run by a resume or a restart)."""
    return result._replace(state=NOT_RUN, reason="interrupted", value=None,
                           exception=f"not run to its end: the run was stopping "
                                     f"({result.exception})", traceback=None)


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """A stop signal for the whole job reached a child: its tasks that die of it were not
    let finish, whether or not the root has seen its own signal yet."""
    global _stop_signal_seen
    _stop_signal_seen = True
    logging.getLogger("ensemble_launcher").info(
        "%s ignored: our parent stops us", signal.Signals(signum).name)


def _cancel(signum: int, frame: FrameType | None) -> None:
    raise Cancelled("cancelled by our parent")
