"""The run directory's journal: every task's final result and every earlier attempt, in
SQLite (WAL), written as results arrive.

    orchestrator --add(row, final)--> buffers --flush() on every loop turn--> journal.db
    Results (a read-only Mapping) <--- SELECT --- journal.db

``results`` holds one final row per task; ``attempts`` holds the attempts that were
retried (a task that succeeds at once costs one row); ``firings`` holds every firing of an
event rule; ``node_samples`` the nodes' CPU and memory use over time (``states.NodeSample``);
``blocks`` the batch jobs of a provider run, one row per block, its latest record
(``states.BlockRecord``). Rows are inserted in batches, one transaction per loop turn of the
root, so a killed launcher loses no result (or firing, sample, block) that reached the root.
Readers open their own connection; WAL lets them read while the run writes.

Every reader and a resume first check that the file is a journal this version can read
(:func:`check_journal`), so that a corrupt, empty, foreign or newer file gets one clear
error and is never modified. When a write fails (a full disk), the transaction is rolled
back, the journal keeps every result committed before, and the store stops writing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from ensemble_launcher.errors import LauncherClosedError, StoreError
from ensemble_launcher.states import BlockRecord, ResultRow, RunResult
from ensemble_launcher.store.result import TaskResult

if TYPE_CHECKING:
    from ensemble_launcher.store.queries import JournalReader

JOURNAL_NAME = "journal.db"
#: ``PRAGMA user_version`` of the journals we write. Journals written before we numbered
#: them read 0 and are read when their tables are as below.
SCHEMA_VERSION = 1

#: What a task used (``states.Usage``), NULL when not measured; journals written before
#: we measured it lack these columns (see _LATER_COLUMNS).
_USAGE_COLUMNS = ("cpu_user", "cpu_system", "max_rss")
_COLUMNS = ("task_id", "ensemble", "attempt", "state", "reason", "returncode", "value",
            "start_time", "end_time", "host", "cpus", "gpus", "detail", *_USAGE_COLUMNS)
_TABLE = """(
    seq INTEGER PRIMARY KEY, task_id TEXT NOT NULL, ensemble TEXT, attempt INTEGER NOT NULL,
    state TEXT NOT NULL, reason TEXT, returncode INTEGER, value BLOB, start_time REAL,
    end_time REAL, host TEXT, cpus TEXT, gpus TEXT, detail BLOB, cpu_user REAL,
    cpu_system REAL, max_rss INTEGER)"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS results {_TABLE};
