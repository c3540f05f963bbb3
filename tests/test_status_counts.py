"""The live counts tell tasks running on a node from tasks queued there: a node reports
what runs on it, so "running" never exceeds its cores."""

from __future__ import annotations

import os
import re

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.monitor import Counts
from ensemble_launcher.monitor.progress import Reporter

CORES = sorted(os.sched_getaffinity(0))


class Samples(Reporter):
    """Every update the root makes, as (running, queued, finished, status line)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, str]] = []

    def update(self, counts: Counts) -> None:
        self.seen.append((counts.running, sum(counts.queued_by.values()), counts.finished(),
                          counts.line()))


@pytest.mark.skipif(len(CORES) < 2, reason="needs 2 usable cores")
@pytest.mark.parametrize("nlevels", [0, 1])
def test_status_shows_at_most_one_running_task_per_core_and_the_rest_waiting(tmp_path,
                                                                             nlevels):
    samples = Samples()
    tasks = {f"t{i}": Task(task_id=f"t{i}", executable="sleep 0.3") for i in range(8)}
    results = EnsembleLauncher(
        tasks, SystemConfig(name="two", cpus=CORES[:2]), LauncherConfig(nlevels=nlevels),
        Nodes=["localhost"] if nlevels else None, out_dir=tmp_path / "run",
        reporter=samples).run()
    assert results.counts() == {"succeeded": 8}
    assert samples.seen
    for running, queued, finished, line in samples.seen:
        assert running <= 2, line
        assert running + queued + finished <= 8, line
        assert f"{running} running" in line
        assert (f"{queued} queued" in line) == (queued > 0), line
        shown = [int(n) for n in re.findall(r"(\d+) (?:running|queued|pending)", line)]
        assert sum(shown) + finished == 8, line
    assert any(running == 2 and finished < 6 for running, _, finished, _ in samples.seen), \
        [line for *_, line in samples.seen]
    assert samples.seen[-1][:3] == (0, 0, 8)
