"""Event rules on real runs: ensemble-python's published examples (sleeps shortened), every
trigger and action, repetitions and backoff, custom actions, terminate and cancel mid-run,
a pending-time metric, rules in our own ensemble file.

Each run is a real ``el run`` of a file (in this process or as a subprocess): real
commands, the real ledger and journal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.errors import StoreError
from ensemble_launcher.monitor.status import read_status
from ensemble_launcher.store import Results
from ensemble_launcher.store.queries import firings

REPO = Path(__file__).resolve().parents[1]


def run_file(path: Path, out: Path, **config) -> Results:
    launcher = EnsembleLauncher(str(path), SystemConfig(name="local", ncpus=2),
                                LauncherConfig(**config), out_dir=out)
    return launcher.run()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def by_group(results: Results) -> Counter:
    return Counter(r.ensemble for r in results.values())


EL = [sys.executable, "-m", "ensemble_launcher.cli"]


def interrupt_after_two_successes(path: Path, run_dir: Path) -> None:
    """``el run path`` in a subprocess, stopped by SIGINT once two tasks succeeded."""
    first = subprocess.Popen([*EL, "run", str(path), "--out", str(run_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _successes(run_dir) < 2:
        time.sleep(0.1)
    first.send_signal(2)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr


def _successes(run_dir: Path) -> int:
    """Tasks succeeded so far; 0 while the run has not yet made its journal's tables."""
    try:
        return sum(r.state == "succeeded" for r in Results(run_dir).values())
    except StoreError:
        return 0


def fired(run_dir: Path) -> list:
    return list(firings(run_dir))


HELLO_WORLD = """\
    logging:
      debug: true
    jobs:
      - name: echo
        command: echo hello world
        count: 5
        nodes: 1
      - name: sleep
        command: sleep 0.3
        count: 5
        nodes: 1
    rules:
      - trigger: start
        action:
          name: submit
          label: sleep
      - trigger: metric
        name: count.sleep.success
        when: 3
        action:
          name: submit
          label: echo
    """


def test_hello_world_runs_unchanged_and_ends_by_itself(tmp_path):
    results = run_file(write(tmp_path / "hello-world.yaml", HELLO_WORLD), tmp_path / "run")
    assert by_group(results) == {"sleep": 5, "echo": 5}
    assert all(r.state == "succeeded" for r in results.values())
    sleeps = sorted(r.end_time for r in results.values() if r.ensemble == "sleep")
    first_echo = min(r.start_time for r in results.values() if r.ensemble == "echo")
    assert first_echo >= sleeps[2], "echo started before the third sleep succeeded"
    echo = next(r for r in results.values() if r.ensemble == "echo")
    assert echo.stdout is None or "hello world" in echo.stdout
    rules = [(f.trigger, f.action) for f in fired(tmp_path / "run")]
    assert rules == [("start", "submit"), ("metric", "submit")]


def test_terminate_example_exits_0_through_el_run(tmp_path):
    path = write(tmp_path / "terminate.yaml", """\
        logging:
          debug: false
        jobs:
          - name: echo
            command: echo hello world
            count: 5
            nodes: 1
          - name: sleep
            command: sleep 0.2
            count: 5
            nodes: 1
        rules:
          - trigger: start
            action: {name: submit, label: sleep}
          - trigger: metric
            name: count.sleep.success
            when: 3
            action: {name: submit, label: echo}
          - trigger: metric
            name: count.echo.success
            when: 5
            action: {name: terminate}
        """)
    out = subprocess.run([sys.executable, "-m", "ensemble_launcher.cli", "run", str(path),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    results = Results(tmp_path / "run")
    assert Counter(r.state for r in results.values() if r.ensemble == "echo") == \
        {"succeeded": 5}
    assert results.meta()["terminated"].startswith("rule")
    assert ("metric", "terminate") in [(f.trigger, f.action) for f in fired(tmp_path / "run")]


def test_terminate_mid_run_gives_running_tasks_the_grace_and_exits_0(tmp_path):
    path = write(tmp_path / "stop.yaml", """\
        jobs:
          - {name: long, command: sleep 60, count: 1}
          - {name: quick, command: "true", count: 3}
        rules:
          - {trigger: start, action: {name: submit, label: long}}
          - {trigger: start, action: {name: submit, label: quick}}
          - trigger: metric
            name: count.quick.success
            when: ">= 3"
            action: {name: terminate}
        """)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"shutdown_grace": 0.5}))
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ensemble_launcher.cli", "run", str(path),
                          "--launcher-config", str(config), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - began < 30
    results = Results(tmp_path / "run")
    states = {r.ensemble: r.state for r in results.values()}
    assert states == {"long": "not_run", "quick": "succeeded"}


BACKOFF = """\
    logging:
      debug: false
    jobs:
      - name: echo-repetition
        command: echo hello repetition
        count: 2
        nodes: 1
      - name: echo-backoff
        command: echo hello backoff
        count: 1
        nodes: 1
      - name: sleep
        command: sleep 0.1
        count: 5
        nodes: 1
    rules:
      - trigger: start
        action:
          name: submit
          label: sleep
      - trigger: job-finish
        name: sleep
        action:
          repetitions: 3
          name: submit
          label: echo-repetition
      - trigger: job-finish
        name: sleep
        action:
          repetitions: 3
          backoff: 2
          name: submit
          label: echo-backoff
    """