CREATE TABLE IF NOT EXISTS attempts {_TABLE};
CREATE INDEX IF NOT EXISTS attempts_task ON attempts (task_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS submitted (seq INTEGER PRIMARY KEY, task_id TEXT NOT NULL,
    record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS functions (digest BLOB PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS firings (seq INTEGER PRIMARY KEY, at REAL NOT NULL,
    rule TEXT NOT NULL, trigger TEXT NOT NULL, action TEXT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS node_samples (at REAL, node TEXT, host TEXT, cpu_percent REAL,
    mem_used INTEGER, mem_total INTEGER);
CREATE INDEX IF NOT EXISTS node_samples_at ON node_samples (at);
CREATE TABLE IF NOT EXISTS blocks ("index" INTEGER PRIMARY KEY, job_id TEXT NOT NULL,
    state TEXT NOT NULL, nodes INTEGER NOT NULL, hosts TEXT NOT NULL, submitted REAL NOT NULL,
    started REAL, ended REAL, message TEXT NOT NULL);
PRAGMA user_version = {SCHEMA_VERSION};
"""
_TABLES = {"results": {"seq", *_COLUMNS} - set(_USAGE_COLUMNS),
           "attempts": {"seq", *_COLUMNS} - set(_USAGE_COLUMNS), "meta": {"key", "value"}}
#: Columns that journals written before them lack: read as NULL when missing; opening such
#: a journal to write (a resume) adds them.
_LATER_COLUMNS = {table: {"cpu_user": "REAL", "cpu_system": "REAL", "max_rss": "INTEGER"}
                  for table in ("results", "attempts")}
#: Tables that journals written before them lack: read as empty when missing, checked
#: like the others when present. Opening such a journal to write (a resume) adds them.
_LATER_TABLES = {"firings": {"seq", "at", "rule", "trigger", "action", "detail"},
                 "node_samples": {"at", "node", "host", "cpu_percent", "mem_used",
                                  "mem_total"},
                 "blocks": set(BlockRecord._fields)}
#: The unique index on results.task_id is built when a run ends (or when a run that holds
#: results is resumed): maintaining it row by row would double the cost of each insert.
_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS results_task ON results (task_id)"
_VALUES = f"({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_INSERT_FINAL = f"INSERT INTO results {_VALUES}"
_INSERT_ATTEMPT = f"INSERT INTO attempts {_VALUES}"
#: A resumed task's earlier final result becomes one of its attempts.
_ARCHIVE_FINAL = (f"INSERT INTO attempts ({', '.join(_COLUMNS)}) "
                  f"SELECT {', '.join(_COLUMNS)} FROM results WHERE task_id = ?")
_DROP_FINAL = "DELETE FROM results WHERE task_id = ?"
_INSERT_SUBMITTED = "INSERT INTO submitted (task_id, record) VALUES (?, ?)"
_INSERT_FUNCTION = "INSERT OR IGNORE INTO functions (digest, blob) VALUES (?, ?)"
_INSERT_FIRING = "INSERT INTO firings (at, rule, trigger, action, detail) VALUES (?, ?, ?, ?, ?)"
_INSERT_SAMPLE = ("INSERT INTO node_samples (at, node, host, cpu_percent, mem_used, mem_total) "
                  "VALUES (?, ?, ?, ?, ?, ?)")
#: The ``blocks`` columns in ``states.BlockRecord``'s order ("index" is an SQL keyword).
BLOCK_COLUMNS = ", ".join(f'"{name}"' for name in BlockRecord._fields)
#: A block's latest record replaces its earlier one (one row per block index).
_UPSERT_BLOCK = (f"INSERT OR REPLACE INTO blocks ({BLOCK_COLUMNS}) "
                 f"VALUES ({', '.join('?' * len(BlockRecord._fields))})")
#: Task ids per ``IN (...)`` query (SQLite's default limit of variables is 999).
_IDS_PER_QUERY = 500


def journal_row(task_id: str, ensemble: str | None, attempt: int, result: Any, host: str,
                cpus: str, gpus: str) -> tuple:
    """A journal row from a :class:`~ensemble_launcher.states.RunResult` (or a ResultRow,
    or a plain tuple in their field order). The rarely set fields travel together in
    ``detail`` (msgpack), NULL for a plain success."""
    if not isinstance(result, (RunResult, ResultRow)):
        result = RunResult._make(result[:len(RunResult._fields)])
    signal, exception, tb, stdout, stderr = result.signal, result.exception, \
        result.traceback, result.stdout, result.stderr
    detail = msgpack.packb([signal, exception, tb, stdout, stderr]) \
        if signal or exception or tb or stdout or stderr else None
    return (task_id, ensemble, attempt, result.state, result.reason, result.returncode,
            result.value, result.start, result.end, host, cpus, gpus, detail,
            result.cpu_user, result.cpu_system, result.max_rss)


def result_columns(conn: sqlite3.Connection, table: str = "results") -> str:
    """The SELECT list of ``_COLUMNS`` (what ``TaskResult.from_row`` takes) for ``table`` of
    this journal: NULL for a column it was written without."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    return ", ".join(c if c in present or c not in _LATER_COLUMNS[table] else f"NULL AS {c}"
                     for c in _COLUMNS)


def _add_later_columns(conn: sqlite3.Connection) -> None:
    """Give a journal written before them the columns we write now."""
    for table, columns in _LATER_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _still_needed(submitted: list[tuple[str, bytes]], alone: set[str],
                  rows: list[tuple]) -> list[tuple[str, bytes]]:
    """The submitted rows to write with these final results: not those of single tasks
    whose result is among them (and not ``not_run``, which a restart runs again)."""
    done = {row[0] for row in rows if row[3] != "not_run"} & alone
    return [item for item in submitted if item[0] not in done] if done else submitted


def untouched_uri(path: Path) -> str:
    """A read-only SQLite URI for ``path`` that creates nothing beside it. Opening a WAL
    database read-only creates its -wal and -shm files; when there is no -wal (the run is
    over and checkpointed), the file alone holds everything and is opened immutable."""
    wal = path.with_name(path.name + "-wal")
    return f"file:{path}?mode=ro" + ("" if wal.exists() else "&immutable=1")


def check_journal(run_dir: str | os.PathLike, *, read_all: bool = False) -> Path:
    """The journal of ``run_dir``, or StoreError saying in one line why it is not one we can
    read: no such directory, no journal, empty, not SQLite, another program's database,
    or another version's tables; with ``read_all``, also a damaged table (this reads each
    table through). Reads only; modifies nothing."""
    with reading_journal(run_dir, read_all=read_all) as (path, _):
        return path


@contextmanager
def reading_journal(run_dir: str | os.PathLike, *, read_all: bool = False) \
        -> Iterator[tuple[Path, sqlite3.Connection]]:
    """The journal of ``run_dir`` and a read-only connection to it that creates nothing,
    once :func:`check_journal`'s checks passed on that connection."""
    path, conn = _checked_connection(Path(run_dir), read_all)
    with closing(conn):
        yield path, conn


def _checked_connection(run_dir: Path, read_all: bool) -> tuple[Path, sqlite3.Connection]:
    path = run_dir / JOURNAL_NAME
    if not run_dir.is_dir():
        raise StoreError(f"{run_dir}: no such run directory" if not run_dir.exists()
                         else f"{run_dir} is not a directory")
    if not path.is_file():
        raise StoreError(f"{run_dir} is not a run directory (no {JOURNAL_NAME})")
    if path.stat().st_size == 0:
        raise StoreError(f"{path} is empty: no run was recorded in it")
    try:
        conn = sqlite3.connect(untouched_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {name: {c[1] for c in conn.execute(f"PRAGMA table_info({name})")}
                  for (name,) in conn.execute(
                      "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if read_all:
            for name in (_TABLES.keys() | _LATER_TABLES.keys()) & tables.keys():
                conn.execute(f"SELECT COUNT(*) FROM {name}").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} was written by a newer ensemble_launcher (journal "
                             f"schema {version}; this version reads up to "
                             f"{SCHEMA_VERSION})")
        _check_tables(path, tables)
    except sqlite3.Error as exc:
        conn.close()
        raise _unreadable(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return path, conn


def _unreadable(path: Path, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"{path} is not a readable journal ({exc}): corrupt, or not "
                      "written by ensemble_launcher")


def _check_tables(path: Path, tables: dict[str, set[str]]) -> None:
    missing = [name for name in _TABLES if name not in tables]
    if len(missing) == len(_TABLES):
        raise StoreError(f"{path} is not an ensemble_launcher journal (its tables: "
                         f"{', '.join(sorted(tables)[:8]) or 'none'})")
    if missing:
        raise StoreError(f"{path} is a journal of another ensemble_launcher version: it has "
                         f"no table {missing[0]!r}")
    present_later = {name: columns for name, columns in _LATER_TABLES.items()
                     if name in tables}
    for name, columns in {**_TABLES, **present_later}.items():
        lacking = sorted(columns - tables[name])
        if lacking:
            more = f" and {len(lacking) - 4} more" if len(lacking) > 4 else ""
            raise StoreError(f"{path} is a journal of another ensemble_launcher version: "
                             f"table {name!r} lacks {', '.join(lacking[:4])}{more}")


def _connect(path: Path, *, write: bool) -> sqlite3.Connection:
    if not write or path.exists():
        check_journal(path.parent)
    try:
        if write:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            _add_later_columns(conn)
            if conn.execute("SELECT 1 FROM results LIMIT 1").fetchone():
                conn.execute(_INDEX)
        else:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open journal {path}: {exc}") from exc
    return conn


class RunStore:
    """Writes a run's results and metadata into ``run_dir/journal.db``.

    The first write that fails (a full disk) is rolled back and raised as StoreError; from
    then on the store writes nothing more (``failure`` holds that error), so that the run
    can end with the journal as it was at its last commit, which is what resume reads.
    """

    def __init__(self, run_dir: str | os.PathLike, *, flush_rows: int = 256,
                 flush_seconds: float = 0.1) -> None:
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create run directory {self.run_dir}: {exc}") from exc
        self.path = self.run_dir / JOURNAL_NAME
        self._conn: sqlite3.Connection | None = _connect(self.path, write=True)
        self._buffer: list[tuple] = []
        self._attempts: list[tuple] = []
        self._archive: list[tuple[str]] = []
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self.failure: StoreError | None = None
        self._submitted: list[tuple[str, bytes]] = []
        self._alone: set[str] = set()
        """Submitted rows of one task each: not written when that task's final result comes
        with them (a restart needs them only for tasks without one)."""
        self._functions: list[tuple[bytes, bytes]] = []
        self._firings: list[tuple[float, str, str, str, str]] = []
        self._samples: list[Sequence[Any]] = []
        self._blocks: dict[int, BlockRecord] = {}
        """The latest record of each block changed since the last flush."""
        self._indexed = False

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_meta(self, **items: Any) -> None:
        conn = self._require_open()
        if self.failure is not None:
            return
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in items.items()])
        except sqlite3.Error as exc:
            raise self._failed("run metadata", exc) from exc

    def drop_meta(self, *keys: str) -> None:
        """Forget what an earlier run recorded under ``keys`` (a resume starts anew)."""
        conn = self._require_open()
        try:
            with conn:
                conn.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in keys])
        except sqlite3.Error as exc:
            raise self._failed("run metadata", exc) from exc

    def add(self, row: tuple, final: bool = True) -> None:
        """Queue one result row (columns as in ``_COLUMNS``): a task's final result, or an
        attempt that will be retried. Written by the next flush."""
        if self.failure is not None:
            return
        (self._buffer if final else self._attempts).append(row)
        if len(self._buffer) >= self._flush_rows:
            self.flush()

    def archive_final(self, task_id: str) -> None:
        """Keep a resumed task's earlier final result as an attempt before it is replaced."""
        self._archive.append((task_id,))

    def maybe_flush(self) -> None:
        if (self._buffer or self._firings or self._samples or self._blocks) \
                and time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        conn = self._require_open()
        self._last_flush = time.monotonic()
        if self.failure is not None or not (self._buffer or self._attempts or self._archive
                                            or self._submitted or self._firings
                                            or self._samples or self._blocks):
            return
        submitted, self._submitted = self._submitted, []
        functions, self._functions = self._functions, []
        rows, self._buffer = self._buffer, []
        if self._alone:
            submitted = _still_needed(submitted, self._alone, rows)
            self._alone = set()
        attempts, self._attempts = self._attempts, []
        archive, self._archive = self._archive, []
        firings, self._firings = self._firings, []
        samples, self._samples = self._samples, []
        blocks, self._blocks = self._blocks, {}
        try:
            conn.execute("BEGIN")
            if functions:
                conn.executemany(_INSERT_FUNCTION, functions)
            if submitted:
                conn.executemany(_INSERT_SUBMITTED, submitted)
            if archive:
                conn.executemany(_ARCHIVE_FINAL, archive)
                conn.executemany(_DROP_FINAL, archive)
            if attempts:
                conn.executemany(_INSERT_ATTEMPT, attempts)
            conn.executemany(_INSERT_FINAL, rows)
            if firings:
                conn.executemany(_INSERT_FIRING, firings)
            if samples:
                conn.executemany(_INSERT_SAMPLE, samples)
            if blocks:
                conn.executemany(_UPSERT_BLOCK, blocks.values())
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._failed("results", exc) from exc

    def add_submitted(self, task_id: str, record: bytes, *, alone: bool = True) -> None:
        """A task a client submitted to a cluster (``alone``), or a chunk of a map (its
        first task's id), as the cluster can submit it again after a restart; written with
        the next flush, before any result of it."""
        if self.failure is None:
            self._submitted.append((task_id, record))
            if alone:
                self._alone.add(task_id)

    def add_firing(self, at: float, rule: str, trigger: str, action: str,
                   detail: str = "") -> None:
        """One firing of an event rule: when (``time.time()``, the clock of the results),
        the rule's label, its trigger, the action taken and what it did. Written with the
        next flush (at most ``flush_seconds`` later), so that ``el status`` shows it while
        the run goes on and a firing costs no transaction of its own."""
        if self.failure is None:
            self._firings.append((at, rule, trigger, action, detail))

    def add_node_samples(self, rows: Sequence[Sequence[Any]]) -> None:
        """Samples of nodes' CPU and memory use (``states.NodeSample`` rows, or lists in
        its field order, as they come over the wire), written with the next flush."""
        if self.failure is None:
            self._samples.extend(rows)

    def record_block(self, record: BlockRecord) -> None:
        """The latest record of a provider's block (submitted, started, a host connected,
        ended): it replaces the block's earlier row with the next flush, so that ``el status``
        shows it while the run goes on, and records between two flushes cost one row."""
        if self.failure is None:
            self._blocks[record.index] = record

    def next_block_index(self) -> int:
        """The index after every block recorded (0 when none), where the blocks of a resumed
        run (or a restarted cluster) go on counting, so that they do not replace the rows of
        the earlier run's blocks that its results were run in."""
        recorded = self._read('SELECT MAX("index") FROM blocks')[0][0]
        return 0 if recorded is None else recorded + 1

    def add_function(self, digest: bytes, blob: bytes) -> None:
        """A callable submitted tasks name by ``digest`` (once per cluster)."""
        if self.failure is None:
            self._functions.append((digest, blob))

    def submissions(self) -> Iterator[tuple[str, bytes, str | None]]:
        """(task_id, record, final state of task_id or None), in their order, of the rows a
        cluster journaled as submitted that may hold a task without a final result: those
        of one task without one (or with ``not_run``), and every row of several tasks (a
        map chunk's: a msgpack array of 4, whose first item is 0)."""
        yield from self._read(
            "SELECT s.task_id, s.record, r.state FROM submitted s LEFT JOIN results r "
            "ON r.task_id = s.task_id WHERE r.task_id IS NULL OR r.state = 'not_run' "
            "OR substr(s.record, 1, 2) = x'9400' ORDER BY s.seq")

    def finished_among(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` with a final result other than not_run."""
        done: set[str] = set()
        for start in range(0, len(task_ids), _IDS_PER_QUERY):
            chunk = task_ids[start:start + _IDS_PER_QUERY]
            done.update(task_id for (task_id,) in self._read(
                f"SELECT task_id FROM results WHERE state != 'not_run' AND task_id IN "
                f"({', '.join('?' * len(chunk))})", chunk))
        return done

    def functions(self) -> dict[bytes, bytes]:
        return dict(self._read("SELECT digest, blob FROM functions"))

    def function(self, digest: bytes) -> bytes | None:
        for pending, blob in self._functions:
            if pending == digest:
                return blob
        row = self._one("SELECT blob FROM functions WHERE digest = ?", digest)
        return None if row is None else row[0]

    def final_outcome(self, task_id: str) -> tuple[str, bytes | None, str | None] | None:
        """(state, value, reason) of the task's final result, None if it has none; rows not
        flushed yet included. The first call builds the index on task_id that a run
        otherwise builds when it ends (a cluster asks only for a dependency finished long
        ago, rarely)."""
        for row in reversed(self._buffer):
            if row[0] == task_id:
                return row[3], row[6], row[4]
        if not self._indexed:
            self._indexed = True
            self._one(_INDEX, None)
        row = self._one("SELECT state, value, reason FROM results WHERE task_id = ?", task_id)
        return None if row is None else (row[0], row[1], row[2])

    def _one(self, query: str, key: Any) -> tuple | None:
        conn = self._require_open()
        try:
            return conn.execute(query, () if key is None else (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    def final_states(self) -> dict[str, tuple[str, int]]:
        """task_id -> (state, attempt) of every task with a final result (for resume)."""
        return {tid: (state, attempt) for tid, state, attempt in
                self._read("SELECT task_id, state, attempt FROM results")}

    def final_counts(self) -> dict[tuple[str | None, str], int]:
        """(ensemble, state) -> number of final results (for resume's counts)."""
        return {(ensemble, state): n for ensemble, state, n in self._read(
            "SELECT ensemble, state, COUNT(*) FROM results GROUP BY ensemble, state")}

    def close(self) -> None:
        if self._conn is None:
            return
        try:
            self.flush()
            if self.failure is None:
                self._conn.execute(_INDEX)
        except sqlite3.Error as exc:
            raise self._failed("its index", exc) from exc
        finally:
            self._conn.close()
            self._conn = None

    def _read(self, query: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        conn = self._require_open()
        self.flush()
        try:
            return conn.execute(query, parameters).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    def _failed(self, what: str, exc: sqlite3.Error) -> StoreError:
        """Roll back, drop what was queued, and write nothing more."""
        conn = self._require_open()
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._buffer, self._attempts, self._archive, self._firings = [], [], [], []
        self._samples, self._blocks = [], {}
        self.failure = StoreError(f"cannot write {what} to {self.path}: {exc}")
        return self.failure

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LauncherClosedError(f"the run store {self.path} is closed")
        return self._conn


class Results(Mapping[str, TaskResult]):
    """A run's results, read from its journal: ``results[task_id]`` -> TaskResult.

    Nothing is held in memory; iteration streams rows in the order they completed.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._conn = _connect(self.run_dir / JOURNAL_NAME, write=False)
        try:
            self._columns = result_columns(self._conn)
            self._attempt_columns = result_columns(self._conn, "attempts")
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot read {self.run_dir / JOURNAL_NAME}: {exc}") from exc

    def __getitem__(self, task_id: str) -> TaskResult:
        row = self._conn.execute(
            f"SELECT {self._columns} FROM results WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None:
            raise KeyError(task_id)
        return TaskResult.from_row(row)

    def __iter__(self) -> Iterator[str]:
        for (task_id,) in self._conn.execute("SELECT task_id FROM results ORDER BY seq"):
            yield task_id

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def __contains__(self, task_id: object) -> bool:
        return self._conn.execute("SELECT 1 FROM results WHERE task_id = ?",
                                  (task_id,)).fetchone() is not None

    def values(self) -> Iterator[TaskResult]:  # type: ignore[override]
        cursor = self._conn.execute(f"SELECT {self._columns} FROM results ORDER BY seq")
        for row in cursor:
            yield TaskResult.from_row(row)

    def items(self) -> Iterator[tuple[str, TaskResult]]:  # type: ignore[override]
        for result in self.values():
            yield result.task_id, result

    def counts(self) -> dict[str, int]:
        """Number of results in each state."""
        return dict(self._conn.execute("SELECT state, COUNT(*) FROM results GROUP BY state"))

    def attempts(self, task_id: str) -> list[TaskResult]:
        """Every attempt of a task, the final one last."""
        rows = self._conn.execute(
            f"SELECT {self._attempt_columns} FROM attempts WHERE task_id = ? "
            f"UNION ALL SELECT {self._columns} FROM results WHERE task_id = ? ORDER BY attempt",
            (task_id, task_id)).fetchall()
        return [TaskResult.from_row(row) for row in rows]

    def failed(self) -> Iterator[TaskResult]:
        cursor = self._conn.execute(
            f"SELECT {self._columns} FROM results WHERE state != 'succeeded' ORDER BY seq")
        for row in cursor:
            yield TaskResult.from_row(row)

    def meta(self) -> dict[str, Any]:
        return meta_of(self._conn, self.run_dir / JOURNAL_NAME)

    def blocks(self) -> list[BlockRecord]:
        """The blocks (batch jobs) of a provider run, each as last recorded, in index
        order; none for a run without a provider."""
        return self._journal().blocks()

    def block_of(self, task_id: str) -> BlockRecord | None:
        """The block (batch job) that ran the task's final attempt, found from its host and
        start time (see ``store.queries.block_at``; for many tasks, give it
        :meth:`blocks` once); None for a run without blocks or a task that did not run.
        KeyError for a task without a final result."""
        if task_id not in self:
            raise KeyError(task_id)
        return self._journal().block_of(task_id)

    def _journal(self) -> JournalReader:
        """This connection as a ``store.queries.JournalReader`` (imported here: that module
        imports this one)."""
        from ensemble_launcher.store.queries import JournalReader

        return JournalReader(self.run_dir / JOURNAL_NAME, self._conn)

    def close(self) -> None:
        self._conn.close()

    def __repr__(self) -> str:
        return f"<Results {self.run_dir} {self.counts()}>"


def read_meta(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's metadata, read without creating or changing anything in ``run_dir``."""
    with reading_journal(run_dir, read_all=True) as (path, conn):
        return meta_of(conn, path)


def ids_run_again(run_dir: str | os.PathLike,
                  runs_again: Callable[[str], bool]) -> Callable[[Sequence[str]], set[str]]:
    """Which of some task ids a resume of ``run_dir`` runs: those without a final result and
    those whose final state ``runs_again``. The journal is read at the first question, in
    one scan (a killed run's journal has no index on task ids), and never written."""
    done: set[str] | None = None

    def which(task_ids: Sequence[str]) -> set[str]:
        nonlocal done
        if done is None:
            done = _ids_not_run_again(Path(run_dir), runs_again)
        return {task_id for task_id in task_ids if task_id not in done}

    return which


def _ids_not_run_again(run_dir: Path, runs_again: Callable[[str], bool]) -> set[str]:
    if not (run_dir / JOURNAL_NAME).exists():
        return set()
    with reading_journal(run_dir) as (path, conn):
        try:
            states = [state for (state,) in conn.execute("SELECT DISTINCT state FROM results")
                      if not runs_again(state)]
            marks = ", ".join("?" * len(states))
            return {task_id for (task_id,) in conn.execute(
                f"SELECT task_id FROM results WHERE state IN ({marks})", states)}
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc


def meta_of(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    try:
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except (sqlite3.Error, ValueError) as exc:
        raise StoreError(f"cannot read the run metadata in {path}: {exc}") from exc


def write_results_to_json(results: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write results as one JSON object ``{task_id: result}``, streamed, and atomically:
    the file appears complete or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write("{")
            for i, (task_id, result) in enumerate(results.items()):
                record = result.to_dict() if isinstance(result, TaskResult) else result
                f.write(("," if i else "") + "\n  " + json.dumps(str(task_id)) + ": "
                        + json.dumps(record, default=repr))
            f.write("\n}\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
