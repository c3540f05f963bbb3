"""``el run`` as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def el(*args, cwd=None):
    return subprocess.run([*_el_command(), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_bundled_example_runs_from_the_repository(tmp_path):
    out = el("run", "examples/sweep.json", "--out", tmp_path / "run", "--json",
             tmp_path / "results.json", cwd=REPO)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 40
    assert all(r["state"] == "succeeded" for r in results.values())
    assert "40 tasks" in out.stderr and "40 succeeded, 0 failed" in out.stderr


def test_exit_status_is_1_when_a_task_fails_and_failures_are_listed(tmp_path):
    ens = write(tmp_path / "e.json", {"ensembles": {"codes": {
        "cmd_template": "sh -c 'exit {code}'", "code": [0, 0, 4]}}})
    out = el("run", ens, "--out", tmp_path / "run")
    assert out.returncode == 1
    assert "2 succeeded, 1 failed" in out.stderr
    assert "codes-2: failed (exit_code) exited with status 4" in out.stderr


def test_plain_status_lines_when_not_on_a_terminal(tmp_path):
    ens = write(tmp_path / "e.json", {"ensembles": {"naps": {
        "cmd_template": "sleep {t}", "t": [0.3] * 8}}})
    cfg = write(tmp_path / "launcher.json", {"report_interval": 0.2})
    out = el("run", ens, "--launcher-config", cfg, "--out", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("[el] ")]
    assert len(lines) >= 3
    assert lines[-1].startswith("[el] 8/8 finished, 0 failed")
    assert "tasks/s" in lines[0]


def test_rich_progress_display_when_forced(tmp_path):
    ens = write(tmp_path / "e.json", {"ensembles": {"quick": {
        "cmd_template": "true {i}", "i": "range(5)"}}})
    out = el("run", ens, "--progress", "--out", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    assert "quick" in out.stderr and "5/5" in out.stderr and "0 failed" in out.stderr
    assert "[el] " not in out.stderr


def test_system_config_file_limits_the_cores(tmp_path):
    ens = write(tmp_path / "e.json", {"ensembles": {"pin": {
        "cmd_template": sys.executable + " -c 'import os; print(sorted(os.sched_getaffinity(0)))'"
                        " {i}", "i": "range(4)"}}})
    sys_cfg = write(tmp_path / "system.yaml", {"name": "one", "cpus": [0]})
    (tmp_path / "system.yaml").write_text("name: one\ncpus: [0]\n")
    out = el("run", ens, "--system-config", sys_cfg, "--return-stdout", "--json",
             tmp_path / "r.json", "--out", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "r.json").read_text()).values()
    assert {r["stdout"] for r in results} == {"[0]\n"}
    assert {tuple(r["cpus"]) for r in results} == {(0,)}


def test_help_lists_run():
    out = el("--help")
    assert out.returncode == 0 and "run" in out.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _start_sleepers(tmp_path):
    ens = write(tmp_path / "e.json", {"ensembles": {"nap": {
        "cmd_template": "sh -c 'echo $$ > " + str(tmp_path) + "/pid.{i}; exec sleep 60'",
        "i": "range(6)"}}})
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    cfg = write(tmp_path / "launcher.json", {"shutdown_grace": 1})
    proc = subprocess.Popen([*cmd, "run", str(ens), "--out", str(tmp_path / "run"),
                             "--launcher-config", str(cfg)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("pid.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in tmp_path.glob("pid.*")]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    return proc, pids


def _wait_gone(pids, seconds=15.0):
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_running_tasks_and_exits_130(tmp_path, sig):
    proc, pids = _start_sleepers(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert "el resume" in err
    assert _wait_gone(pids) == []


def test_sigusr1_prints_the_launchers_stack_and_the_run_goes_on(tmp_path):
    proc, pids = _start_sleepers(tmp_path)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert proc.poll() is None and all(_alive(pid) for pid in pids)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert "most recent call first" in err and "ensemble_launcher" in err
    assert proc.returncode == 130


def test_tasks_do_not_outlive_a_killed_launcher(tmp_path):
    proc, pids = _start_sleepers(tmp_path)
    proc.kill()
    proc.communicate(timeout=30)
    assert _wait_gone(pids) == []


def _el_command():
    exe = shutil.which("el")
    return [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]


def _el_lines(stderr: str) -> list[str]:
    """The lines el itself wrote (not its status lines)."""
    return [line for line in stderr.splitlines() if line.startswith("el: ")]


def _wait_exit(procs, timeout=60.0):
    """The first of ``procs`` to exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                return proc
        time.sleep(0.05)
    raise AssertionError("no launcher exited in time")


