"""What a task can end as, and the records a finished task travels in.

Every layer reads these names, so they live here, below all of them. The records are
NamedTuples: they pickle and msgpack as plain tuples (arrays), so naming the fields costs
nothing on the wire; a receiver that gets a msgpack array back rebuilds the record with
``RunResult._make(row)``.
"""

from __future__ import annotations

from typing import NamedTuple

SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
LOST = "lost"
"""Lost with its node or its runner; runs again under ``node_loss_retries``."""
NOT_RUN = "not_run"
"""Not let finish (the run stopped, the walltime); resume runs it."""
CANCELLED = "cancelled"
"""Cancelled by a client of a cluster; it never runs again."""

FINAL_STATES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, LOST, NOT_RUN, CANCELLED})


class RunResult(NamedTuple):
    """One attempt of a task, as its runner (or the ledger, for a task that never ran)
    reports it. ``value`` is the pickled return value of a callable, or the pickled
    exception it raised; ``stderr`` is the tail of its standard error."""

    key: int
    state: str
    reason: str | None
    returncode: int | None
    signal: int | None
    value: bytes | None
    exception: str | None
    traceback: str | None
    stdout: str | None
    stderr: str
    start: float
    end: float


class ResultRow(NamedTuple):
    """A :class:`RunResult` on its way up the tree, with where it ran."""

    key: int
    state: str
    reason: str | None
    returncode: int | None
    signal: int | None
    value: bytes | None
    exception: str | None
    traceback: str | None
    stdout: str | None
    stderr: str
    start: float
    end: float
    host: str
    cpus: str
    gpus: str


def never_ran(state: str, reason: str, message: str, now: float) -> RunResult:
    """The result of a task that was not started: no process, no output."""
    return RunResult(-1, state, reason, None, None, None, message, None, None, "", now, now)
