"""Rules files (issue 12) as they load: ensemble-python's published examples (hello-world,
terminate, backoff, heartbeat, their sleeps shortened), our own JSON file with rules, and
every bad file, refused with one error naming the file, the key and the value before
anything runs (no run directory).

Running these files is tests/test_rules_run.py's; here we check what the run is given:
the groups, which of them wait for a rule, the tasks a submission makes, the rules.
"""

from __future__ import annotations

import copy
import json
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from test_rules_run import BACKOFF, HELLO_WORLD, write

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import SystemConfig
from ensemble_launcher.ensemble import load_tasks
from ensemble_launcher.ensemble.rules import (
    Action,
    ActionBudget,
    MetricName,
    Rule,
    When,
    check_rule,
    metric_name,
)
from ensemble_launcher.errors import ConfigError, EnsembleFileError

TERMINATE = HELLO_WORLD.rstrip(" ").replace("debug: true", "debug: false") + textwrap.indent("""\
  - trigger: metric
    name: count.echo.success
    when: 5
    action:
      name: terminate
""", " " * 4)


def heartbeat_example() -> str:
    """ensemble-python's heartbeat example: hello-world with a heartbeat of 3 seconds, a
    group of 10-node jobs that no rule submits, and its metric rule written twice."""
    data = yaml.safe_load(textwrap.dedent(HELLO_WORLD))
    data["logging"] = {"debug": False, "heartbeat": 3}
    data["jobs"].append({"name": "big-sleep", "command": "sleep 0.2", "count": 5,
                         "nodes": 10})
    data["rules"].append(copy.deepcopy(data["rules"][1]))
    return yaml.safe_dump(data, sort_keys=False)


HEARTBEAT = heartbeat_example()


def loaded(tmp_path: Path, text: str, name: str = "ensemble.yaml"):
    stream = load_tasks(str(write(tmp_path / name, text)))
    assert stream.steering is not None
    return stream, stream.steering


# -- the published examples ---------------------------------------------------------------

def test_hello_world_holds_every_group_and_maps_jobs_to_tasks(tmp_path):
    stream, steering = loaded(tmp_path, HELLO_WORLD)
    assert list(stream) == [] and stream.total == 0
    assert list(steering.groups) == ["echo", "sleep"]
    assert steering.held == {"echo", "sleep"}
    assert steering.debug is True and steering.heartbeat == 0
    start, metric = steering.rules
    assert (start.trigger, start.action.name, start.action.label) == ("start", "submit", "sleep")
    assert (metric.name, metric.when.text, metric.action.label) == \
        ("count.sleep.success", "== 3", "echo")
    tasks = steering.groups["sleep"].tasks(None, 1)
    assert [t.task_id for t in tasks] == [f"sleep-1-{i}" for i in range(5)]
    assert {(tuple(t.executable), t.nnodes, t.ppn, t.timeout, t.ensemble, t.tag)
            for t in tasks} == {(("sleep", "0.3"), 1, 1, None, "sleep", "sleep")}


def test_terminate_example_loads_its_terminate_rule(tmp_path):
    _, steering = loaded(tmp_path, TERMINATE)
    last = steering.rules[-1]
    assert (last.trigger, last.name, last.when.holds(5), last.when.holds(4)) == \
        ("metric", "count.echo.success", True, False)
    assert (last.action.name, last.action.label, last.action.value) == ("terminate", None, None)


def test_backoff_example_keeps_repetitions_and_backoff(tmp_path):
    _, steering = loaded(tmp_path, BACKOFF)
    repeat, backoff = steering.rules[1:]
    assert (repeat.trigger, repeat.name, repeat.action.repetitions, repeat.action.backoff) == \
        ("job-finish", "sleep", 3, None)
    assert (backoff.action.repetitions, backoff.action.backoff) == (3, 2)
    assert steering.held == {"sleep", "echo-repetition", "echo-backoff"}