def test_two_launchers_on_one_run_directory_run_each_task_once(tmp_path):
    release = tmp_path / "release"
    ens = write(tmp_path / "e.json", {"ensembles": {"hold": {
        "cmd_template": f"sh -c 'echo {{i}} >> {tmp_path}/ran; "
                        f"while [ ! -e {release} ]; do sleep 0.05; done'",
        "i": "range(4)"}}})
    run_dir = tmp_path / "run"
    procs = [subprocess.Popen([*_el_command(), "run", str(ens), "--out", str(run_dir)],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    loser = _wait_exit(procs)
    (winner,) = [p for p in procs if p is not loser]
    err = loser.communicate(timeout=30)[1]
    assert loser.returncode == 2, err
    assert _el_lines(err) == [line for line in err.splitlines() if line.strip()]
    assert f"run directory {run_dir} is in use by another launcher (pid {winner.pid}" in err
    resumed = el("resume", run_dir)
    assert resumed.returncode == 2
    assert f"{run_dir} is in use by another launcher (pid {winner.pid}" in resumed.stderr
    release.touch()
    err = winner.communicate(timeout=60)[1]
    assert winner.returncode == 0, err
    assert sorted((tmp_path / "ran").read_text().split()) == ["0", "1", "2", "3"]
    assert "4 tasks" in err and "4 succeeded, 0 failed" in err


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB filesystem (tmpfs; mounting needs root, which CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_with_one_message_and_resume_finishes_it(tmp_path,
                                                                          small_disk):
    ens = write(tmp_path / "e.json", {"ensembles": {"big": {
        "cmd_template": "sh -c 'yes x | head -c 200000' {i}", "i": "range(60)"}}})
    run_dir = small_disk / "run"
    out = el("run", ens, "--out", run_dir, "--return-stdout")
    assert out.returncode == 4, out.stderr
    assert "Traceback" not in out.stderr and "Errno" not in out.stderr
    (message,) = _el_lines(out.stderr)
    assert "disk is full" in message and f"el resume {run_dir}" in message
    assert not list(run_dir.glob(".*tmp*"))
    from ensemble_launcher.store import Results

    before = {r.task_id: r.start_time for r in Results(run_dir).values()}
    assert 0 < len(before) < 60
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = el("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    after = Results(run_dir)
    assert after.counts() == {"succeeded": 60}
    assert all(after[tid].start_time == start and len(after.attempts(tid)) == 1
               for tid, start in before.items())


def _real_run(directory: Path) -> Path:
    ens = write(directory / "e.json", {"ensembles": {"one": {
        "cmd_template": "true {i}", "i": "range(3)"}}})
    out = el("run", ens, "--out", directory / "run")
    assert out.returncode == 0, out.stderr
    return directory / "run"


def _sqlite(path: Path, *statements: str) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def _broken_run_dir(kind: str, tmp_path: Path) -> Path:
    """A run directory that el resume, status and report must refuse, as ``kind`` says."""
    run_dir = tmp_path / "run"
    journal = run_dir / "journal.db"
    if kind == "missing":
        return run_dir
    if kind in ("newer", "truncated"):
        _real_run(tmp_path)
        if kind == "newer":
            _sqlite(journal, "PRAGMA user_version = 99")
        else:
            with open(journal, "r+b") as f:
                f.truncate(4096)
        return run_dir
    run_dir.mkdir()
    if kind == "empty":
        journal.write_bytes(b"")
    elif kind == "corrupt":
        journal.write_bytes(b"these bytes are no database " * 200)
    elif kind == "foreign":
        _sqlite(journal, "CREATE TABLE users (name TEXT)", "INSERT INTO users VALUES ('a')")
    elif kind == "older":
        _sqlite(journal, "CREATE TABLE results (seq INTEGER, task_id TEXT, state TEXT)",
                "CREATE TABLE attempts (seq INTEGER, task_id TEXT, state TEXT)",
                "CREATE TABLE meta (key TEXT, value TEXT)")
    return run_dir


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("command", ["resume", "status", "report"])
@pytest.mark.parametrize("kind", ["missing", "no journal", "empty", "corrupt", "foreign",
                                  "older", "newer", "truncated"])
def test_a_run_directory_that_is_not_a_readable_journal_is_one_clear_error(tmp_path, kind,
                                                                            command):
    run_dir = _broken_run_dir(kind, tmp_path)
    before = _snapshot(tmp_path)
    out = el(command, run_dir)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    (message,) = out.stderr.splitlines()
    assert message.startswith("el: error: ") and str(run_dir) in message
    assert _snapshot(tmp_path) == before


def test_json_that_cannot_be_written_is_refused_before_anything_runs(tmp_path):
    ens = write(tmp_path / "e.json", {"ensembles": {"one": {
        "cmd_template": f"touch {tmp_path}/ran{{i}}", "i": "range(2)"}}})
    for target, why in [(tmp_path / "e.json" / "r.json", "is not a directory"),
                        (tmp_path / "e.json" / "deeper" / "r.json", "is not a directory"),
                        (tmp_path, "is a directory")]:
        out = el("run", ens, "--out", tmp_path / "run", "--json", target)
        assert out.returncode == 2
        assert str(target) in out.stderr and why in out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "run").exists() and not list(tmp_path.glob("ran*"))


def test_json_into_directories_still_to_be_made_is_written_after_the_run(tmp_path):
    """As the README's first command does on a fresh clone: el-runs/ does not exist yet."""
    ens = write(tmp_path / "e.json", {"ensembles": {"one": {
        "cmd_template": "true {i}", "i": "range(2)"}}})
    target = tmp_path / "not" / "yet" / "r.json"
    out = el("run", ens, "--out", tmp_path / "run", "--json", target)
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(target.read_text())) == ["one-0", "one-1"]


def test_resume_shows_tasks_finished_earlier_as_skipped_not_pending(tmp_path):
    ens = write(tmp_path / "e.json", {"ensembles": {"codes": {
        "cmd_template": "sh -c 'sleep 0.2; exit {code}'", "code": [0, 0, 0, 1, 1, 1]}}})
    cfg = write(tmp_path / "launcher.json", {"report_interval": 0.1})
    assert el("run", ens, "--launcher-config", cfg, "--out", tmp_path / "run").returncode == 1
    out = el("resume", tmp_path / "run", "--retry-failed")
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("[el] ")]
    assert lines and all("3 skipped (finished earlier)" in line for line in lines)
    assert all(int(line.split(" pending")[0].rsplit(" ", 1)[1]) <= 3 for line in lines)
    assert lines[-1].startswith("[el] 6/6 finished, 3 failed, 3 skipped")


_INJECT = """
import sys
import {module} as target

def broken(*args, **kwargs):
    raise RuntimeError("injected fault")

{target} = broken
from ensemble_launcher.cli import main
main(sys.argv[1:], prog_name="el")
"""


@pytest.mark.parametrize(("module", "target", "log"), [
    ("ensemble_launcher.orchestrator.ledger", "target.Ledger.take", "run/logs/master-main.log"),
    ("ensemble_launcher.launcher", "target.load_tasks", "el-internal-error-{pid}.log"),
], ids=["during the run", "before the run"])
def test_an_internal_error_exits_3_with_one_line_and_the_traceback_in_a_log(tmp_path, module,
                                                                            target, log):
    """A bug is not "a task failed" (1) nor "bad input" (2). We inject one, since we know
    of none to trigger."""
    ens = write(tmp_path / "e.json", {"ensembles": {"one": {
        "cmd_template": "true {i}", "i": "range(2)"}}})
    proc = subprocess.Popen(
        [sys.executable, "-c", _INJECT.format(module=module, target=target), "run", str(ens),
         "--out", str(tmp_path / "run")], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)})
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    (message,) = _el_lines(err)
    log_path = tmp_path / log.format(pid=proc.pid)
    assert "internal error" in message and "RuntimeError: injected fault" in message
    assert message.endswith(f"the traceback is in {log_path}")
    assert "Traceback" in log_path.read_text() and "injected fault" in log_path.read_text()
