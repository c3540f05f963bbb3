"""The root learns when a long task starts, long before its result comes: the nodes name
the tasks they see running with their running reports, and the ledger tells its observer
(the rules engine's ``job-run``). Real runs, on this host, with and without a tree."""

from __future__ import annotations

import pytest

import ensemble_launcher.launcher
from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.orchestrator.ledger import Ledger

SLOW = [f"slow-{i}" for i in range(2)]
QUICK = [f"quick-{i}" for i in range(12)]


class _StartWatcher:
    """A TaskObserver that keeps when each task was said to start (root's clock)."""

    def __init__(self) -> None:
        self.starts: dict[str, list[float]] = {}

    def submitted(self, task: Task, at: float) -> None:
        pass

    def handed_out(self, task: Task, at: float, fresh: bool) -> None:
        pass

    def started(self, task: Task, at: float, entered: float) -> None:
        self.starts.setdefault(task.task_id, []).append(at)

    def finished(self, task: Task, result: object, entered: float) -> None:
        pass

    def done_before(self, task: Task, state: str) -> None:
        pass


@pytest.fixture
def watcher(monkeypatch) -> _StartWatcher:
    """The run's Ledger, built by the launcher as always, with our observer on it (the
    hook the rules engine uses: ``Ledger.observer``)."""
    watching = _StartWatcher()

    class WatchedLedger(Ledger):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.observer = watching

    monkeypatch.setattr(ensemble_launcher.launcher, "Ledger", WatchedLedger)
    return watching


def _tasks() -> dict[str, Task]:
    tasks = [Task(task_id=name, executable="sleep 2", ensemble="slow") for name in SLOW]
    tasks += [Task(task_id=name, executable="true", ensemble="quick") for name in QUICK]
    return {t.task_id: t for t in tasks}


@pytest.mark.parametrize("tree", [{"nlevels": 0}, {"nlevels": 1}, {"nlevels": 2, "nchildren": 2}],
                         ids=["nlevels0", "nlevels1", "nlevels2"])
def test_a_long_task_is_reported_started_long_before_it_ends(tmp_path, watcher, tree):
    """nlevels 0: the node's sink is the ledger; 1: through main; 2: and a sub-master."""
    nodes = ["localhost"] * (1 if tree["nlevels"] == 0 else 2)
    results = EnsembleLauncher(_tasks(), Nodes=nodes, launcher_config=LauncherConfig(**tree),
                               out_dir=tmp_path / "run").run()
    assert all(results[name].ok for name in (*SLOW, *QUICK))
    for name in SLOW:
        assert len(watcher.starts.get(name, [])) == 1, f"{name}: {watcher.starts}"
        (at,) = watcher.starts[name]
        end = results[name].end_time
        assert end is not None and at <= end - 1.0, \
            f"{name} reported started at {at}, {end - at:.2f} s before its end"
    assert all(len(times) == 1 for times in watcher.starts.values()), \
        f"a task reported started twice: {watcher.starts}"