def test_heartbeat_example_loads_though_one_group_is_larger_than_the_node(tmp_path):
    """big-sleep wants 10 nodes and no rule submits it: the example runs as it is."""
    path = write(tmp_path / "heartbeat.yaml", HEARTBEAT)
    launcher = EnsembleLauncher(str(path), SystemConfig(name="local", ncpus=2),
                                out_dir=tmp_path / "run")
    steering = launcher.tasks.steering
    assert steering.heartbeat == 3.0
    assert steering.groups["big-sleep"].tasks(None, 1)[0].nnodes == 10


def test_a_submitted_group_larger_than_the_node_is_refused_before_the_run(tmp_path):
    path = write(tmp_path / "big.yaml", HEARTBEAT.replace("label: echo", "label: big-sleep"))
    with pytest.raises(ConfigError, match="big-sleep"):
        EnsembleLauncher(str(path), SystemConfig(name="local", ncpus=2),
                         out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_nodes_tasks_duration_and_workdir_map_to_nnodes_ppn_timeout_run_dir(tmp_path):
    _, steering = loaded(tmp_path, f"""\
        jobs:
          - name: mpi
            command: echo "a b" c
            count: 2
            nodes: 2
            tasks: 8
            duration: 30
            workdir: {tmp_path}
          - name: mpi
            command: sleep 0
            nodes: 4
          - name: wide
            command: "true"
            nodes: 3
            tasks: 1
        rules:
          - trigger: start
            action: {{name: submit, label: mpi, value: 3}}
        """)
    first = steering.groups["mpi"].tasks(None, 1)
    assert [t.task_id for t in first] == ["mpi-1-0", "mpi-1-1", "mpi-1-2"]
    assert (first[0].executable, first[0].nnodes, first[0].ppn, first[0].timeout,
            first[0].run_dir) == (["echo", "a b", "c"], 2, 4, 30.0, str(tmp_path))
    assert (first[2].executable, first[2].nnodes, first[2].ppn, first[2].timeout) == \
        (["sleep", "0"], 4, 1, None)
    again = steering.groups["mpi"].tasks(3, 2)
    assert [t.task_id for t in again] == [f"mpi-2-{i}" for i in range(6)], \
        "value overrides every entry's count"
    assert steering.groups["wide"].tasks(None, 1)[0].ppn == 1, "fewer tasks than nodes: one each"
    assert steering.rules[0].action.value == 3


CUSTOM = """\
    jobs:
      - name: echo
        command: echo hi
    rules:
      - trigger: job-finish
        action: {name: custom, label: again}
    custom: |
      import math

      def again(**kwargs):
          return Action({"name": "submit", "label": "echo"})

      def follow(**kwargs):
          return Rule({"trigger": "job-fail", "name": "echo",
                       "action": {"name": "submit", "label": "echo", "value": 2}})
    """


def test_custom_code_defines_functions_that_return_ensemble_python_records(tmp_path):
    _, steering = loaded(tmp_path, CUSTOM)
    func = steering.rules[0].action.func
    action = func(event=None, rule=steering.rules[0], action=None, metrics=None)
    assert isinstance(action, Action) and (action.name, action.label) == ("submit", "echo")
    rule = func.__globals__["follow"]()
    assert isinstance(rule, Rule) and (rule.trigger, rule.name, rule.label) == \
        ("job-fail", "echo", "echo")
    assert (rule.action.name, rule.action.value) == ("submit", 2)
    check_rule(rule, steering.groups)
    with pytest.raises(ConfigError, match="'nope'"):
        check_rule(Rule("job-run", {"name": "cancel", "label": "nope"}), steering.groups)


def test_custom_code_is_a_module_its_classes_can_use(tmp_path):
    """Like a file's module: in sys.modules, so dataclasses and pickle find it."""
    _, steering = loaded(tmp_path, CUSTOM.replace("import math", textwrap.indent(
        "from __future__ import annotations\nfrom dataclasses import dataclass\n"
        "@dataclass\nclass Note:\n    text: str\n", " " * 6).strip()))
    note = steering.rules[0].action.func.__globals__["Note"]("x")
    assert pickle.loads(pickle.dumps(note)) == note


def test_a_custom_label_may_name_a_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_actions.py").write_text("def grow_more(**kwargs):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, steering = loaded(tmp_path, CUSTOM.replace("label: again", "label: my_actions:grow_more"))
    assert steering.rules[0].action.func.__name__ == "grow_more"
    sys.modules.pop("my_actions", None)


# -- our own files with rules -------------------------------------------------------------

OUR_FILE = {
    "ensembles": {
        "coarse": {"cmd_template": "echo {x}", "x": [1, 2, 3]},
        "refine": {"cmd_template": "echo {y}", "y": [10, 20]},
    },
    "heartbeat": 2,
    "rules": [
        {"trigger": "metric", "name": "count.coarse.success", "when": ">= 3",
         "action": {"name": "submit", "label": "refine"}},
        {"trigger": "interval", "interval": 0.5, "name": "tick",
         "action": {"name": "custom", "label": "os.path:basename"}},
        {"trigger": "heartbeat", "action": {"name": "cancel", "label": "coarse"}},
    ],
}


def test_our_json_file_holds_the_ensembles_a_rule_submits(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(OUR_FILE))
    stream = load_tasks(str(path))
    steering = stream.steering
    assert [t.task_id for t in stream] == ["coarse-0", "coarse-1", "coarse-2"]
    assert stream.ensembles == {"coarse": 3}
    assert steering.held == {"refine"} and set(steering.groups) == {"coarse", "refine"}
    assert (steering.heartbeat, steering.source) == (2.0, str(path))
    interval = steering.rules[1]
    assert (interval.interval, interval.label, interval.action.func("a/b")) == (0.5, "tick", "b")
    refine = steering.groups["refine"]
    first, second = refine.tasks(None, 1), refine.tasks(3, 2)
    assert [(t.task_id, t.executable) for t in first] == \
        [("refine-0", "echo 10"), ("refine-1", "echo 20")]
    assert [(t.task_id, t.executable, t.ensemble) for t in second] == \
        [("refine-2", "echo 10", "refine"), ("refine-3", "echo 20", "refine"),
         ("refine-4", "echo 10", "refine")], "numbered on, the sweep taken round"
    assert [t.task_id for t in steering.groups["coarse"].tasks(1, 1)] == ["coarse-3"], \
        "a group the stream starts is numbered past the stream's ids"


def test_our_file_without_rules_has_no_steering(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"ensembles": OUR_FILE["ensembles"]}))
    assert load_tasks(str(path)).steering is None


