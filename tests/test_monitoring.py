"""Seeing a run: status (live and after), profiles, the Perfetto trace, report plots."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.monitor.report import DPI, FIGSIZE, PLOTS, load, write_report
from ensemble_launcher.monitor.status import read_status

CORES = [0, 1]


def el(*args, **kwargs):
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120,
                          **kwargs)


@pytest.fixture(scope="module")
def sleepers(tmp_path_factory):
    """40 x sleep 0.2 on 2 cores, profiled."""
    out = tmp_path_factory.mktemp("sleepers")
    tasks = {f"s{i}": Task(task_id=f"s{i}", executable="sleep 0.2") for i in range(40)}
    tasks["bad"] = Task(task_id="bad", executable="sh -c 'exit 2'")
    EnsembleLauncher(tasks, SystemConfig(cpus=CORES), LauncherConfig(profile="basic"),
                     out_dir=out / "run").run()
    return out / "run"


def test_report_numbers_match_what_ran(sleepers):
    data = load(sleepers)
    durations = data.ends - data.starts
    assert data.states == {"succeeded": 40, "failed": 1}
    assert abs(float(sorted(durations)[20]) - 0.2) < 0.05
    busy = float(durations.sum())
    assert 8.0 <= busy < 9.5
    expected = busy / (2 * data.span)
    assert data.utilization == pytest.approx(expected, rel=1e-6)
    assert 0.85 < data.utilization <= 1.0
    assert 4.0 <= data.span < 6.0


def test_el_report_writes_pngs_of_the_expected_size_and_a_summary(sleepers, tmp_path):
    out = el("report", sleepers, "--out", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    assert "tasks: 41 (40 succeeded, 1 failed)" in out.stdout
    assert "utilization:" in out.stdout and "failures: 1 exit_code" in out.stdout
    for name in PLOTS:
        path = tmp_path / "plots" / name
        assert path.stat().st_size > 1000
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


def test_trace_has_one_complete_event_per_task_on_node_and_core_tracks(sleepers):
    trace = json.loads((sleepers / "profiles" / "trace.json").read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert sorted(e["name"] for e in events) == sorted([f"s{i}" for i in range(40)] + ["bad"])
    assert {e["tid"] for e in events} == set(CORES)
    assert all(e["dur"] > 0 and e["ts"] >= 0 for e in events)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M"}
    assert {"core 0", "core 1"} <= names


def test_basic_profile_has_runtimes_and_latencies(sleepers):
    basic = json.loads((sleepers / "profiles" / "basic.json").read_text())
    assert basic["task_runtime_s"]["count"] == 41
    assert 0.15 < basic["task_runtime_s"]["mean"] < 0.25
    for key in ("dispatch_latency_s", "result_latency_s", "overhead_per_task_s"):
        assert basic[key]["count"] == 41 and basic[key]["mean"] >= 0


def test_timeline_profile_has_event_statistics_for_each_process(tmp_path):
    tasks = {f"t{i}": Task(task_id=f"t{i}", executable="true") for i in range(20)}
    EnsembleLauncher(tasks, Nodes=["localhost"], out_dir=tmp_path / "run",
                     launcher_config=LauncherConfig(profile="timeline", nlevels=1)).run()
    profiles = tmp_path / "run" / "profiles"
    main = json.loads((profiles / "timeline-main.json").read_text())
    assert {"receive", "assign", "record", "wait"} <= set(main["events"])
    assert all({"mean", "std", "sum", "count"} <= set(v) for v in main["events"].values())
    worker = json.loads((profiles / "timeline-main.w0.json").read_text())
    assert {"dispatch", "wait", "collect"} <= set(worker["events"])
    assert (profiles / "trace.json").exists()


def test_status_of_a_finished_run(sleepers):
    status = read_status(sleepers)
    assert status.state == "finished"
    (tasks,) = status.ensembles
    assert (tasks.total, tasks.done, tasks.failed, tasks.running, tasks.pending) == \
        (41, 40, 1, 0, 0)
    out = el("status", sleepers)
    assert out.returncode == 0
    assert "finished" in out.stdout and "40 done, 1 failed" in out.stdout


def _start(tmp_path: Path, ensemble: dict, config: dict) -> subprocess.Popen:
    (tmp_path / "e.json").write_text(json.dumps({"ensembles": ensemble}))
    (tmp_path / "lc.json").write_text(json.dumps(config))
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.Popen([*cmd, "run", str(tmp_path / "e.json"), "--out",
                             str(tmp_path / "run"), "--launcher-config", str(tmp_path / "lc.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_status_during_a_run_and_after_an_interruption(tmp_path):
    proc = _start(tmp_path, {"quick": {"cmd_template": "true {i}", "i": "range(4)"},
                             "naps": {"cmd_template": "sleep {t}", "t": [0.5] * 12}},
                  {"report_interval": 0.2, "shutdown_grace": 0})

    def live():
        try:
            s = read_status(tmp_path / "run")
        except Exception:  # noqa: BLE001 - the journal may not exist yet
            return False
        return s.state == "running" and s.ensembles[1].done >= 2 and s.ensembles[1].running

    try:
        _wait_for(live)
        during = el("status", tmp_path / "run", "--json")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    data = json.loads(during.stdout)
    assert data["state"] == "running"
    naps = data["ensembles"][1]
    # "running" counts what the nodes report as started: one task between two may show.
    assert naps["name"] == "naps" and naps["total"] == 12 and naps["running"] >= 1
    assert naps["done"] + naps["running"] + naps["queued"] + naps["pending"] == 12
    assert proc.returncode == 130
    after = read_status(tmp_path / "run")
    assert after.state == "interrupted"
    quick, naps = after.ensembles
    assert (quick.done, quick.failed) == (4, 0)
    assert naps.done + naps.not_run + naps.pending == 12 and naps.running == 0
    assert naps.not_run >= 2, "at least the two tasks cut off by a zero grace period"
    assert "interrupted" in el("status", tmp_path / "run").stdout


def test_plain_status_lines_per_ensemble(tmp_path):
    proc = _start(tmp_path, {"a": {"cmd_template": "sleep {t}", "t": [0.2] * 4},
                             "b": {"cmd_template": "true {i}", "i": "range(3)"}},
                  {"report_interval": 0.2})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "[el]   a: 4/4 finished, 0 failed, 0 running, 0 pending" in err
    assert "[el]   b: 3/3 finished" in err


def test_report_on_a_bad_directory_is_a_clear_error(tmp_path):
    out = el("report", tmp_path)
    assert out.returncode == 2 and "not a run directory" in out.stderr
    out = el("status", tmp_path)
    assert out.returncode == 2 and "not a run directory" in out.stderr


def test_write_report_into_the_run_directory(sleepers):
    paths, lines = write_report(sleepers)
    assert [p.parent for p in paths] == [sleepers / "report"] * len(PLOTS)
    assert lines[0].startswith("tasks: 41")


def test_status_during_a_resume_counts_tasks_finished_earlier_as_skipped(tmp_path):
    release = tmp_path / "release"
    proc = _start(tmp_path, {"gate": {
        "cmd_template": f"sh -c 'test {{i}} -lt 2 || while [ ! -e {release} ]; "
                        "do sleep 0.05; done'", "i": "range(4)"}},
        {"report_interval": 0.2, "shutdown_grace": 0})
    _wait_for(lambda: _live(tmp_path / "run", lambda e: e.done == 2 and e.running == 2))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    resumed = subprocess.Popen([*cmd, "resume", str(tmp_path / "run")],
                               stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _live(tmp_path / "run", lambda e: e.running == 2))
    (gate,) = read_status(tmp_path / "run").ensembles
    assert (gate.skipped, gate.done, gate.running, gate.pending) == (2, 0, 2, 0)
    assert "2 skipped (finished earlier), 2 running, 0 pending" in \
        el("status", tmp_path / "run").stdout
    release.touch()
    resumed.communicate(timeout=60)
    assert resumed.returncode == 0


def _live(run_dir: Path, check) -> bool:
    try:
        status = read_status(run_dir)
    except Exception:  # noqa: BLE001 - the journal may not exist yet
        return False
    return status.state == "running" and check(status.ensembles[0])
