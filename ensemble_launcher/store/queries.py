"""Read-only questions about a run's journal, for ``el status``, ``el report`` and the
trace: counts, the time span, the rows of the attempts that ran, the firings of the
event rules, and the blocks (batch jobs) of a provider run and which of them ran a task.

The journal's schema is :mod:`ensemble_launcher.store.journal`'s; the monitor asks here
instead of running SQL of its own, so that a change of the schema has one place to go.
Every reader opens the journal through :func:`~ensemble_launcher.store.journal.
reading_journal`, which checks the file first and creates nothing beside it, and every
SQLite failure is a StoreError that names the file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ensemble_launcher.errors import StoreError
from ensemble_launcher.states import BlockRecord, NodeSample
from ensemble_launcher.store.journal import (
    BLOCK_COLUMNS,
    JOURNAL_NAME,
    meta_of,
    reading_journal,
    result_columns,
)
from ensemble_launcher.store.result import TaskResult

__all__ = ["JOURNAL_NAME", "BlockRecord", "BusyPeriod", "EnsembleCount", "EnsembleSpan",
           "Firing", "JournalReader", "NodeSample", "Ran", "Span", "UsageSummary", "block_at",
           "block_of", "blocks", "firings", "node_samples", "read_journal", "recent_firings",
           "usage_summary"]

_T = TypeVar("_T")
_RAN_COLUMNS = ("task_id, ensemble, attempt, state, reason, start_time, end_time, host, "
                "cpus, gpus")


class EnsembleCount(NamedTuple):
    """How many final results of one ensemble are in one state."""

    ensemble: str | None
    state: str
    number: int


class Span(NamedTuple):
    """When the tasks that ran started first and ended last, and how many they were."""

    first_start: float | None
    last_end: float | None
    number: int


class Ran(NamedTuple):
    """One attempt that ran (a final result or an earlier attempt, never ``not_run``)."""

    task_id: str
    ensemble: str | None
    attempt: int
    state: str
    reason: str | None
    start_time: float
    end_time: float
    host: str | None
    cpus: str | None
    gpus: str | None


class EnsembleSpan(NamedTuple):
    """When the tasks of one ensemble that ran started first and ended last, and how many
    they were (their rate: ``number / (last_end - first_start)``)."""

    ensemble: str | None
    first_start: float | None
    last_end: float | None
    number: int


class BusyPeriod(NamedTuple):
    """When a final result that ran kept its cores busy, and where; ``seq`` orders the
    journal's rows, so that a live reader asks only for the rows after the last it saw."""

    seq: int
    host: str | None
    start_time: float
    end_time: float
    cores: int


class UsageSummary(NamedTuple):
    """What the tasks of one ensemble used, over its final results that ran and were
    measured (``measured`` of them): the mean and the largest peak RSS (bytes), their CPU
    seconds (user + system), the seconds times cores they held (``cores``: the CPU ids of
    their placement, one when none were recorded), and the CPU efficiency, the one divided
    by the other (1.0: every core busy all the time; None when they held none)."""

    ensemble: str | None
    measured: int
    mean_max_rss: float | None
    max_max_rss: int | None
    cpu_seconds: float
    core_seconds: float
    cpu_efficiency: float | None


#: Cores a row's placement held: its CPU ids, one when none were recorded.
_CORES = "(CASE WHEN cpus IS NULL OR cpus = '' THEN 1 ELSE " \
    "length(cpus) - length(replace(cpus, ',', '')) + 1 END)"


class Firing(NamedTuple):
    """One firing of an event rule: when (``time.time()``), the rule's label, its trigger,
    the action it took and what that did."""

    at: float
    rule: str
    trigger: str
    action: str
    detail: str


