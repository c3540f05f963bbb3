"""Read-only questions about a run's journal, for ``el status``, ``el report`` and the
trace: counts, the time span, the rows of the attempts that ran, and the firings of the
event rules.

The journal's schema is :mod:`ensemble_launcher.store.journal`'s; the monitor asks here
instead of running SQL of its own, so that a change of the schema has one place to go.
Every reader opens the journal through :func:`~ensemble_launcher.store.journal.
reading_journal`, which checks the file first and creates nothing beside it, and every
SQLite failure is a StoreError that names the file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from ensemble_launcher.errors import StoreError
from ensemble_launcher.store.journal import JOURNAL_NAME, meta_of, reading_journal

__all__ = ["JOURNAL_NAME", "EnsembleCount", "Firing", "JournalReader", "Ran", "Span",
           "firings", "read_journal", "recent_firings"]

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
    if isinstance(source, sqlite3.Connection):
        return JournalReader(_path_of(source), source).firings(limit)
    with read_journal(source) as journal:
        return journal.firings(limit)


def recent_firings(run_dir: str | os.PathLike, limit: int = 20) -> list[Firing]:
    """The ``limit`` most recent rule firings of a run, newest last."""
    return firings(run_dir, limit)


def _path_of(conn: sqlite3.Connection) -> Path:
    try:
        return Path(conn.execute("PRAGMA database_list").fetchone()[2] or "journal")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the journal: {exc}") from exc
