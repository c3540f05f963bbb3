"""What each task used (CPU time, peak RSS), measured on real processes of known use:
recorded in the journal, read from TaskResult, exported to JSON, summarized by el report."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.store import Results, RunStore, write_results_to_json
from ensemble_launcher.store.journal import JOURNAL_NAME, check_journal
from ensemble_launcher.store.queries import usage_summary

MIB = 2**20
ALLOCATED = 200 * MIB
#: Touches every page of 200 MiB, so that they are resident.
ALLOCATE_COMMAND = (f"{sys.executable} -c 'b = bytearray({ALLOCATED}); "
                    "b[::4096] = b\"x\" * len(b[::4096])'")
#: Burns one second of CPU (process time, so that a loaded machine cannot make it less).
BUSY_COMMAND = (f"{sys.executable} -c 'import time\nend = time.process_time() + 1.0\n"
                "while time.process_time() < end: pass'")


def busy_second() -> None:
    end = time.process_time() + 1.0
    while time.process_time() < end:
        pass


def allocate_and_burn() -> int:
    block = bytearray(ALLOCATED)
    block[::4096] = b"x" * len(block[::4096])
    busy_second()
    return len(block)


def nothing() -> None:
    return None


def run(tasks: list[Task], out: Path, cpus: int = 2, **config) -> Results:
    return EnsembleLauncher({t.task_id: t for t in tasks}, SystemConfig(ncpus=cpus),
                            LauncherConfig(**config), out_dir=out).run()


def cpu_seconds(result) -> float:
    return result.cpu_user + result.cpu_system


def el(*args) -> subprocess.CompletedProcess:
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """A command that allocates 200 MiB, a command and a callable that burn 1 s of CPU,
    a `true`, and one failing command, in two ensembles."""
    out = tmp_path_factory.mktemp("usage") / "run"
    run([Task(task_id="alloc", executable=ALLOCATE_COMMAND, ensemble="commands"),
         Task(task_id="busy-command", executable=BUSY_COMMAND, ensemble="commands"),
         Task(task_id="true", executable="true", ensemble="commands"),
         Task(task_id="fails", executable="sh -c 'exit 3'", ensemble="commands"),
         Task(task_id="busy-callable", executable=busy_second, ensemble="callables")], out)
    return out


def test_a_command_allocating_200_mib_shows_that_peak_rss(measured):
    alloc = Results(measured)["alloc"]
    assert alloc.ok
    assert abs(alloc.max_rss - ALLOCATED) <= 0.1 * ALLOCATED


def test_a_one_second_busy_loop_shows_at_least_0_9_s_of_cpu(measured):
    results = Results(measured)
    assert cpu_seconds(results["busy-command"]) >= 0.9
    assert cpu_seconds(results["busy-callable"]) >= 0.9
    assert cpu_seconds(results["true"]) < 0.5


def test_a_failed_command_has_its_usage_too(measured):
    fails = Results(measured)["fails"]
    assert fails.state == "failed" and fails.returncode == 3
    assert fails.max_rss > 0 and fails.cpu_user is not None


def test_a_callables_usage_is_its_own_call_not_the_one_before(tmp_path):
    """One lane: the small call runs in the runner right after the big one."""
    results = run([Task(task_id="big", executable=allocate_and_burn),
                   Task(task_id="small", executable=nothing)], tmp_path / "run", cpus=1)
    big, small = results["big"], results["small"]
    assert big.value == ALLOCATED
    assert cpu_seconds(big) >= 0.9 and cpu_seconds(small) < 0.1
    assert big.max_rss - small.max_rss >= 0.9 * ALLOCATED


def test_a_command_that_times_out_still_reports_what_it_used(tmp_path):
    task = Task(task_id="slow", executable=BUSY_COMMAND.replace("1.0", "30.0"), timeout=1.5)
    slow = run([task], tmp_path / "run", kill_grace=1.0)["slow"]
    assert slow.state == "timed_out"
    assert cpu_seconds(slow) > 0 and slow.max_rss > 0


def test_usage_comes_through_the_tree(tmp_path):
    results = run([Task(task_id="busy-command", executable=BUSY_COMMAND),
                   Task(task_id="busy-callable", executable=busy_second)],
                  tmp_path / "run", nlevels=1)
    assert all(cpu_seconds(r) >= 0.9 and r.max_rss > 0 for r in results.values())


def test_resource_usage_off_records_none(tmp_path):
    results = run([Task(task_id="c", executable="true"), Task(task_id="p", executable=nothing)],
                  tmp_path / "run", resource_usage=False)
    for result in results.values():
        assert result.ok
        assert (result.cpu_user, result.cpu_system, result.max_rss) == (None, None, None)
    assert usage_summary(tmp_path / "run") == []


def test_results_json_exports_the_usage(measured, tmp_path):
    write_results_to_json(Results(measured), tmp_path / "results.json")
    exported = json.loads((tmp_path / "results.json").read_text())
    assert abs(exported["alloc"]["max_rss"] - ALLOCATED) <= 0.1 * ALLOCATED
    assert exported["busy-callable"]["cpu_user"] + exported["busy-callable"]["cpu_system"] >= 0.9


def test_usage_summary_per_ensemble(measured):
    by_name = {s.ensemble: s for s in usage_summary(measured)}
    assert set(by_name) == {"commands", "callables"}
    commands, callables = by_name["commands"], by_name["callables"]
    assert commands.measured == 4 and callables.measured == 1
    assert abs(commands.max_max_rss - ALLOCATED) <= 0.1 * ALLOCATED
    assert commands.mean_max_rss < commands.max_max_rss
    assert commands.cpu_seconds >= 0.9
    # One core each: the busy callable kept its core busy about all its wall time.
    assert 0.5 < callables.cpu_efficiency <= 1.05


def test_el_report_prints_the_usage_summary(measured, tmp_path):
    out = el("report", measured, "--out", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("resource use of")]
    assert len(lines) == 2, out.stdout
    commands = next(line for line in lines if "resource use of commands (4 tasks)" in line)
    assert "peak RSS mean" in commands and "efficiency" in commands


def _drop_usage_columns(run_dir: Path) -> None:
    """Make the journal what a version before resource accounting wrote."""
    with sqlite3.connect(run_dir / JOURNAL_NAME) as conn:
        for table in ("results", "attempts"):
            for column in ("cpu_user", "cpu_system", "max_rss"):
                conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def test_an_old_journal_without_the_columns_reads_as_not_measured(tmp_path):
    out = tmp_path / "run"
    run([Task(task_id="c", executable="true"), Task(task_id="p", executable=nothing)], out)
    _drop_usage_columns(out)
    check_journal(out, read_all=True)
    results = Results(out)
    assert {r.task_id: (r.state, r.max_rss, r.cpu_user) for r in results.values()} == \
        {"c": ("succeeded", None, None), "p": ("succeeded", None, None)}
    assert results["c"].max_rss is None and results.attempts("p")[0].cpu_system is None
    assert usage_summary(out) == []
    report = el("report", out, "--out", tmp_path / "plots")
    assert report.returncode == 0, report.stderr
    assert "resource use: not measured" in report.stdout


def test_writing_to_an_old_journal_adds_the_columns(tmp_path):
    """A resume opens the old journal to write: its old rows stay unmeasured, new ones
    carry what they used."""
    out = tmp_path / "run"
    run([Task(task_id="c", executable="true")], out)
    _drop_usage_columns(out)
    with RunStore(out) as store:
        store.add(("d", None, 1, "succeeded", None, 0, None, 1.0, 2.0, "h", "0", "", None,
                   0.25, 0.5, 4 * MIB))
    results = Results(out)
    assert results["c"].max_rss is None
    assert (results["d"].cpu_user, results["d"].cpu_system, results["d"].max_rss) == \
        (0.25, 0.5, 4 * MIB)
