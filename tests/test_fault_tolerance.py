"""Nothing lost: worker deaths, timeouts, retries, graceful and hard stops, resume, walltime.

Tasks append their id to a file when they finish, so the file proves how often each ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
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


def _el(*args, env=None, own_group: bool = False) -> subprocess.Popen:
    """``el`` as a subprocess; with ``own_group``, in a process group of its own, as a
    batch job's processes are, so that the test can signal the whole group."""
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.Popen([*cmd, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=own_group)


def _processes() -> Iterator[tuple[int, list[str]]]:
    """Every process as (pid, its /proc stat fields after the name: state, ppid, pgrp...)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            yield int(entry.name), stat.rsplit(")", 1)[1].split()


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the tree's children of a root)."""
    return [child for child, fields in _processes() if int(fields[1]) == pid]


def _running_in_group(pgid: int) -> list[int]:
    """The processes of a process group that still run (zombies do not)."""
    return [pid for pid, fields in _processes() if int(fields[2]) == pgid and fields[0] != "Z"]


def _signal_job(root: int, sig: int) -> None:
    """Signal the process group of ``root`` and those of its children (the tree's
    children have groups of their own), as a batch system signals a whole job."""
    children = _children_of(root)
    os.killpg(root, sig)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, sig)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_until(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _one_lane(tmp_path: Path, **launcher: object) -> list[str]:
    """Config options for a run on one core, so that the test knows what is running."""
    system = tmp_path / "system.json"
    system.write_text(json.dumps({"name": "one", "cpus": sorted(os.sched_getaffinity(0))[:1]}))
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps(launcher))
    return ["--system-config", str(system), "--launcher-config", str(config)]


def _work_ensemble(tmp_path: Path, template: str, n: int) -> Path:
    """An ensemble file of ``n`` tasks ``work-<i>`` running ``template``."""
    ens = tmp_path / "e.json"
    ens.write_text(json.dumps({"ensembles": {"work": {"cmd_template": template,
                                                      "i": f"range({n})"}}}))
    return ens


def _appending_ensemble(tmp_path: Path, n: int, seconds: float) -> Path:
    log = tmp_path / "ran.txt"
    return _work_ensemble(tmp_path, f"sh -c 'sleep {seconds}; echo work-{{i}} >> {log}'", n)


