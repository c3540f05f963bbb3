"""Rules in a running cluster: added by a client from Python, with a Python callable as the
custom action, and carried by the cluster's own ensemble file. Real heads, real clients."""

from __future__ import annotations

import json
import time
from concurrent.futures import wait
from pathlib import Path

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.orchestrator import ClusterClient
from ensemble_launcher.rules import Action, Rule
from ensemble_launcher.store import Results


def square(x: int) -> int:
    return x * x


def _until(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path):
    def start(ensemble=None):
        launcher = EnsembleLauncher(
            {} if ensemble is None else ensemble, SystemConfig(name="local", ncpus=2),
            LauncherConfig(cluster=True, checkpoint_dir=str(tmp_path / "ck"), nlevels=0))
        started.append(launcher.start())
        return launcher

    started: list[EnsembleLauncher] = []
    yield start
    for launcher in started:
        launcher.stop(timeout=60)


def test_a_rule_added_to_a_live_cluster_calls_a_python_function(tmp_path, cluster):
    marker = tmp_path / "fired"

    def note(event=None, metrics=None, **kwargs):
        marker.write_text(f"{event.trigger} {event.group} {metrics.get('count.sq.success')}")

    cluster()
    with ClusterClient(tmp_path / "ck") as client:
        early = [client.submit(Task(task_id=f"sq-{i}", executable=square, args=(i,),
                                    ensemble="sq")) for i in range(2)]
        wait(early)
        client.add_rule(Rule(trigger="metric", name="count.sq.success", when=">= 4",
                             action=Action("custom", func=note)))
        late = [client.submit(Task(task_id=f"sq-{i}", executable=square, args=(i,),
                                   ensemble="sq")) for i in range(2, 4)]
        assert [f.result(timeout=60) for f in late] == [4, 9]
        _until(marker.exists)
    assert marker.read_text() == "metric sq 4", "the counts before the rule were not kept"


def test_a_rule_cancels_a_group_of_a_live_cluster(tmp_path, cluster):
    cluster()
    with ClusterClient(tmp_path / "ck") as client:
        client.add_rule(Rule(trigger="job-run", name="slow",
                             action=Action("cancel", label="slow")))
        slow = [client.submit(Task(task_id=f"slow-{i}", executable=["sleep", "60"],
                                   tag="slow")) for i in range(3)]
        wait(slow, timeout=30)
        assert all(f.cancelled() or f.exception(timeout=1) for f in slow)
    states = {r.task_id: r.state for r in Results(tmp_path / "ck").values()}
    assert states == {f"slow-{i}": "cancelled" for i in range(3)}


def test_a_cluster_started_with_rules_in_its_ensemble_file(tmp_path, cluster):
    path = tmp_path / "steered.json"
    path.write_text(json.dumps({
        "ensembles": {"first": {"cmd_template": "echo {x}", "x": [1, 2, 3]},
                      "then": {"cmd_template": "echo {x}", "x": [4, 5]}},
        "rules": [{"trigger": "metric", "name": "count.first.success", "when": 3,
                   "action": {"name": "submit", "label": "then"}}]}))
    cluster(str(path))
    _until(lambda: len([r for r in Results(tmp_path / "ck").values()
                        if r.state == "succeeded"]) == 5, timeout=60)
    groups = sorted(r.ensemble for r in Results(tmp_path / "ck").values())
    assert groups == ["first"] * 3 + ["then"] * 2
