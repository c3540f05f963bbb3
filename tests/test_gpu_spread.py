"""GPU slots on one node: tasks spread over distinct devices before two share one.

Each task reports the ids its selector variable gave it, once every task of the test runs
at the same time (a barrier on files), so the ids seen are those of concurrent tasks."""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.scheduler import spread_gpu_ids

CORES = sorted(os.sched_getaffinity(0))

BARRIER = """import os, sys, time
selector, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(os.path.join(folder, str(os.getpid())), "w").close()
deadline = time.monotonic() + 60
while len(os.listdir(folder)) < n and time.monotonic() < deadline:
    time.sleep(0.01)
print(os.environ[selector], len(os.listdir(folder)) >= n)
"""


def run_together(tmp_path, n, selector, cpus, gpus, ngpus=1, pin=True):
    """``n`` tasks of ``ngpus`` GPU slots each, on a node of ``cpus`` and ``gpus``: the ids
    each task saw while all ran at once."""
    script = tmp_path / "barrier.py"
    script.write_text(BARRIER)
    folder = tmp_path / "started"
    folder.mkdir()
    tasks = {f"g{i}": Task(task_id=f"g{i}", ngpus_per_process=ngpus,
                           executable=[sys.executable, str(script), selector, str(folder), str(n)])
             for i in range(n)}
    results = EnsembleLauncher(
        tasks, SystemConfig(name="gpus", cpus=cpus, gpus=gpus),
        LauncherConfig(gpu_selector=selector), pin_resources=pin, return_stdout=True,
        out_dir=tmp_path / "run").run()
    seen = []
    for r in results.values():
        assert r.state == "succeeded", r.stderr
        ids, together = r.stdout.split()
        assert together == "True", "the tasks did not run at the same time"
        assert ids == ",".join(r.gpus)
        seen.append(ids)
    return seen


@pytest.mark.skipif(len(CORES) < 2, reason="needs 2 usable cores")
@pytest.mark.parametrize("selector", ["CUDA_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"])
def test_two_one_gpu_tasks_get_different_devices_of_an_overloaded_node(tmp_path, selector):
    seen = run_together(tmp_path, 2, selector, CORES[:2], ["0", "0", "1", "1"])
    assert sorted(seen) == ["0", "1"]


def test_each_device_takes_a_second_task_only_when_all_have_one(tmp_path):
    """Four lanes (unpinned, so they need not be real cores), two devices of two slots."""
    seen = run_together(tmp_path, 4, "CUDA_VISIBLE_DEVICES", [0, 1, 2, 3],
                        ["0", "0", "1", "1"], pin=False)
    assert Counter(seen) == {"0": 2, "1": 2}


def test_three_tasks_on_three_doubled_devices_get_one_device_each(tmp_path):
    seen = run_together(tmp_path, 3, "CUDA_VISIBLE_DEVICES", [0, 1, 2],
                        ["0", "0", "1", "1", "2", "2"], pin=False)
    assert sorted(seen) == ["0", "1", "2"]


def test_a_multi_gpu_task_gets_distinct_devices(tmp_path):
    seen = run_together(tmp_path, 1, "CUDA_VISIBLE_DEVICES", CORES[:1], ["0", "0", "1", "1"],
                        ngpus=2)
    assert seen == ["0,1"]


def test_a_multi_node_task_reserves_distinct_devices_on_each_node():
    """The ids a master reserves on every node of a multi-node task (orchestrator.gangs)."""
    assert spread_gpu_ids(["0", "0", "1", "1"], 2) == ["0", "1"]
    assert spread_gpu_ids(["0", "0", "1", "1"], 3) == ["0", "0", "1"]
    assert spread_gpu_ids(["0", "1", "2", "3"], 2) == ["0", "1"]