def _localhost_job(tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment of a one-node batch job on this host (so that nlevels=1 works)."""
    (tmp_path / "nodes").write_text("localhost\n")
    return {**os.environ, "PBS_NODEFILE": str(tmp_path / "nodes"), **env}


def _wait_for_lines(path: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(ran(path).values()) < n and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("nlevels", [0, 1])
@pytest.mark.parametrize("whole_group", [False, True], ids=["root", "whole-group"])
def test_sigterm_drains_then_resume_runs_each_task_exactly_once(tmp_path, nlevels,
                                                                whole_group):
    """SIGTERM to el, or to every process of the job's group, runners and children of the
    tree included, as Slurm, PBS and `timeout` do at walltime."""
    ens = _appending_ensemble(tmp_path, 40, 0.3)
    cfg = tmp_path / "lc.json"
    cfg.write_text(json.dumps({"shutdown_grace": 20, "nlevels": nlevels}))
    env = _localhost_job(tmp_path)
    proc = _el("run", ens, "--out", tmp_path / "run", "--launcher-config", cfg, env=env,
               own_group=whole_group)
    _wait_for_lines(tmp_path / "ran.txt", 6)
    if whole_group:
        _signal_job(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"el resume {tmp_path / 'run'}" in err
    first = Results(tmp_path / "run").counts()
    assert first["succeeded"] >= 6
    assert first.get("failed", 0) == 0 and first.get("lost", 0) == 0, \
        "the grace period lets running tasks finish"
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


def test_a_task_killed_by_the_shutdown_signal_is_not_run_and_resume_runs_it(tmp_path):
    """Slurm signals every process of the job, tasks included: a task that dies of that
    SIGTERM was interrupted, not failed."""
    pids, marker, log = tmp_path / "pids", tmp_path / "fast", tmp_path / "ran.txt"
    ens = _work_ensemble(tmp_path, f"sh -c 'echo $$ >> {pids}; test -e {marker} || sleep 60; "
                                   f"echo work-{{i}} >> {log}'", 4)
    proc = _el("run", ens, "--out", tmp_path / "run", *_one_lane(tmp_path), own_group=True)
    assert _wait_until(lambda: pids.exists() and pids.read_text().strip())
    task_group = os.getpgid(int(pids.read_text().split()[0]))
    os.killpg(proc.pid, signal.SIGTERM)
    os.killpg(task_group, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    first = Results(tmp_path / "run")
    assert set(first.counts()) == {"not_run"}, err
    assert (first["work-0"].state, first["work-0"].reason) == ("not_run", "interrupted")
    assert "killed by SIGTERM" in first["work-0"].exception

    marker.touch()
    again = _el("resume", tmp_path / "run")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert Results(tmp_path / "run").counts() == {"succeeded": 4}
    assert ran(log) == Counter({f"work-{i}": 1 for i in range(4)})


@pytest.mark.parametrize("nlevels", [0, 1])
def test_a_killed_runner_has_its_command_stopped_and_run_again(tmp_path, nlevels):
    """A runner's death is the node's fault, not the task's: its command must not go on
    unmanaged, and the task runs again under node_loss_retries, even with retries=0."""
    started, marker, log = tmp_path / "started", tmp_path / "once", tmp_path / "ran.txt"
    ens = _work_ensemble(tmp_path, f"test ! -e {marker} && touch {marker} && echo $PPID $$ "
                                   f">> {started} && sleep 60; echo work-{{i}} >> {log}", 1)
    env = _localhost_job(tmp_path)
    proc = _el("run", ens, "--out", tmp_path / "run",
               *_one_lane(tmp_path, nlevels=nlevels, retries=0, kill_grace=1), env=env)
    assert _wait_until(lambda: started.exists() and started.read_text().strip())
    runner, command = map(int, started.read_text().split())
    os.kill(runner, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert _wait_until(lambda: _gone(command)), "the first command went on unmanaged"
    r = Results(tmp_path / "run")
    assert (r["work-0"].state, r["work-0"].attempt) == ("succeeded", 2)
    first = r.attempts("work-0")[0]
    assert (first.state, first.reason) == ("lost", "worker_lost")
    assert "killed by signal 9" in first.exception
    assert ran(log) == Counter({"work-0": 1})


def test_losing_the_only_worker_is_an_interrupted_run_that_resume_continues(tmp_path):
    ens = _appending_ensemble(tmp_path, 20, 0.3)
    env = _localhost_job(tmp_path)
    proc = _el("run", ens, "--out", tmp_path / "run", *_one_lane(tmp_path, nlevels=1),
               env=env)
    _wait_for_lines(tmp_path / "ran.txt", 2)
    (worker,) = _children_of(proc.pid)
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err
    assert "every child is gone" in err and f"el resume {tmp_path / 'run'}" in err
    first = Results(tmp_path / "run")
    assert first.meta()["interrupted"] is True
    assert set(first.counts()) <= {"succeeded", "not_run"}, first.counts()
    assert first.counts()["not_run"] >= 1
    done_before = {r.task_id for r in first.values() if r.state == "succeeded"}

    again = _el("resume", tmp_path / "run", env=env)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert Results(tmp_path / "run").counts() == {"succeeded": 20}
    total = ran(tmp_path / "ran.txt")
    assert set(total) == {f"work-{i}" for i in range(20)}
    assert not {tid for tid, n in total.items() if n > 1} & done_before


def test_kill_9_of_the_root_stops_the_worker_at_once_and_removes_the_ipc_dir(tmp_path):
    started = tmp_path / "started"
    ens = _work_ensemble(tmp_path, f"sh -c 'echo work-{{i}} >> {started}; sleep 0.3'", 200)
    sockets = tmp_path / "t"
    sockets.mkdir()
    env = _localhost_job(tmp_path, TMPDIR=str(sockets))
    proc = _el("run", ens, "--out", tmp_path / "run",
               *_one_lane(tmp_path, nlevels=1, heartbeat_interval=10), env=env)
    _wait_for_lines(started, 3)
    (worker,) = _children_of(proc.pid)
    assert list(sockets.glob("el-*"))
    proc.kill()
    at_kill = sum(ran(started).values())
    proc.communicate(timeout=30)
    assert _wait_until(lambda: _gone(worker)), "the worker outlived its parent"
    assert sum(ran(started).values()) - at_kill <= 2, "the worker went on starting tasks"
    assert not list(sockets.glob("el-*")), "the ipc socket directory was left behind"


def test_the_kill_grace_reaches_a_program_run_through_the_shell(tmp_path):
    """At a timeout the whole group gets SIGTERM and kill_grace to exit, even when the
    group's leader is the /bin/sh that shell syntax needs and dies at once."""
    script, cleaned = tmp_path / "handler.sh", tmp_path / "cleaned"
    script.write_text("trap 'sleep 0.5; echo cleaned > \"$1\"; exit 0' TERM\n"
                      "echo ready > \"$1.ready\"\n"
                      "while :; do sleep 0.05; done\n")
    tasks = {"t": Task(task_id="t", executable=f"sh {script} {cleaned}; echo after",
                       timeout=2)}
    r = EnsembleLauncher(tasks, out_dir=tmp_path / "run",
                         launcher_config=LauncherConfig(kill_grace=20)).run()
    assert r["t"].state == "timed_out"
    assert (tmp_path / "cleaned.ready").exists(), "the task never started its loop"
    assert cleaned.read_text() == "cleaned\n", "SIGKILL came before the TERM handler ran"


def test_timeouts_longer_than_poll_can_wait_are_kept(tmp_path):
    """poll() takes at most 2**31 ms (24.8 days); longer timeouts must still just work."""
    month = 30 * 86400.0
    tasks = {"cmd": Task(task_id="cmd", executable="sh -c 'echo hi >&2'", timeout=month),
             "call": Task(task_id="call", executable=append_id,
                          args=(str(tmp_path / "ran.txt"), "call", 0.0), timeout=1e12)}
    r = EnsembleLauncher(tasks, out_dir=tmp_path / "run").run()
    assert r.counts() == {"succeeded": 2}, [(x.task_id, x.exception) for x in r.values()]
    assert r["cmd"].stderr == "hi\n"


def nothing() -> None:
    return None


def test_after_two_runner_deaths_only_the_running_commands_are_lost(tmp_path):
    """Tasks queued behind a command whose runner died go back and keep their keys; the
    next death on that lane must still blame the command that was running, not the task
    with the smallest key (which never started)."""
    started = tmp_path / "started"

    def kills_its_runner_once(name: str) -> Task:
        marker = tmp_path / f"{name}.killed"
        return Task(task_id=name, executable=(
            f"echo {name} >> {started}; test -e {marker} && exit 0; "
            f"touch {marker}; kill -9 $PPID; sleep 30"))

    tasks = {"warm": Task(task_id="warm", executable=nothing),
             "victim": kills_its_runner_once("victim"),
             "a": Task(task_id="a", executable=f"echo a >> {started}; sleep 0.1"),
             "b": kills_its_runner_once("b")}
    cpu = sorted(os.sched_getaffinity(0))[:1]
    r = EnsembleLauncher(tasks, out_dir=tmp_path / "run",
                         system_config=SystemConfig(name="one", cpus=cpu),
                         launcher_config=LauncherConfig(kill_grace=1)).run()
    assert r.counts() == {"succeeded": 4}, [(x.task_id, x.exception) for x in r.values()]
    assert [a.state for a in r.attempts("victim")] == ["lost", "succeeded"]
    assert [a.state for a in r.attempts("b")] == ["lost", "succeeded"]
    assert [a.state for a in r.attempts("a")] == ["succeeded"], \
        "a task that never started was recorded as lost with its runner"
    assert ran(started)["a"] == 1


def test_a_worker_declared_lost_has_its_command_stopped_not_left_running(tmp_path):
    """A worker that hangs (SIGSTOP here) is lost; its runners still get the cancel signal
    and stop its command (whose TERM handler runs) before the worker is killed."""
    marker, pids, cleaned = tmp_path / "stalled", tmp_path / "pids", tmp_path / "cleaned"
    stall = (f"if mkdir {marker} 2>/dev/null; then "
             f"trap 'echo cleaned >> {cleaned}; exit 0' TERM; echo $$ >> {pids}; "
             "kill -STOP $(ps -o ppid= -p $PPID); while :; do sleep 0.1; done; fi; sleep 0.2")
    tasks = {f"t{i}": Task(task_id=f"t{i}", executable=["sh", "-c", stall]) for i in range(12)}
    try:
        r = EnsembleLauncher(tasks, Nodes=["localhost"] * 2, out_dir=tmp_path / "run",
                             launcher_config=LauncherConfig(
                                 nlevels=1, heartbeat_interval=0.3, kill_grace=2)).run()
        assert r.counts() == {"succeeded": 12}
        (command,) = map(int, pids.read_text().split())
        assert not _running_in_group(command), "the lost worker's command went on unmanaged"
        assert cleaned.read_text() == "cleaned\n", "the command was not stopped by SIGTERM"
    finally:
        _kill_groups_of(pids)


def test_a_worker_told_to_stop_gets_the_kill_grace_its_command_needs(tmp_path):
    """The root stops (SIGTERM, no shutdown grace): its worker, told to stop, gives the
    command's TERM handler kill_grace seconds, longer than any fixed wait of the master;
    when el exits, no process of the command is left."""
    pids, cleaned, script = tmp_path / "pids", tmp_path / "cleaned", tmp_path / "slow.sh"
    script.write_text(f"trap 'sleep 18; echo cleaned >> {cleaned}; exit 0' TERM\n"
                      f"echo $$ >> {pids}\n"
                      "while :; do sleep 0.1; done\n")
    ens = _work_ensemble(tmp_path, f"sh {script} {{i}}", 1)
    proc = _el("run", ens, "--out", tmp_path / "run",
               *_one_lane(tmp_path, nlevels=1, shutdown_grace=0, kill_grace=22),
               env=_localhost_job(tmp_path))
    try:
        assert _wait_until(lambda: pids.exists() and pids.read_text().strip())
        (command,) = map(int, pids.read_text().split())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert not _running_in_group(command), "the command outlived the run"
        assert cleaned.read_text() == "cleaned\n", "SIGKILL came before the TERM handler ended"
    finally:
        proc.kill()
        proc.communicate()
        _kill_groups_of(pids)


def _kill_groups_of(pids: Path) -> None:
    """Leave no stray process behind when a test fails."""
    for pid in map(int, pids.read_text().split() if pids.exists() else []):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
