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
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


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