# -- the records ----------------------------------------------------------------------------

@pytest.mark.parametrize(("condition", "text", "true", "false"), [
    (3, "== 3", 3, 3.5), (2.5, "== 2.5", 2.5, 2), ("> 0.5", "> 0.5", 0.6, 0.5),
    (">=1e-3", ">= 0.001", 0.001, 0.0009), ("!= 2", "!= 2", 1, 2), ("< -1.5", "< -1.5", -2, -1),
    ("<= .25", "<= 0.25", 0.25, 0.3), ("= 4", "== 4", 4, 5), ("7", "== 7", 7, 6),
])
def test_when_reads_numbers_and_comparisons_with_decimals(condition, text, true, false):
    when = When(condition)
    assert (when.text, when.holds(true), when.holds(false)) == (text, True, False)


@pytest.mark.parametrize("condition", ["> abc", ">>3", "~3", "", "> 1e999", "3 >", True, None,
                                       [3], "=> 3", "> 3 4", 10**400, float("nan")])
def test_when_refuses_what_it_cannot_read(condition):
    with pytest.raises(ValueError):
        When(condition)


def spent(budget: ActionBudget, firings: int) -> list[bool]:
    return [budget.perform() for _ in range(firings)]


def test_budget_spends_repetitions_and_backoff_as_ensemble_python_does():
    assert spent(ActionBudget(Action("submit", "a")), 3) == [True, False, False]
    assert spent(ActionBudget(Action("submit", "a", repetitions=3)), 4) == [True] * 3 + [False]
    backoff = ActionBudget(Action("submit", "a", repetitions=3, backoff=2))
    assert spent(backoff, 10) == [True, False, False, True, False, False, True, False, False,
                                  False]
    assert backoff.finished
    assert spent(ActionBudget(Action("terminate", backoff=0, repetitions=2)), 3) == \
        [True, True, False]