def test_backoff_example_counts_repetitions_and_backoff_periods(tmp_path):
    results = run_file(write(tmp_path / "backoff.yaml", BACKOFF), tmp_path / "run")
    # 5 sleeps finish: repetitions 3 -> 3 submissions of 2 tasks; backoff 2 fires at the
    # 1st and the 4th finish (two skipped between), its third repetition never comes.
    assert by_group(results) == {"sleep": 5, "echo-repetition": 6, "echo-backoff": 2}
    assert all(r.state == "succeeded" for r in results.values())


def test_heartbeat_example_runs_with_a_shorter_heartbeat(tmp_path):
    path = write(tmp_path / "heartbeat.yaml", """\
        logging:
          debug: false
          heartbeat: 0.3
        jobs:
          - {name: echo, command: echo hello world, count: 5, nodes: 1}
          - {name: sleep, command: sleep 0.2, count: 5, nodes: 1}
          - {name: big-sleep, command: sleep 10, count: 5, nodes: 1}
        rules:
          - {trigger: start, action: {name: submit, label: sleep}}
          - trigger: metric
            name: count.sleep.success
            when: 3
            action: {name: submit, label: echo}
          - trigger: metric
            name: count.sleep.success
            when: 3
            action: {name: submit, label: echo}
          - trigger: heartbeat
            action: {name: custom, label: beat, repetitions: 2}
        custom: |
          import time
          def beat(**kwargs):
              with open(BEATS, "a") as f:
                  f.write(f"{time.time()}\\n")
        """.replace("BEATS", repr(str(tmp_path / "beats"))))
    results = run_file(path, tmp_path / "run")
    assert by_group(results) == {"sleep": 5, "echo": 10}
    beats = [float(t) for t in (tmp_path / "beats").read_text().split()]
    assert len(beats) == 2 and beats[1] - beats[0] >= 0.25


def _noting(tmp_path: Path) -> str:
    return textwrap.indent(textwrap.dedent(f"""\
        def note(event=None, rule=None, **kwargs):
            with open({str(tmp_path / 'events')!r}, "a") as f:
                f.write(f"{{event.trigger}} {{event.group}} {{event.task_id}} {{event.at}}\\n")
        """), "  ")


def test_every_job_trigger_fires_for_its_group_only(tmp_path):
    triggers = ["job-depend", "job-sched", "job-run", "job-finish", "job-success",
                "job-fail", "job-cleanup"]
    rules = "\n".join(f"  - {{trigger: {t}, name: work, action: {{name: custom, label: note, "
                      f"repetitions: 100}}}}" for t in triggers)
    path = tmp_path / "triggers.yaml"
    path.write_text(
        "jobs:\n"
        "  - {name: work, command: sleep 1.5, count: 1}\n"
        "  - {name: work, command: \"false\", count: 1}\n"
        "  - {name: other, command: \"true\", count: 2}\n"
        "rules:\n"
        "  - {trigger: start, action: {name: submit, label: work}}\n"
        "  - {trigger: start, action: {name: submit, label: other}}\n"
        f"{rules}\n"
        "custom: |\n" + _noting(tmp_path))
    results = run_file(path, tmp_path / "run")
    events = [line.split() for line in (tmp_path / "events").read_text().splitlines()]
    assert {e[1] for e in events} == {"work"}
    seen = Counter(e[0] for e in events)
    assert seen == {"job-depend": 2, "job-sched": 2, "job-run": 2, "job-finish": 2,
                    "job-success": 1, "job-fail": 1, "job-cleanup": 2}
    sleeper = next(r for r in results.values() if r.ensemble == "work" and r.returncode == 0)
    run_at = next(float(e[3]) for e in events if e[0] == "job-run" and e[2] == sleeper.task_id)
    assert run_at < sleeper.end_time - 0.7, "job-run fired only when the long task ended"


def test_cancel_action_stops_running_and_pending_tasks_of_its_group(tmp_path):
    path = tmp_path / "cancel.yaml"
    path.write_text(
        "jobs:\n"
        "  - {name: slow, command: sleep 60, count: 3}\n"
        "rules:\n"
        "  - {trigger: start, action: {name: submit, label: slow}}\n"
        "  - {trigger: job-run, name: slow, action: {name: cancel, label: slow}}\n"
        "  - {trigger: job-cancel, action: {name: custom, label: note, repetitions: 10}}\n"
        "custom: |\n" + _noting(tmp_path))
    began = time.monotonic()
    results = run_file(path, tmp_path / "run")
    assert time.monotonic() - began < 30
    assert Counter((r.ensemble, r.state) for r in results.values()) == {("slow", "cancelled"): 3}
    cancels = (tmp_path / "events").read_text().splitlines()
    assert sum(line.startswith("job-cancel slow") for line in cancels) == 3
    (slow,) = read_status(tmp_path / "run").ensembles
    assert (slow.cancelled, slow.failed, slow.finished) == (3, 0, 3)


