"""Recording and showing the blocks of a provider run (issue 13, point 6): the journal keeps
one row per block, its latest record; ``el status`` shows each block's job id and state,
live (from status.json) and after the run (from the journal); and which block ran a task
is found from the task's host and start time. Journals written before we journaled blocks
read as none."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from ensemble_launcher.monitor.counts import Counts
from ensemble_launcher.monitor.status import SHOWN_BLOCKS, StatusFileReporter, read_status
from ensemble_launcher.states import BlockRecord, RunResult, never_ran
from ensemble_launcher.store import Results, RunStore
from ensemble_launcher.store.journal import JOURNAL_NAME, check_journal, journal_row
from ensemble_launcher.store.queries import block_at, block_of, blocks

STARTED = 1_800_000_000.0


def el(*args):
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120)


def _result(start: float, state: str = "succeeded") -> RunResult:
    return RunResult(0, state, None, 0, None, None, None, None, None, "", start, start + 1.0)


def _new_run(run_dir: Path, ran: dict[str, tuple[str, float]] | None = None) -> RunStore:
    """A run store as a provider run leaves it: metadata, and a result of ensemble sleep
    for each task id of ``ran`` (its host and start time)."""
    ran = ran if ran is not None else {f"sleep-{i}": ("n0", STARTED + i) for i in range(4)}
    store = RunStore(run_dir)
    store.set_meta(started=STARTED, ensembles={"sleep": len(ran)}, nodes=[],
                   system_config={"ncpus": 2})
    for task_id, (host, start) in ran.items():
        store.add(journal_row(task_id, "sleep", 1, _result(start), host, "0", ""))
    return store


def _block(index: int, state: str, hosts: str = "", started: float | None = None,
           ended: float | None = None, message: str = "", nodes: int = 1) -> BlockRecord:
    return BlockRecord(index, str(7000 + index), state, nodes, hosts, STARTED + index, started,
                       ended, message)


def _rows(run_dir: Path) -> list[tuple] | None:
    """(index, state, hosts) of each row of the blocks table; None without the table."""
    with closing(sqlite3.connect(run_dir / JOURNAL_NAME)) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'blocks'").fetchall():
            return None
        return conn.execute('SELECT "index", state, hosts FROM blocks').fetchall()


def test_a_block_recorded_pending_then_running_then_cancelled_is_one_row_in_its_last_state(
        tmp_path):
    run_dir = tmp_path / "run"
    store = _new_run(run_dir)
    assert store.next_block_index() == 0
    store.record_block(_block(0, "pending"))
    store.flush()
    assert blocks(run_dir) == [_block(0, "pending")]
    store.record_block(_block(0, "running", "n0", STARTED + 5))
    store.record_block(_block(0, "running", "n0,n1", STARTED + 5, nodes=2))
    store.maybe_flush()
    store.flush()
    assert _rows(run_dir) == [(0, "running", "n0,n1")]
    cancelled = _block(0, "cancelled", "n0,n1", STARTED + 5, STARTED + 30,
                       "cancelled by user", nodes=2)
    store.record_block(cancelled)
    store.record_block(_block(1, "pending"))
    assert store.next_block_index() == 2
    store.close()
    assert _rows(run_dir) == [(0, "cancelled", "n0,n1"), (1, "pending", "")]
    assert blocks(run_dir) == [cancelled, _block(1, "pending")]
    assert blocks(run_dir, limit=1) == [_block(1, "pending")]
    check_journal(run_dir, read_all=True)


def _journal_before_blocks(run_dir: Path) -> None:
    """A journal as versions before the blocks table wrote it."""
    _new_run(run_dir).close()
    with closing(sqlite3.connect(run_dir / JOURNAL_NAME, isolation_level=None)) as conn:
        conn.execute("DROP TABLE blocks")
    assert _rows(run_dir) is None


def test_a_journal_written_before_blocks_reads_as_none_and_a_resume_adds_them(tmp_path):
    run_dir = tmp_path / "run"
    _journal_before_blocks(run_dir)
    check_journal(run_dir, read_all=True)
    assert blocks(run_dir) == [] and block_of(run_dir, "sleep-0") is None
    results = Results(run_dir)
    assert results.blocks() == [] and results.block_of("sleep-0") is None
    results.close()
    assert read_status(run_dir).blocks_total == 0
    status = el("status", run_dir)
    assert status.returncode == 0, status.stderr
    assert "sleep: 4/4 finished" in status.stdout and "blocks" not in status.stdout
    with RunStore(run_dir) as store:
        assert store.next_block_index() == 0
        store.record_block(_block(0, "pending"))
    assert blocks(run_dir) == [_block(0, "pending")]


def test_block_of_tells_two_blocks_that_ran_one_after_another_on_the_same_host(tmp_path):
    run_dir = tmp_path / "run"
    store = _new_run(run_dir, {"early": ("n0", STARTED + 2), "late": ("n0", STARTED + 15),
                               "elsewhere": ("n1", STARTED + 40),
                               "at-the-switch": ("n0", STARTED + 10.2),
                               "before-noticed": ("n1", STARTED + 0.5)})
    store.add(journal_row("never", "sleep", 1, never_ran("not_run", "interrupted", "", 0.0),
                          "", "", ""))
    first = _block(0, "completed", "n0", STARTED + 1, STARTED + 10)
    second = _block(1, "running", "n1,n0", STARTED + 10.5)
    third = _block(2, "cancelled", "n1", STARTED + 1, STARTED + 9, "idle")
    for record in (first, second, third):
        store.record_block(record)
    store.close()
    expected = {"early": first, "late": second, "elsewhere": second, "at-the-switch": first,
                "before-noticed": third, "never": None}
    assert {task: block_of(run_dir, task) for task in expected} == expected
    with closing(Results(run_dir)) as results:
        assert {task: results.block_of(task) for task in expected} == expected
        every = results.blocks()
        assert every == [first, second, third]
        assert {r.task_id: block_at(every, r.host, r.start_time) for r in results.values()
                if r.state != "not_run"} == {k: v for k, v in expected.items() if v}
        with pytest.raises(KeyError):
            results.block_of("no-such-task")
    assert block_of(run_dir, "no-such-task") is None


def test_block_of_is_none_in_a_run_without_blocks(tmp_path):
    _new_run(tmp_path / "run").close()
    with closing(Results(tmp_path / "run")) as results:
        assert results.blocks() == [] and results.block_of("sleep-1") is None


def _finished_run_with_blocks(run_dir: Path, count: int) -> list[BlockRecord]:
    store = _new_run(run_dir)
    records = [_block(i, "completed", f"n{i}", STARTED + i + 30, STARTED + i + 90)
               for i in range(count - 2)]
    records.append(_block(count - 2, "failed", "n8,n9,n10,n11", STARTED + 40, STARTED + 52,
                          "NODE_FAIL\non n9", nodes=4))
    records.append(_block(count - 1, "failed", "", None, STARTED + count + 24,
                          "invalid partition name specified"))
    for record in records:
        store.record_block(record)
    store.set_meta(finished=STARTED + 200)
    store.close()
    return records


def test_el_status_lists_the_last_twenty_blocks_of_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    records = _finished_run_with_blocks(run_dir, 25)
    out = el("status", run_dir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{run_dir}: finished")
    at = lines.index("  blocks: 25 (23 completed, 2 failed); the last 20 listed, 5 left out")
    listed = lines[at + 1:at + 1 + SHOWN_BLOCKS]
    assert len(listed) == SHOWN_BLOCKS == 20
    assert listed[0].split() == ["#5", "job", "7005", "completed", "1", "node", "n5", "ran",
                                 "0:01:00"]
    assert listed[-2].split() == ["#23", "job", "7023", "failed", "4", "nodes", "n8,n9,n10",
                                  "+1", "more", "ran", "0:00:12;", "NODE_FAIL", "on", "n9"]
    assert listed[-1].split() == ["#24", "job", "7024", "failed", "1", "node", "-", "waited",
                                  "0:00:25,", "never", "started;", "invalid", "partition",
                                  "name", "specified"]
    data = json.loads(el("status", run_dir, "--json").stdout)
    assert data["blocks_total"] == 25 and data["block_states"] == {"completed": 23, "failed": 2}
    assert [BlockRecord(**b) for b in data["blocks"]] == records[-SHOWN_BLOCKS:]


def test_el_status_lists_the_blocks_of_a_live_run_from_status_json(tmp_path):
    run_dir = tmp_path / "run"
    _new_run(run_dir).close()
    counts = Counts(total={"sleep": 40}, done={"sleep": 4})
    counts.blocks[1] = _block(1, "pending")
    counts.blocks[0] = _block(0, "running", "n0,n1", STARTED + 3, nodes=2)
    StatusFileReporter(run_dir, 0.1).update(counts)
    written = json.loads((run_dir / "status.json").read_text())
    assert written["pid"] == os.getpid() and [b["index"] for b in written["blocks"]] == [0, 1]
    assert blocks(run_dir) == []
    out = el("status", run_dir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{run_dir}: running")
    at = lines.index("  blocks: 2 (1 running, 1 pending)")
    running, pending = (line.split() for line in lines[at + 1:at + 3])
    assert running[:9] == ["#0", "job", "7000", "running", "2", "nodes", "n0,n1", "running",
                           "for"]
    assert pending[:8] == ["#1", "job", "7001", "pending", "1", "node", "-", "waiting"]
    status = read_status(run_dir, blocks=1)
    assert status.blocks == [_block(1, "pending")] and status.blocks_total == 2