def test_action_and_rule_take_ensemble_python_dicts_and_check_them():
    action = Action({"name": "submit", "label": "echo", "value": 4, "repetitions": 2})
    assert (action.name, action.label, action.value, action.repetitions) == \
        ("submit", "echo", 4, 2)
    rule = Rule({"trigger": "metric", "name": "mean.my-group.v2-pending", "when": "> 0.5",
                 "action": {"name": "terminate"}})
    assert (rule.when.holds(0.75), rule.action.name, rule.label) == \
        (True, "terminate", "mean.my-group.v2-pending")
    for bad, words in [({"name": "submit"}, "label"), ({"name": "launch"}, "unknown action"),
                       ({"name": "submit", "label": "x", "colour": 1}, "colour"),
                       ({"name": "grow", "label": "x"}, "no label"),
                       ({"name": "shrink", "value": 0}, "value")]:
        with pytest.raises(ConfigError, match=words):
            Action(bad)
    with pytest.raises(ConfigError, match="when"):
        Rule({"trigger": "metric", "name": "count.a.success", "when": "~3",
              "action": {"name": "terminate"}})
    assert Action("custom", func=len).label == "len"


@pytest.mark.parametrize(("name", "parts"), [
    ("count.sleep.success", ("count", "sleep", "success")),
    ("count.v1.2.pending", ("count", "v1.2", "pending")),
    ("mean.sleep-pending", ("mean", "sleep", "pending")),
    ("iqr.big-sleep.x-duration", ("iqr", "big-sleep.x", "duration")),
])
def test_metric_names_split_at_the_last_separator(name, parts):
    assert metric_name(name) == MetricName(*parts)


# -- bad files ------------------------------------------------------------------------------

GOOD_EP = yaml.safe_load(textwrap.dedent(HELLO_WORLD))


def ep(change) -> dict:
    """The hello-world file with one change."""
    data = copy.deepcopy(GOOD_EP)
    change(data)
    return data


def rule0(**fields):
    return lambda d: d["rules"][0].update(fields)


def action0(**fields):
    return lambda d: d["rules"][0]["action"].update(fields)


def job0(**fields):
    return lambda d: d["jobs"][0].update(fields)


def metric(name):
    return rule0(trigger="metric", name=name, when=1)


def add_custom(code, label="again"):
    def change(d):
        d["custom"] = textwrap.dedent(code)
        d["rules"][0]["action"] = {"name": "custom", "label": label}
    return change


