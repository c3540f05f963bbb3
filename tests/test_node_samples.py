"""Node samples: every worker samples its node's CPU and memory use each
node_sample_interval, the samples go up the tree to the journal, and el report plots them."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.comm import NodeSamples, ProtocolError, decode
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import StoreError
from ensemble_launcher.monitor.report import DPI, FIGSIZE
from ensemble_launcher.states import NodeSample
from ensemble_launcher.store import RunStore
from ensemble_launcher.store.journal import check_journal
from ensemble_launcher.store.queries import node_samples

HERE = socket.gethostname()
INTERVAL = 0.2
TASK_SECONDS = 1.5
#: Per depth: the nodes of the tree, and the names their samples carry.
TREES = {0: ([HERE], ["main"]),
         1: ([HERE, HERE], ["main.w0", "main.w1"]),
         2: ([HERE, HERE], ["main.m0.w0", "main.m1.w0"])}


def el(*args, **kwargs) -> subprocess.CompletedProcess:
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120,
                          **kwargs)


def _run(out: Path, nlevels: int, interval: float) -> Path:
    """One task of TASK_SECONDS per node, on one core each."""
    nodes, _ = TREES[nlevels]
    tasks = {f"t{i}": Task(task_id=f"t{i}", executable=f"sleep {TASK_SECONDS}")
             for i in range(len(nodes))}
    EnsembleLauncher(tasks, SystemConfig(ncpus=1),
                     LauncherConfig(nlevels=nlevels, nchildren=2 if nlevels == 2 else None,
                                    node_sample_interval=interval),
                     Nodes=nodes, out_dir=out).run()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("sampled")
    return {nlevels: _run(base / f"nlevels{nlevels}", nlevels, INTERVAL) for nlevels in TREES}


def _by_node(samples: list[NodeSample]) -> dict[str, list[NodeSample]]:
    by: dict[str, list[NodeSample]] = {}
    for sample in samples:
        by.setdefault(sample.node, []).append(sample)
    return by


@pytest.mark.parametrize("nlevels", sorted(TREES))
def test_every_node_is_sampled_at_about_the_interval_from_its_start_to_its_end(runs, nlevels):
    run_dir = runs[nlevels]
    samples = node_samples(run_dir)
    by_node = _by_node(samples)
    assert sorted(by_node) == TREES[nlevels][1]
    with sqlite3.connect(run_dir / "journal.db") as conn:
        ends = [end for (end,) in conn.execute("SELECT end_time FROM results")]
        hosts = {host for (host,) in conn.execute("SELECT host FROM results")}
    assert {s.host for s in samples} == hosts
    for node, taken in by_node.items():
        times = [s.at for s in taken]
        assert times == sorted(times)
        assert len(taken) >= 4, f"{node}: {len(taken)} samples in a {TASK_SECONDS} s task"
        assert times[0] < min(ends), f"{node}: no sample at its start"
        assert times[-1] >= min(ends), f"{node}: no sample at its end"
        gaps = [b - a for a, b in zip(times[:-2], times[1:-1], strict=True)]
        assert min(gaps) >= INTERVAL - 0.01, f"{node} sampled more often than asked: {gaps}"
        assert statistics.median(gaps) <= 5 * INTERVAL, f"{node}: gaps {gaps}"
        for s in taken:
            assert 0.0 <= s.cpu_percent <= 100.0
            assert 0 < s.mem_used <= s.mem_total


def test_an_interval_of_0_samples_nothing(tmp_path):
    run_dir = _run(tmp_path / "run", 0, 0)
    assert node_samples(run_dir) == []
    out = el("report", run_dir, "--out", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    assert "node samples: none" in out.stdout
    assert (tmp_path / "plots" / "nodes.png").stat().st_size > 1000


def test_samples_since_a_time_are_the_later_ones(runs):
    samples = node_samples(runs[1])
    middle = samples[len(samples) // 2].at
    assert node_samples(runs[1], since=middle) == [s for s in samples if s.at > middle]
    with sqlite3.connect(runs[1] / "journal.db") as conn:
        assert node_samples(conn, since=middle) == [s for s in samples if s.at > middle]


def test_el_report_plots_cpu_and_memory_of_every_node(runs, tmp_path):
    out = el("report", runs[1], "--out", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    count = len(node_samples(runs[1]))
    assert f"node samples: {count} of 2 node(s) (nodes.png): CPU mean" in out.stdout
    assert "memory used at most" in out.stdout
    path = tmp_path / "plots" / "nodes.png"
    assert f"wrote {path}" in out.stdout
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


def test_a_journal_from_before_node_samples_reads_as_none_and_a_resume_adds_the_table(
        runs, tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(runs[0], run_dir)
    with sqlite3.connect(run_dir / "journal.db") as conn:
        conn.execute("DROP TABLE node_samples")
    check_journal(run_dir, read_all=True)
    assert node_samples(run_dir) == []
    out = el("report", run_dir, "--out", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    assert "node samples: none" in out.stdout
    RunStore(run_dir).close()
    assert node_samples(run_dir) == []
    with sqlite3.connect(run_dir / "journal.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM node_samples").fetchone() == (0,)


def test_a_node_samples_table_of_another_version_is_a_clear_error(runs, tmp_path):
    run_dir = tmp_path / "other"
    shutil.copytree(runs[0], run_dir)
    with sqlite3.connect(run_dir / "journal.db") as conn:
        conn.execute("DROP TABLE node_samples")
        conn.execute("CREATE TABLE node_samples (at REAL, node TEXT)")
    with pytest.raises(StoreError, match="table 'node_samples' lacks cpu_percent"):
        check_journal(run_dir)


GOOD = [1796000000.5, "main.w0", "n1", 12.5, 1 << 30, 1 << 34]


@pytest.mark.parametrize("row", [
    GOOD[:5], [*GOOD, 1], [float("nan"), *GOOD[1:]], [*GOOD[:3], float("inf"), *GOOD[4:]],
    [*GOOD[:4], 1 << 35, 1 << 34], [*GOOD[:4], -1, 1 << 34], [*GOOD[:4], 0, 1 << 63],
    [*GOOD[:4], 1.5, 1 << 34], [GOOD[0], 7, *GOOD[2:]], [*GOOD[:3], "12", *GOOD[4:]],
], ids=["short", "long", "nan-time", "infinite-cpu", "more-used-than-total", "negative",
        "beyond-sqlite", "fraction-of-a-byte", "node-not-text", "cpu-not-a-number"])
def test_a_bad_node_sample_is_dropped_at_the_boundary(row):
    import msgpack

    assert decode(NodeSamples([GOOD]).encode()) == NodeSamples([GOOD])
    with pytest.raises(ProtocolError, match="NodeSamples.rows"):
        decode(msgpack.packb([NodeSamples.code, [GOOD, row]]))


@pytest.mark.parametrize("value", [-1, "nan", "inf"])
def test_a_bad_interval_is_one_line_naming_file_key_and_value(tmp_path, value):
    ensemble = tmp_path / "e.json"
    ensemble.write_text(json.dumps({"ensembles": {"e": {"cmd_template": "echo {a}",
                                                        "a": [1]}}}))
    config = tmp_path / "lc.yaml"
    config.write_text(f"node_sample_interval: {'.' if value != -1 else ''}{value}\n")
    out = el("run", ensemble, "--launcher-config", config, "--out", tmp_path / "run",
             "--no-progress")
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    for part in (str(config), "node_sample_interval", str(value)):
        assert part in out.stderr
    assert not (tmp_path / "run").exists()
