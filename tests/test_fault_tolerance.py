"""Nothing lost: worker deaths, timeouts, retries, graceful and hard stops, resume, walltime.

Tasks append their id to a file when they finish, so the file proves how often each ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.store import Results


def append_id(path: str, task_id: str, seconds: float = 0.05) -> str:
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(task_id + "\n")
    return task_id


def die_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def flaky(marker: str, failures: int) -> str:
    count = int(Path(marker).read_text()) if os.path.exists(marker) else 0
    Path(marker).write_text(str(count + 1))
    if count < failures:
        raise RuntimeError(f"failure {count + 1}")
    return "finally"


def ran(path: Path) -> Counter:
    return Counter(path.read_text().split()) if path.exists() else Counter()


@pytest.mark.parametrize("nlevels", [0, 1])
def test_a_killed_python_worker_fails_or_retries_only_its_task(tmp_path, nlevels):
    log = tmp_path / "ran.txt"
    tasks = {f"t{i}": Task(task_id=f"t{i}", executable=append_id, args=(str(log), f"t{i}"))
             for i in range(60)}
    tasks["victim"] = Task(task_id="victim", executable=die_once,
                           args=(str(tmp_path / "died"),))
    nodes = None if nlevels == 0 else ["localhost"]
    r = EnsembleLauncher(tasks, Nodes=nodes, out_dir=tmp_path / "run",
                         launcher_config=LauncherConfig(nlevels=nlevels, retries=1)).run()
    assert len(r) == 61 and r.counts() == {"succeeded": 61}
    first, second = r.attempts("victim")
    assert (first.state, first.reason) == ("failed", "worker_lost")
    assert "killed by signal 9" in first.exception
    assert second.value == "survived"
    assert ran(log) == Counter({f"t{i}": 1 for i in range(60)})


def test_timeouts_and_retries_with_every_attempt_recorded(tmp_path):
    tasks = {
        "hang": Task(task_id="hang", executable="sleep 60", timeout=0.5),
        "flaky": Task(task_id="flaky", executable=flaky, args=(str(tmp_path / "count"), 2)),
        "broken": Task(task_id="broken", executable="sh -c 'exit 3'", retries=1),
    }
    start = time.monotonic()
    r = EnsembleLauncher(tasks, out_dir=tmp_path / "run", launcher_config=LauncherConfig(
        retries=2, retry_on=["exception", "exit_code"], kill_grace=0.5)).run()
    assert time.monotonic() - start < 30
    assert (r["hang"].state, r["hang"].attempt) == ("timed_out", 1)
    assert (r["flaky"].state, r["flaky"].attempt, r["flaky"].value) == ("succeeded", 3, "finally")
    attempts = r.attempts("flaky")
    assert [a.state for a in attempts] == ["failed", "failed", "succeeded"]
    assert [a.exception for a in attempts[:2]] == ["RuntimeError: failure 1",
                                                   "RuntimeError: failure 2"]
    assert [a.attempt for a in r.attempts("broken")] == [1, 2]
    assert r["broken"].state == "failed"


def test_results_reach_the_journal_while_the_run_goes_on(tmp_path):
    ens = tmp_path / "e.json"
    ens.write_text(json.dumps({"ensembles": {"steps": {
        "cmd_template": "sh -c 'sleep {t}'", "t": [0.01] * 4 + [3.0]}}}))
    proc = _el("run", ens, "--out", tmp_path / "run")
    try:
        deadline = time.monotonic() + 20
        seen = 0
        while time.monotonic() < deadline and seen < 4:
            seen = _journal_count(tmp_path / "run")
            time.sleep(0.05)
        assert seen == 4 and proc.poll() is None
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def _journal_count(run_dir: Path) -> int:
    path = run_dir / "journal.db"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _el(*args, env=None) -> subprocess.Popen:
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.Popen([*cmd, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _appending_ensemble(tmp_path: Path, n: int, seconds: float) -> Path:
    ens = tmp_path / "e.json"
    log = tmp_path / "ran.txt"
    ens.write_text(json.dumps({"ensembles": {"work": {
        "cmd_template": f"sh -c 'sleep {seconds}; echo work-{{i}} >> {log}'",
        "i": f"range({n})"}}}))
    return ens


def _wait_for_lines(path: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(ran(path).values()) < n and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("nlevels", [0, 1])
def test_sigterm_drains_then_resume_runs_each_task_exactly_once(tmp_path, nlevels):
    ens = _appending_ensemble(tmp_path, 40, 0.3)
    cfg = tmp_path / "lc.json"
    cfg.write_text(json.dumps({"shutdown_grace": 20, "nlevels": nlevels}))
    env = {**os.environ, "PBS_NODEFILE": str(tmp_path / "nodes")}
    (tmp_path / "nodes").write_text("localhost\n")
    proc = _el("run", ens, "--out", tmp_path / "run", "--launcher-config", cfg, env=env)
    _wait_for_lines(tmp_path / "ran.txt", 6)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "not run" in err and f"el resume {tmp_path / 'run'}" in err
    first = Results(tmp_path / "run").counts()
    assert first["not_run"] > 0 and first["succeeded"] >= 6
    assert first.get("failed", 0) == 0, "the grace period lets running tasks finish"
    assert sum(first.values()) < 40, "tasks never handed out get no row"
    assert Results(tmp_path / "run").meta()["interrupted"] is True

    again = _el("resume", tmp_path / "run", env=env)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert Results(tmp_path / "run").counts() == {"succeeded": 40}
    assert ran(tmp_path / "ran.txt") == Counter({f"work-{i}": 1 for i in range(40)})


def test_sigkill_of_the_root_then_resume_reruns_only_what_was_running(tmp_path):
    ens = _appending_ensemble(tmp_path, 40, 0.2)
    proc = _el("run", ens, "--out", tmp_path / "run")
    _wait_for_lines(tmp_path / "ran.txt", 8)
    proc.kill()
    proc.communicate(timeout=30)
    time.sleep(0.5)
    done_before = {r.task_id for r in Results(tmp_path / "run").values()
                   if r.state == "succeeded"}
    assert done_before
    ran_before = ran(tmp_path / "ran.txt")

    again = _el("resume", tmp_path / "run")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert Results(tmp_path / "run").counts() == {"succeeded": 40}
    total = ran(tmp_path / "ran.txt")
    assert set(total) == {f"work-{i}" for i in range(40)}
    twice = {tid for tid, n in total.items() if n > 1}
    assert all(n <= 2 for n in total.values())
    assert not twice & done_before, "a task the journal had as succeeded ran again"
    assert twice <= set(ran_before), "only tasks that were running at the kill may run twice"


def test_resume_retries_failed_tasks_only_when_asked(tmp_path):
    ens = tmp_path / "e.json"
    marker = tmp_path / "fixed"
    ens.write_text(json.dumps({"ensembles": {"mixed": {
        "cmd_template": f"sh -c 'test {{ok}} = 1 || test -e {marker}'", "ok": [1, 1, 0]}}}))
    first = _el("run", ens, "--out", tmp_path / "run")
    first.communicate(timeout=60)
    assert first.returncode == 1
    marker.touch()
    plain = _el("resume", tmp_path / "run")
    plain.communicate(timeout=60)
    assert Results(tmp_path / "run").counts() == {"succeeded": 2, "failed": 1}
    retry = _el("resume", tmp_path / "run", "--retry-failed")
    retry.communicate(timeout=60)
    assert retry.returncode == 0
    r = Results(tmp_path / "run")
    assert r.counts() == {"succeeded": 3}
    assert [a.state for a in r.attempts("mixed-2")] == ["failed", "succeeded"]


def test_tasks_longer_than_the_walltime_left_are_not_started(tmp_path):
    tasks = {"short": Task(task_id="short", executable="true", estimated_runtime=1),
             "long": Task(task_id="long", executable="true", estimated_runtime=3600),
             "unknown": Task(task_id="unknown", executable="true")}
    r = EnsembleLauncher(tasks, out_dir=tmp_path / "run",
                         launcher_config=LauncherConfig(walltime=600)).run()
    assert r["short"].state == "succeeded" and r["unknown"].state == "succeeded"
    assert (r["long"].state, r["long"].reason) == ("not_run", "walltime")
    assert "exceeds the" in r["long"].exception