#: (id, file data, the key the error names, the value it names, words of its reason)
BAD_FILES = [
    ("unknown trigger", ep(rule0(trigger="job-begin")), "rules[0].trigger", "job-begin",
     "unknown trigger"),
    ("unknown action", ep(action0(name="launch")), "rules[0].action.name", "launch",
     "unknown action"),
    ("submit names no group", ep(action0(label="sleeep")), "rules[0].action.label", "sleeep",
     "no group"),
    ("cancel names no group", ep(action0(name="cancel", label="nope")),
     "rules[0].action.label", "nope", "no group"),
    ("submit without label", ep(lambda d: d["rules"][0]["action"].pop("label")),
     "rules[0].action.label", None, "needs a label"),
    ("when > abc", ep(lambda d: d["rules"][1].update(when="> abc")), "rules[1].when", "> abc",
     "comparison"),
    ("when >>3", ep(lambda d: d["rules"][1].update(when=">>3")), "rules[1].when", ">>3",
     "comparison"),
    ("when ~3", ep(lambda d: d["rules"][1].update(when="~3")), "rules[1].when", "~3",
     "comparison"),
    ("when on a start rule", ep(rule0(when=3)), "rules[0].when", 3, "only to metric"),
    ("unknown stat", ep(metric("median.sleep-duration")), "rules[0].name",
     "median.sleep-duration", "stat one of"),
    ("unknown count key", ep(metric("count.sleep.done")), "rules[0].name", "count.sleep.done",
     "key one of"),
    ("unknown series", ep(metric("mean.sleep-runtime")), "rules[0].name", "mean.sleep-runtime",
     "series one of"),
    ("metric of no group", ep(metric("count.other.success")), "rules[0].name",
     "count.other.success", "no group 'other'"),
    ("stat of no group", ep(metric("max.other-pending")), "rules[0].name", "max.other-pending",
     "no group 'other'"),
    ("metric rule without name", ep(rule0(trigger="metric", when=1)), "rules[0].name", None,
     "needs a name"),
    ("job rule of no group", ep(rule0(trigger="job-fail", name="nope")), "rules[0].name",
     "nope", "no group"),
    ("custom raises", ep(add_custom("""\
         def again(**kwargs):
             return None
         raise_here = undefined_name + 1
         """)), "custom", "raise_here = undefined_name + 1", "NameError"),
    ("custom does not compile", ep(add_custom("def again(:\n    pass\n")), "custom",
     "def again(:", "does not compile"),
    ("custom label not defined", ep(add_custom("def other(**kwargs):\n    pass\n")),
     "rules[0].action.label", "again", "not defined"),
    ("custom label without custom code", ep(action0(name="custom", label="again")),
     "rules[0].action.label", "again", "not defined"),
    ("custom module does not import", ep(action0(name="custom", label="no_such_mod_x:f")),
     "rules[0].action.label", "no_such_mod_x:f", "ModuleNotFoundError"),
    ("custom module lacks the function", ep(action0(name="custom", label="json:nope")),
     "rules[0].action.label", "json:nope", "not defined"),
    ("grow with a label", ep(action0(name="grow", label="hello")), "rules[0].action.label",
     "hello", "no label"),
    ("shrink by nothing", ep(action0(name="shrink", label=None, value=0)),
     "rules[0].action.value", 0, "value"),
    ("unknown key in a rule", ep(rule0(every=3)), "rules[0].every", 3, "unknown key"),
    ("unknown key in an action", ep(action0(count=3)), "rules[0].action.count", 3,
     "unknown key"),
    ("unknown key in a job", ep(job0(cores=4)), "jobs[0].cores", 4, "unknown key"),
    ("unknown top-level key", ep(lambda d: d.update(algorithm="x")), "algorithm", "x",
     "unknown top-level key"),
    ("job without name", ep(lambda d: d["jobs"][0].pop("name")), "jobs[0].name", None,
     "needs a name"),
    ("job without command", ep(lambda d: d["jobs"][0].pop("command")), "jobs[0].command", None,
     "needs a command"),
    ("count 0", ep(job0(count=0)), "jobs[0].count", 0, "whole number >= 1"),
    ("count 2.5", ep(job0(count=2.5)), "jobs[0].count", 2.5, "whole number >= 1"),
    ("nodes -1", ep(job0(nodes=-1)), "jobs[0].nodes", -1, "whole number >= 1"),
    ("tasks as text", ep(job0(tasks="4")), "jobs[0].tasks", "4", "whole number >= 1"),
    ("tasks not divisible by nodes", ep(job0(nodes=2, tasks=3)), "jobs[0].tasks", 3,
     "multiple of 2"),
    ("negative duration", ep(job0(duration=-5)), "jobs[0].duration", -5, ">= 0"),
    ("program not on PATH", ep(job0(command="no-such-program-x 1")), "jobs[0].command",
     "no-such-program-x 1", "not found"),
    ("unclosed quote", ep(job0(command="echo 'a")), "jobs[0].command", "echo 'a",
     "cannot be split"),
    ("missing workdir", ep(job0(workdir="/no/such/dir/x")), "jobs[0].workdir",
     "/no/such/dir/x", "does not exist"),
    ("interval without seconds", ep(rule0(trigger="interval")), "rules[0].interval", None,
     "interval: SECONDS"),
    ("interval 0", ep(rule0(trigger="interval", interval=0)), "rules[0].interval", 0, "> 0"),
    ("interval on a start rule", ep(rule0(interval=5)), "rules[0].interval", 5,
     "only to trigger interval"),
    ("heartbeat rule without heartbeat", ep(rule0(trigger="heartbeat")), "rules[0].trigger",
     "heartbeat", "logging.heartbeat"),
    ("repetitions 0", ep(action0(repetitions=0)), "rules[0].action.repetitions", 0,
     "whole number >= 1"),
    ("backoff -1", ep(action0(backoff=-1)), "rules[0].action.backoff", -1, ">= 0"),
    ("submit value 1.5", ep(action0(value=1.5)), "rules[0].action.value", 1.5, "whole number"),
    ("terminate with a label", ep(action0(name="terminate")), "rules[0].action.label",
     "sleep", "no label"),
    ("rule not a mapping", ep(lambda d: d["rules"].append("start")), "rules[2]", "start",
     "mapping"),
    ("rule without action", ep(lambda d: d["rules"][0].pop("action")), "rules[0].action", None,
     "needs an action"),
    ("rules not a list", ep(lambda d: d.update(rules={"trigger": "start"})), "rules",
     {"trigger": "start"}, "list"),
    ("no rules", ep(lambda d: d.pop("rules")), "rules", None, "needs rules"),
    ("debug not a bool", ep(lambda d: d["logging"].update(debug="yes")), "logging.debug",
     "yes", "true or false"),
    ("negative heartbeat", ep(lambda d: d["logging"].update(heartbeat=-1)),
     "logging.heartbeat", -1, ">= 0"),
]