class JournalReader:
    """Questions to one checked, read-only connection (see :func:`read_journal`)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    def meta(self) -> dict[str, Any]:
        return meta_of(self._conn, self.path)

    def counts(self) -> list[EnsembleCount]:
        """Final results per ensemble and state."""
        return [EnsembleCount._make(row) for row in self._all(
            "SELECT ensemble, state, COUNT(*) FROM results GROUP BY ensemble, state")]

    def state_counts(self) -> dict[str, int]:
        """Final results per state."""
        return dict(self._all("SELECT state, COUNT(*) FROM results GROUP BY state"))

    def failure_reasons(self) -> dict[str | None, int]:
        """Final results that failed (neither succeeded nor not run), per reason."""
        return dict(self._all(
            "SELECT reason, COUNT(*) FROM results WHERE state NOT IN ('succeeded', 'not_run') "
            "GROUP BY reason"))

    def span(self) -> Span:
        """The span of the final results that ran."""
        return Span._make(self._all("SELECT MIN(start_time), MAX(end_time), COUNT(*) FROM "
                                    "results WHERE state != 'not_run'")[0])

    def first_start(self) -> float | None:
        """The earliest start of any row, final or earlier attempt."""
        return self._all("SELECT MIN(start_time) FROM (SELECT start_time FROM results "
                         "UNION ALL SELECT start_time FROM attempts)")[0][0]

    def ran(self, *, attempts: bool = False) -> Iterator[Ran]:
        """The final results that ran, in the journal's order; with ``attempts``, then
        every earlier attempt that ran."""
        query = f"SELECT {_RAN_COLUMNS} FROM results WHERE state != 'not_run'"
        if attempts:
            query += f" UNION ALL SELECT {_RAN_COLUMNS} FROM attempts WHERE state != 'not_run'"
        try:
            for row in self._conn.execute(query):
                yield Ran._make(row)
        except sqlite3.Error as exc:
            raise self._unreadable(exc) from exc

    def ensemble_spans(self) -> list[EnsembleSpan]:
        """The span of each ensemble's final results that ran."""
        return [EnsembleSpan._make(row) for row in self._all(
            "SELECT ensemble, MIN(start_time), MAX(end_time), COUNT(*) FROM results "
            "WHERE state != 'not_run' GROUP BY ensemble")]

    def busy_periods(self, after_seq: int = 0) -> list[BusyPeriod]:
        """The final results that ran, journaled after row ``after_seq``, in journal order:
        when and where they held how many cores (one when none were recorded)."""
        rows = self._all("SELECT seq, host, start_time, end_time, cpus FROM results WHERE "
                         "seq > ? AND state != 'not_run' AND start_time IS NOT NULL AND "
                         "end_time IS NOT NULL ORDER BY seq", (after_seq,))
        return [BusyPeriod(seq, host, start, end, cpus.count(",") + 1 if cpus else 1)
                for seq, host, start, end, cpus in rows]

    def failed_results(self, limit: int) -> list[TaskResult]:
        """The ``limit`` latest final results that failed (neither succeeded, nor not run,
        nor cancelled), newest first."""
        return self._results("WHERE state NOT IN ('succeeded', 'not_run', 'cancelled') "
                             "ORDER BY seq DESC LIMIT ?", (max(0, limit),))

    def slowest_results(self, limit: int) -> list[TaskResult]:
        """The ``limit`` final results that ran longest, longest first."""
        return self._results("WHERE state != 'not_run' AND end_time IS NOT NULL ORDER BY "
                             "end_time - start_time DESC LIMIT ?", (max(0, limit),))

    def largest_results(self, limit: int) -> list[TaskResult]:
        """The ``limit`` final results of the largest peak RSS, largest first; none from a
        journal that does not record it."""
        if not self._has_column("results", "max_rss"):
            return []
        return self._results("WHERE max_rss IS NOT NULL ORDER BY max_rss DESC LIMIT ?",
                             (max(0, limit),))

    def results_matching(self, text: str, limit: int) -> list[TaskResult]:
        """At most ``limit`` final results whose task id holds ``text`` (any case), the one
        whose id it is first, then in journal order."""
        return self._results("WHERE task_id LIKE ? ESCAPE '\\' ORDER BY task_id != ?, seq "
                             "LIMIT ?", (_containing(text), text, max(0, limit)))

    def firings(self, limit: int | None = None) -> list[Firing]:
        """The rule firings, newest last: all, or the ``limit`` most recent. A journal
        written before we journaled firings has none."""
        if not self._has_table("firings"):
            return []
        query = "SELECT at, rule, trigger, action, COALESCE(detail, '') FROM firings"
        if limit is None:
            return [Firing._make(row) for row in self._all(f"{query} ORDER BY seq")]
        rows = self._all(f"{query} ORDER BY seq DESC LIMIT ?", (max(0, limit),))
        return [Firing._make(row) for row in reversed(rows)]

    def firing_count(self) -> int:
        if not self._has_table("firings"):
            return 0
        return self._all("SELECT COUNT(*) FROM firings")[0][0]

    def node_samples(self, since: float | None = None) -> list[NodeSample]:
        """The samples of the nodes' CPU and memory use, oldest first: all, or those taken
        after ``since`` (``time.time()``). A journal written before we sampled nodes has
        none. A sample reaches the journal a tick or two after its node took it, and nodes'
        clocks differ a little, so a live reader asks from a second or so before the last
        ``at`` it saw and drops the (node, at) pairs it has."""
        if not self._has_table("node_samples"):
            return []
        query = "SELECT at, node, host, cpu_percent, mem_used, mem_total FROM node_samples"
        rows = self._all(f"{query} ORDER BY at") if since is None else \
            self._all(f"{query} WHERE at > ? ORDER BY at", (since,))
        return [NodeSample._make(row) for row in rows]

    def blocks(self, limit: int | None = None) -> list[BlockRecord]:
        """The blocks (batch jobs) of a provider run, each as last recorded, in index
        order: all, or the ``limit`` last. A run without a provider, or a journal written
        before we journaled blocks, has none."""
        if not self._has_table("blocks"):
            return []
        query = f'SELECT {BLOCK_COLUMNS} FROM blocks'
        if limit is None:
            return [BlockRecord._make(row) for row in self._all(f'{query} ORDER BY "index"')]
        rows = self._all(f'{query} ORDER BY "index" DESC LIMIT ?', (max(0, limit),))
        return [BlockRecord._make(row) for row in reversed(rows)]

    def block_states(self) -> dict[str, int]:
        """How many blocks are in each state (none without a provider)."""
        if not self._has_table("blocks"):
            return {}
        return dict(self._all("SELECT state, COUNT(*) FROM blocks GROUP BY state"))

    def block_of(self, task_id: str) -> BlockRecord | None:
        """The block that ran the final attempt of ``task_id`` (see :func:`block_at`);
        None for a run without blocks, or a task without a final result that ran."""
        if not self._has_table("blocks"):
            return None
        row = self._all("SELECT host, start_time FROM results WHERE task_id = ? AND "
                        "state != 'not_run'", (task_id,))
        if not row or not row[0][0] or row[0][1] is None:
            return None
        host, start = row[0]
        on_host = self._all(f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE "
                            "instr(',' || hosts || ',', ',' || ? || ',') > 0", (host,))
        return block_at(map(BlockRecord._make, on_host), host, start)

    def usage(self) -> list[UsageSummary]:
        """What each ensemble's tasks used (see :class:`UsageSummary`), by ensemble name;
        none from a journal that does not record it, or when nothing was measured."""
        if not self._has_column("results", "cpu_user"):
            return []
        rows = self._all(
            "SELECT ensemble, COUNT(*), AVG(max_rss), MAX(max_rss), "
            "TOTAL(cpu_user + cpu_system), "
            f"TOTAL(MAX(0.0, end_time - start_time) * {_CORES}) FROM results "
            "WHERE state != 'not_run' AND cpu_user IS NOT NULL AND cpu_system IS NOT NULL "
            "GROUP BY ensemble ORDER BY ensemble")
        return [UsageSummary(ensemble, n, mean_rss, max_rss, cpu, held,
                             cpu / held if held > 0 else None)
                for ensemble, n, mean_rss, max_rss, cpu, held in rows]

    def _results(self, where: str, parameters: tuple) -> list[TaskResult]:
        try:
            columns = result_columns(self._conn)
        except sqlite3.Error as exc:
            raise self._unreadable(exc) from exc
        return [TaskResult.from_row(row) for row in self._all(
            f"SELECT {columns} FROM results {where}", parameters)]

    def _has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self._all(f"PRAGMA table_info({table})"))

    def _has_table(self, name: str) -> bool:
        return bool(self._all("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (name,)))

    def _all(self, query: str, parameters: tuple = ()) -> list[tuple]:
        try:
            return self._conn.execute(query, parameters).fetchall()
        except sqlite3.Error as exc:
            raise self._unreadable(exc) from exc

    def _unreadable(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"cannot read {self.path}: {exc}")


@contextmanager
def read_journal(run_dir: str | os.PathLike, *, read_all: bool = False) \
        -> Iterator[JournalReader]:
    """A reader of ``run_dir``'s journal once it passed the journal's checks (with
    ``read_all``, every table read through), closed on exit."""
    with reading_journal(run_dir, read_all=read_all) as (path, conn):
        yield JournalReader(path, conn)


def firings(source: str | os.PathLike | sqlite3.Connection,
            limit: int | None = None) -> list[Firing]:
    """The rule firings of a run, newest last (all, or the ``limit`` most recent), from its
    run directory (checked, read-only) or from an open connection to its journal."""
    return _ask(source, lambda journal: journal.firings(limit))


def recent_firings(run_dir: str | os.PathLike, limit: int = 20) -> list[Firing]:
    """The ``limit`` most recent rule firings of a run, newest last."""
    return firings(run_dir, limit)


def node_samples(source: str | os.PathLike | sqlite3.Connection,
                 since: float | None = None) -> list[NodeSample]:
    """The samples of a run's nodes' CPU and memory use, oldest first (all, or those taken
    after ``since``), from its run directory (checked, read-only) or from an open
    connection to its journal."""
    return _ask(source, lambda journal: journal.node_samples(since))


def blocks(source: str | os.PathLike | sqlite3.Connection,
           limit: int | None = None) -> list[BlockRecord]:
    """The blocks of a provider run, each as last recorded, in index order (all, or the
    ``limit`` last), from its run directory (checked, read-only) or from an open connection
    to its journal; none for a run without a provider."""
    return _ask(source, lambda journal: journal.blocks(limit))


def block_of(source: str | os.PathLike | sqlite3.Connection,
             task_id: str) -> BlockRecord | None:
    """The block that ran the final attempt of ``task_id``, from a run directory or an open
    connection to its journal: None for a run without blocks, or for a task that did not
    run. (``Results.block_of`` asks the same of a run's results.)"""
    return _ask(source, lambda journal: journal.block_of(task_id))


def block_at(records: Iterable[BlockRecord], host: str | None, at: float | None,
             now: float | None = None) -> BlockRecord | None:
    """Which of ``records`` ran what started on ``host`` at ``at`` (``time.time()``): we
    journal the blocks, not a block per result, since blocks are exclusive: a host is in
    at most one block at a time, so the block is the one on that host whose span
    [started, ended or ``now``] holds ``at``. The times come from two clocks (the root's
    for the blocks, the node's for the task) and from a scheduler polled now and then, so
    when no span holds ``at`` the block on that host whose span is nearest is taken; when
    two spans hold it (the end of one noticed late), the later block. None when no block
    of ``records`` had that host (a run without blocks)."""
    if not host or at is None:
        return None
    end_now = time.time() if now is None else now
    best: tuple[float, float] | None = None
    chosen = None
    for record in records:
        if record.started is None or host not in record.hosts.split(","):
            continue
        ended = record.ended if record.ended is not None else max(end_now, record.started)
        distance = max(record.started - at, at - ended, 0.0)
        rank = (distance, -record.started)
        if best is None or rank < best:
            best, chosen = rank, record
    return chosen


def usage_summary(source: str | os.PathLike | sqlite3.Connection) -> list[UsageSummary]:
    """What each ensemble's tasks used (mean and max peak RSS, CPU efficiency = CPU time
    / wall time / cores), from a run directory (checked, read-only) or an open
    connection to its journal; empty for a journal without resource use."""
    return _ask(source, JournalReader.usage)


def _ask(source: str | os.PathLike | sqlite3.Connection,
         question: Callable[[JournalReader], _T]) -> _T:
    """``question`` asked of a run's journal: of its run directory, checked and opened
    read-only for it, or of an open connection to it."""
    if isinstance(source, sqlite3.Connection):
        return question(JournalReader(_path_of(source), source))
    with read_journal(source) as journal:
        return question(journal)


def _containing(text: str) -> str:
    """A LIKE pattern matching what holds ``text``, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _path_of(conn: sqlite3.Connection) -> Path:
    try:
        return Path(conn.execute("PRAGMA database_list").fetchone()[2] or "journal")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the journal: {exc}") from exc
