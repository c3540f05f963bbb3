"""Review of issue 12 (event rules): failing cases found in review, on real runs."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

from test_rules_cluster import _until
from test_rules_run import EL, by_group, interrupt_after_two_successes, run_file, write

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.store import Results


def test_custom_action_returning_a_submit_of_no_group_fails_its_firing_only(tmp_path):
    path = write(tmp_path / "bad-action.yaml", """\
        jobs:
          - {name: work, command: "true", count: 2}
        rules:
          - {trigger: start, action: {name: submit, label: work}}
          - {trigger: job-success, name: work, action: {name: custom, label: oops}}
        custom: |
          def oops(**kwargs):
              return Action({"name": "submit", "label": "nosuchgroup"})
        """)
    results = run_file(path, tmp_path / "run")
    assert by_group(results) == {"work": 2}


def test_custom_action_returning_a_rule_on_no_group_fails_its_firing_only(tmp_path):
    path = write(tmp_path / "bad-rule.yaml", """\
        jobs:
          - {name: work, command: "true", count: 2}
        rules:
          - {trigger: start, action: {name: submit, label: work}}
          - {trigger: job-success, name: work, action: {name: custom, label: oops}}
        custom: |
          def oops(**kwargs):
              return Rule({"trigger": "start",
                           "action": {"name": "submit", "label": "nosuchgroup"}})
        """)
    results = run_file(path, tmp_path / "run")
    assert by_group(results) == {"work": 2}


def test_custom_returning_a_heartbeat_rule_in_a_run_without_heartbeat_still_ends(tmp_path):
    path = write(tmp_path / "beatless.yaml", """\
        jobs:
          - {name: work, command: "true", count: 1}
        rules:
          - {trigger: start, action: {name: submit, label: work}}
          - {trigger: job-success, name: work, action: {name: custom, label: later}}
        custom: |
          def later(**kwargs):
              return Rule({"trigger": "heartbeat", "action": {"name": "terminate"}})
        """)
    try:
        done = subprocess.run([*EL, "run", str(path), "--out", str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        raise AssertionError("the run never ended: a heartbeat rule with no heartbeat "
                             "keeps it waiting forever") from None
    assert done.returncode == 0, done.stderr


def test_resume_of_our_json_file_counts_the_stream_tasks_done_before(tmp_path):
    """Our file's groups run from the stream; on resume the tasks done before are skipped
    without an event, so count.coarse.success never reaches 6 and refine never runs."""
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({
        "ensembles": {
            "coarse": {"cmd_template": "sleep {x}", "x": [0.8] * 6},
            "refine": {"cmd_template": "echo {x}", "x": [1, 2]},
        },
        "rules": [{"trigger": "metric", "name": "count.coarse.success", "when": 6,
                   "action": {"name": "submit", "label": "refine"}}],
    }))
    run_dir = tmp_path / "run"
    interrupt_after_two_successes(path, run_dir)
    again = subprocess.run([*EL, "resume", str(run_dir)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert by_group(Results(run_dir)) == {"coarse": 6, "refine": 2}


def _cluster(tmp_path: Path) -> EnsembleLauncher:
    launcher = EnsembleLauncher(
        {}, SystemConfig(name="local", ncpus=2),
        LauncherConfig(cluster=True, checkpoint_dir=str(tmp_path / "ck"), nlevels=0))
    launcher.start()
    return launcher


def test_a_cluster_rule_counts_the_earlier_results_of_a_tag_group(tmp_path):
    """Groups are the tasks' ensemble, else their tag; the counts the first rule starts
    from are bucketed by ensemble only, so a tag group's earlier results are lost."""
    from concurrent.futures import wait

    from ensemble_launcher.ensemble import Task
    from ensemble_launcher.orchestrator import ClusterClient
    from ensemble_launcher.rules import Action, Rule

    marker = tmp_path / "fired"

    def note(**kwargs):
        marker.write_text("fired")

    launcher = _cluster(tmp_path)
    try:
        with ClusterClient(tmp_path / "ck") as client:
            wait([client.submit(Task(task_id=f"t-{i}", executable=["true"], tag="t"))
                  for i in range(2)])
            client.add_rule(Rule(trigger="metric", name="count.t.success", when=">= 4",
                                 action=Action("custom", func=note)))
            wait([client.submit(Task(task_id=f"t-{i}", executable=["true"], tag="t"))
                  for i in range(2, 4)])
            _until(marker.exists, timeout=20)
    finally:
        launcher.stop(timeout=60)


def _submit_of_nothing(**kwargs):
    from ensemble_launcher.rules import Action

    return Action("submit", label="nothing")


def test_a_cluster_custom_action_returning_a_submit_leaves_the_head_running(tmp_path):
    """A cluster's engine has no groups to submit: a callable that returns a submit must
    fail its firing, not the head."""
    from ensemble_launcher.ensemble import Task
    from ensemble_launcher.orchestrator import ClusterClient
    from ensemble_launcher.rules import Action, Rule

    launcher = _cluster(tmp_path)
    try:
        with ClusterClient(tmp_path / "ck") as client:
            client.add_rule(Rule(trigger="job-success",
                                 action=Action("custom", func=_submit_of_nothing)))
            first = client.submit(Task(task_id="a", executable=["true"], ensemble="g"))
            first.result(timeout=60)
            second = client.submit(Task(task_id="b", executable=["true"], ensemble="g"))
            second.result(timeout=60)
    finally:
        launcher.stop(timeout=60)


def test_a_cancel_rule_on_resume_never_turns_an_earlier_success_into_a_cancel(tmp_path):
    """The stream's cancel filter is checked before a task's earlier result: on resume a
    success of the first life is recorded again, as cancelled."""
    flag, script = tmp_path / "flag", tmp_path / "b.sh"
    script.write_text(f"test -f {flag} && sleep 0.5\n")
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({
        "ensembles": {
            "b": {"cmd_template": f"sh {script} {{x}}", "x": [1, 2]},
            "a": {"cmd_template": "echo {x}", "x": [1, 2]},
        },
        "rules": [{"trigger": "job-success", "name": "b",
                   "action": {"name": "cancel", "label": "a"}}],
    }))
    run_dir = tmp_path / "run"
    system = SystemConfig(name="local", ncpus=1)
    first = EnsembleLauncher(str(path), system, LauncherConfig(), out_dir=run_dir).run()
    assert Counter((r.ensemble, r.state) for r in first.values()) == \
        {("b", "failed"): 2, ("a", "succeeded"): 2}
    flag.write_text("")
    EnsembleLauncher(str(path), system, LauncherConfig(), out_dir=run_dir, resume=True,
                     retry_failed=True).run()
    results = Results(run_dir)
    assert {r.task_id: (r.state, r.attempt) for r in results.values()
            if r.ensemble == "a"} == {t: ("succeeded", 1) for t in
                                      (r.task_id for r in first.values() if r.ensemble == "a")}