def our_file(change) -> dict:
    data = copy.deepcopy(OUR_FILE)
    change(data)
    return data


BAD_OUR_FILES = [
    ("our file: submit names no group", our_file(
        lambda d: d["rules"][0]["action"].update(label="fine")), "rules[0].action.label",
     "fine", "no group"),
    ("our file: metric of no group", our_file(
        lambda d: d["rules"][0].update(name="count.fine.success")), "rules[0].name",
     "count.fine.success", "no group 'fine'"),
    ("our file: custom by a bare name", our_file(
        lambda d: d["rules"][1]["action"].update(label="basename")), "rules[1].action.label",
     "basename", "not defined"),
    ("our file: heartbeat without rules", our_file(lambda d: d.pop("rules")), "heartbeat", 2,
     "needs a top-level rules list"),
    ("our file: heartbeat rule without heartbeat", our_file(lambda d: d.pop("heartbeat")),
     "rules[2].trigger", "heartbeat", "heartbeat: SECONDS"),
    ("our file: unknown top-level key", our_file(lambda d: d.update(jobs=[])), "jobs", [],
     "unknown top-level key"),
]


@pytest.mark.parametrize(("data", "key", "value", "words"),
                         [case[1:] for case in BAD_FILES + BAD_OUR_FILES],
                         ids=[case[0] for case in BAD_FILES + BAD_OUR_FILES])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_bad_rules_file_is_one_error_naming_file_key_and_value(tmp_path, data, key, value,
                                                               words, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_text(yaml.safe_dump(data) if suffix == ".yaml" else json.dumps(data))
    with pytest.raises(EnsembleFileError) as caught:
        EnsembleLauncher(str(path), SystemConfig(name="local", ncpus=2), out_dir=tmp_path / "run")
    error, message = caught.value, str(caught.value)
    assert (error.file, error.key, error.value) == (str(path), key, value), message
    assert str(path) in message and key in message and words in message, message
    assert value is None or repr(value)[:20] in message, message
    assert not (tmp_path / "run").exists()
