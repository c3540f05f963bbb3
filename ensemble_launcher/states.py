"""What a task can end as, and the records a finished task travels in.

Every layer reads these names, so they live here, below all of them. The records are
NamedTuples: they pickle and msgpack as plain tuples (arrays), so naming the fields costs
nothing on the wire; a receiver that gets a msgpack array back rebuilds the record with
``RunResult._make(row)``.

What a task used (``cpu_user``, ``cpu_system`` in seconds, ``max_rss`` in bytes) travels as
three plain fields, None when it was not measured (a task that never ran, resource
accounting off): three numbers cost less on the wire than a record of their own.
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


class Usage(NamedTuple):
    """What one task used: CPU seconds in user and system mode, and its peak resident set
    size in bytes (see ``executors.runner`` for what is measured for callables and
    commands)."""

    cpu_user: float | None
    cpu_system: float | None
    max_rss: int | None


UNMEASURED = Usage(None, None, None)


class RunResult(NamedTuple):
    """One attempt of a task, as its runner (or the ledger, for a task that never ran)
    reports it. ``value`` is the pickled return value of a callable, or the pickled
    exception it raised; ``stderr`` is the tail of its standard error; the last three
    fields are its :class:`Usage`, None when not measured."""

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
    cpu_user: float | None = None
    cpu_system: float | None = None
    max_rss: int | None = None


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
    cpu_user: float | None
    cpu_system: float | None
    max_rss: int | None
    host: str
    cpus: str
    gpus: str


def never_ran(state: str, reason: str, message: str, now: float) -> RunResult:
    """The result of a task that was not started: no process, no output."""
    return RunResult(-1, state, reason, None, None, None, message, None, None, "", now, now)


class NodeSample(NamedTuple):
    """What one node used at one moment, as its worker samples it every
    ``node_sample_interval`` seconds and the journal keeps it: ``at`` is ``time.time()``,
    ``node`` the tree name (``main.w0``), ``cpu_percent`` the whole node's CPU use since the
    previous sample (0-100), ``mem_used`` and ``mem_total`` bytes of memory."""

    at: float
    node: str
    host: str
    cpu_percent: float
    mem_used: int
    mem_total: int


class BlockRecord(NamedTuple):
    """One batch job of a provider run (a block) as the journal and ``el status`` show it:
    ``index`` counts blocks from 0 in submission order, ``job_id`` is the scheduler's
    (a pid for the local provider), ``state`` one of pending, running, completed, failed,
    cancelled; ``hosts`` the hosts its workers connected from, comma-separated; times are
    ``time.time()`` (None: not yet); ``message`` the scheduler's word when it ended badly."""

    index: int  # type: ignore[assignment]  # (shadows tuple.index, as users expect the name)
    job_id: str
    state: str
    nodes: int
    hosts: str
    submitted: float
    started: float | None
    ended: float | None
    message: str
