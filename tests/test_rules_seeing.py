"""Seeing the event rules (issue 12, point 7): every firing is journaled with the results,
``el status`` lists the latest ones, live and after the run, and ``el report`` marks them on
the throughput timeline. Journals written before we journaled firings read as none."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from ensemble_launcher.errors import StoreError
from ensemble_launcher.monitor.counts import Counts
from ensemble_launcher.monitor.report import MARKED_FIRINGS, load
from ensemble_launcher.monitor.status import StatusFileReporter, read_status
from ensemble_launcher.states import RunResult
from ensemble_launcher.store import RunStore
from ensemble_launcher.store.journal import JOURNAL_NAME, check_journal, journal_row
from ensemble_launcher.store.queries import Firing, firings, recent_firings

STARTED = 1_800_000_000.0


def el(*args):
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120)


def _result(i: int, state: str = "succeeded") -> RunResult:
    start = STARTED + 0.5 * i
    return RunResult(i, state, None if state == "succeeded" else "exit_code",
                     0 if state == "succeeded" else 1, None, None, None, None, None, "",
                     start, start + 0.4)


def _new_run(run_dir: Path, tasks: int = 20) -> RunStore:
    """A run store as a run leaves it: metadata and ``tasks`` results of ensemble sleep."""
    store = RunStore(run_dir)
    store.set_meta(started=STARTED, ensembles={"sleep": tasks}, nodes=["n0"],
                   system_config={"ncpus": 2})
    for i in range(tasks):
        store.add(journal_row(f"sleep-{i}", "sleep", 1, _result(i), "n0", str(i % 2), ""))
    return store


def _fire(store: RunStore, n: int) -> list[Firing]:
    """``n`` firings, one every 0.1 s from 1 s into the run, of two rules."""
    fired = []
    for i in range(n):
        firing = Firing(STARTED + 1.0 + 0.1 * i, "count.sleep.success" if i % 2 else
                        "heartbeat", "metric" if i % 2 else "heartbeat",
                        "submit" if i % 2 else "custom", f"firing {i}")
        store.add_firing(*firing)
        fired.append(firing)
    return fired


def test_firings_are_written_with_the_next_flush_and_read_back_newest_last(tmp_path):
    store = _new_run(tmp_path / "run")
    fired = _fire(store, 5)
    assert firings(tmp_path / "run") == [], "nothing before the flush"
    store.flush()
    assert firings(tmp_path / "run") == fired
    assert firings(tmp_path / "run", limit=2) == fired[-2:]
    assert recent_firings(tmp_path / "run", limit=3) == fired[-3:]
    with sqlite3.connect(tmp_path / "run" / JOURNAL_NAME) as conn:
        assert firings(conn, limit=1) == fired[-1:]
    store.close()
    assert recent_firings(tmp_path / "run") == fired


def test_a_firing_alone_is_written_by_the_loop_turns_flush(tmp_path):
    with RunStore(tmp_path / "run", flush_seconds=0.0) as store:
        store.add_firing(STARTED, "start", "start", "submit", "sleep: 4 tasks")
        store.maybe_flush()
        assert [f.detail for f in firings(tmp_path / "run")] == ["sleep: 4 tasks"]


def test_firings_and_results_commit_in_one_transaction(tmp_path):
    store = _new_run(tmp_path / "run", tasks=0)
    store.add(journal_row("t", "sleep", 1, _result(0), "n0", "0", ""))
    store.add_firing(STARTED + 1, "sleep", "job-success", "submit", "refine: 2 tasks")
    with sqlite3.connect(tmp_path / "run" / JOURNAL_NAME) as conn:
        conn.execute("DROP TABLE firings")
    with pytest.raises(StoreError, match="firings"):
        store.flush()
    store.close()
    with sqlite3.connect(tmp_path / "run" / JOURNAL_NAME) as conn:
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone() == (0,), \
            "the result of a failed flush is rolled back with its firing"


def _journal_before_firings(run_dir: Path) -> None:
    """A journal as versions before the firings table wrote it."""
    _new_run(run_dir).close()
    with sqlite3.connect(run_dir / JOURNAL_NAME) as conn:
        conn.execute("DROP TABLE firings")
    with sqlite3.connect(run_dir / JOURNAL_NAME) as conn:
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'firings'").fetchall()


def test_a_journal_written_before_firings_reads_as_none(tmp_path):
    run_dir = tmp_path / "run"
    _journal_before_firings(run_dir)
    check_journal(run_dir, read_all=True)
    assert firings(run_dir) == [] and recent_firings(run_dir) == []
    assert read_status(run_dir).firings_total == 0
    status = el("status", run_dir)
    assert status.returncode == 0, status.stderr
    assert "sleep: 20/20 finished" in status.stdout and "firings" not in status.stdout
    report = el("report", run_dir, "--out", tmp_path / "plots")
    assert report.returncode == 0, report.stderr
    assert "firings" not in report.stdout
    assert (tmp_path / "plots" / "throughput.png").stat().st_size > 1000


def test_a_resume_of_a_journal_before_firings_journals_firings(tmp_path):
    run_dir = tmp_path / "run"
    _journal_before_firings(run_dir)
    with RunStore(run_dir) as store:
        fired = _fire(store, 2)
    assert firings(run_dir) == fired


def test_el_status_lists_the_last_ten_firings_of_a_finished_run(tmp_path):
    store = _new_run(tmp_path / "run")
    fired = _fire(store, 15)
    store.set_meta(finished=STARTED + 12)
    store.close()
    out = el("status", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'run'}: finished")
    at = lines.index("  rule firings: 15 (the last 10, newest last)")
    listed = lines[at + 1:]
    assert len(listed) == 10
    assert listed[0].split() == ["+1.5s", "count.sleep.success", "[metric]", "->", "submit:",
                                 "firing", "5"]
    assert listed[-1].split() == ["+2.4s", "heartbeat", "->", "custom:", "firing", "14"]
    data = json.loads(el("status", tmp_path / "run", "--json", "--firings", "3").stdout)
    assert [f["detail"] for f in data["firings"]] == [f.detail for f in fired[-3:]]
    assert data["firings"][-1]["since_start"] == pytest.approx(2.4)
    assert data["firings"][-1]["trigger"] == "heartbeat" and data["firings_total"] == 15


def test_el_status_lists_the_firings_of_a_live_run(tmp_path):
    run_dir = tmp_path / "run"
    store = _new_run(run_dir)
    counts = Counts(total={"sleep": 40}, done={"sleep": 20})
    StatusFileReporter(run_dir, 0.1).update(counts)
    assert json.loads((run_dir / "status.json").read_text())["pid"] == os.getpid()
    _fire(store, 3)
    store.flush()
    out = el("status", run_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{run_dir}: running")
    assert "  rule firings: 3 (newest last)" in out.stdout
    assert "count.sleep.success [metric] -> submit: firing 1" in out.stdout
    store.add_firing(STARTED + 5, "beat", "interval", "custom", "returned\n  Rule(...)")
    deadline = time.monotonic() + 30
    while "beat [interval] -> custom: returned Rule(...)\n" not in el("status", run_dir).stdout:
        store.maybe_flush()
        assert time.monotonic() < deadline, "the fourth firing never showed, on one line"
    store.close()


@pytest.mark.parametrize(("fired", "left_out"), [(7, 0), (120, 120 - MARKED_FIRINGS)])
def test_el_report_marks_at_most_fifty_firings_and_says_how_many_it_left_out(tmp_path, fired,
                                                                             left_out):
    with _new_run(tmp_path / "run") as store:
        _fire(store, fired)
    out = el("report", tmp_path / "run", "--out", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    half = fired // 2
    assert f"rule firings: {fired} ({fired - half} heartbeat -> custom, {half} " \
           "count.sleep.success -> submit)" in out.stdout
    note = f"throughput.png marks {MARKED_FIRINGS} firings, spread evenly; {left_out} left out"
    assert (note in out.stdout) == bool(left_out)
    data = load(tmp_path / "run")
    marked = data.marked_firings
    assert len(marked) == fired - left_out == len(set(marked))
    assert marked[0] == data.firings[0] and marked[-1] == data.firings[-1]
    assert (tmp_path / "plots" / "throughput.png").stat().st_size > 1000
    with Image.open(tmp_path / "plots" / "throughput.png") as image:
        image.verify()
