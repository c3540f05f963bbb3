"""The benchmark script runs and reports a ratio against its baseline (speed is not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_core.py"


def test_quick_benchmark_prints_ratios_against_baselines():
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "callables",
                          "--only", "shell"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ProcessPoolExecutor" in out.stdout and "xargs" in out.stdout
    rows = [line for line in out.stdout.splitlines()
            if line.endswith(("PASS", "MISS")) and "tasks/s" in line]
    assert len(rows) == 2, out.stdout


TREE = BENCH.with_name("bench_tree.py")


def test_tree_benchmark_measures_a_round_trip_against_bare_zmq():
    out = subprocess.run([sys.executable, str(TREE), "--quick", "--only", "latency"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ERROR" not in out.stdout, out.stdout
    assert "bare ZMQ CURVE ping-pong" in out.stdout and "one-task round trip" in out.stdout


CLUSTER = BENCH.with_name("bench_cluster.py")


def test_cluster_benchmark_runs_every_measurement_against_its_baseline():
    out = subprocess.run([sys.executable, str(CLUSTER), "--quick", "--tasks", "200",
                          "--trips", "20", "--links", "20", "--idle-seconds", "1",
                          "--map-tasks", "500"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ERROR" not in out.stdout, out.stdout
    for printed in ("ProcessPoolExecutor(", "EnsembleLauncher(dict of Task).run()",
                    "client waiting for each link", "idle ProcessPoolExecutor worker",
                    "peak RSS: head"):
        assert printed in out.stdout, out.stdout
    rows = [line for line in out.stdout.splitlines() if line.endswith(("PASS", "MISS"))]
    assert len(rows) == 9, out.stdout


MONITORING = BENCH.with_name("bench_monitoring.py")


def test_monitoring_benchmark_compares_monitoring_on_and_off():
    out = subprocess.run([sys.executable, str(MONITORING), "--quick", "--callables", "300",
                          "--commands", "30"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ERROR" not in out.stdout, out.stdout
    assert "the runner's cost of measuring one call" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.endswith(("PASS", "MISS"))]
    assert len(rows) == 2, out.stdout


RULES = BENCH.with_name("bench_rules.py")


def test_rules_benchmark_runs_against_the_same_run_without_rules():
    out = subprocess.run([sys.executable, str(RULES), "--quick"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ERROR" not in out.stdout, out.stdout
    assert "20 rules vs none" in out.stdout and "ratio" in out.stdout