def test_custom_action_returning_an_action_and_a_rule(tmp_path):
    path = write(tmp_path / "custom.yaml", """\
        jobs:
          - {name: first, command: "true", count: 2}
          - {name: second, command: "true", count: 3}
          - {name: third, command: "true", count: 1}
        rules:
          - {trigger: start, action: {name: custom, label: begin}}
          - {trigger: job-success, name: first, action: {name: custom, label: extend}}
          - {trigger: job-success, name: first, action: {name: submit, label: second}}
        custom: |
          def begin(**kwargs):
              return Action({"name": "submit", "label": "first"})

          def extend(metrics=None, **kwargs):
              assert metrics.get("count.first.success") >= 1
              return Rule({"trigger": "metric", "name": "count.second.success", "when": 3,
                           "action": {"name": "submit", "label": "third"}})
        """)
    results = run_file(path, tmp_path / "run")
    assert by_group(results) == {"first": 2, "second": 3, "third": 1}
    third = next(r for r in results.values() if r.ensemble == "third")
    seconds = [r.end_time for r in results.values() if r.ensemble == "second"]
    assert third.start_time >= max(seconds) - 0.05


def test_pending_time_crosses_a_decimal_threshold_on_an_oversubscribed_node(tmp_path):
    path = write(tmp_path / "pending.yaml", """\
        jobs:
          - {name: sleep, command: sleep 0.4, count: 8}
          - {name: marker, command: "true", count: 1}
        rules:
          - {trigger: start, action: {name: submit, label: sleep}}
          - trigger: metric
            name: mean.sleep-pending
            when: "> 0.25"
            action: {name: submit, label: marker}
        """)
    results = run_file(path, tmp_path / "run")
    assert by_group(results) == {"sleep": 8, "marker": 1}
    (firing,) = [f for f in fired(tmp_path / "run") if f.trigger == "metric"]
    assert "mean.sleep-pending" in firing.detail or firing.rule == "mean.sleep-pending"


def test_interval_trigger_repeats_with_its_own_period(tmp_path):
    path = write(tmp_path / "interval.yaml", """\
        jobs:
          - {name: tick, command: "true", count: 1}
        rules:
          - trigger: interval
            interval: 0.3
            action: {name: submit, label: tick, repetitions: 3}
        """)
    results = run_file(path, tmp_path / "run")
    starts = sorted(r.start_time for r in results.values())
    assert len(starts) == 3
    assert starts[2] - starts[0] >= 0.5


def test_rules_in_our_json_ensemble_file(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({
        "ensembles": {
            "coarse": {"cmd_template": "echo {x}", "x": "linspace(0, 1, 10)"},
            "refine": {"cmd_template": "echo {x}", "x": "linspace(0, 0.1, 4)"},
        },
        "rules": [{"trigger": "metric", "name": "count.coarse.success", "when": 10,
                   "action": {"name": "submit", "label": "refine"}}],
    }))
    results = run_file(path, tmp_path / "run")
    assert by_group(results) == {"coarse": 10, "refine": 4}
    assert all(r.state == "succeeded" for r in results.values())
    last_coarse = max(r.end_time for r in results.values() if r.ensemble == "coarse")
    assert min(r.start_time for r in results.values() if r.ensemble == "refine") >= \
        last_coarse - 0.05


@pytest.mark.parametrize("nlevels", [1])
def test_rules_drive_a_tree(tmp_path, nlevels):
    results = run_file(write(tmp_path / "hello-world.yaml", HELLO_WORLD), tmp_path / "run",
                       nlevels=nlevels)
    assert by_group(results) == {"sleep": 5, "echo": 5}


def test_el_status_lists_the_firings(tmp_path):
    run_file(write(tmp_path / "hello-world.yaml", HELLO_WORLD), tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "ensemble_launcher.cli", "status",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "count.sleep.success" in out.stdout and "submit" in out.stdout


def test_resume_of_a_rules_run_never_reruns_a_success_and_decides_the_same(tmp_path):
    path = write(tmp_path / "resume.yaml", """\
        jobs:
          - {name: sleep, command: sleep 0.8, count: 6}
          - {name: echo, command: echo done, count: 2}
        rules:
          - {trigger: start, action: {name: submit, label: sleep}}
          - trigger: metric
            name: count.sleep.success
            when: 6
            action: {name: submit, label: echo}
        """)
    run_dir = tmp_path / "run"
    interrupt_after_two_successes(path, run_dir)
    before = {r.task_id for r in Results(run_dir).values() if r.state == "succeeded"}
    assert before and not any(t.startswith("echo") for t in before)
    again = subprocess.run([*EL, "resume", str(run_dir)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    results = Results(run_dir)
    assert by_group(results) == {"sleep": 6, "echo": 2}
    assert all(r.state == "succeeded" for r in results.values())
    for task_id in before:
        assert results[task_id].attempt == 1, f"{task_id} ran again"
