"""The Python API as the original ensemble_launcher names it, run for real."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import socket

import pytest

import ensemble_launcher
from ensemble_launcher import EnsembleLauncher, write_results_to_json
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def test_public_surface_is_pinned():
    assert set(ensemble_launcher.__all__) == {
        "ConfigError", "EnsembleFileError", "EnsembleLauncher", "EnsembleLauncherError",
        "ExecutorError", "LauncherClosedError", "LauncherConfig", "ResourceError", "Results",
        "RunAbortedError", "StoreError", "SystemConfig", "Task", "TaskResult",
        "write_results_to_json",
    }
    assert all(getattr(ensemble_launcher, name) is not None for name in ensemble_launcher.__all__)
    top_level = (ensemble_launcher.LauncherConfig, ensemble_launcher.SystemConfig,
                 ensemble_launcher.Task)
    assert top_level == (LauncherConfig, SystemConfig, Task)



def _shape(fn) -> str:
    """A signature as callers rely on it: names, kinds and defaults, not annotations."""
    sig = inspect.signature(fn)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


PINNED_SIGNATURES = {
    "EnsembleLauncher": ("(ensemble_file, system_config=None, launcher_config=None, "
                         "Nodes=None, pin_resources=True, return_stdout=False, *, out_dir=None, "
                         "reporter=None, resume=False, retry_failed=False)"),
    "EnsembleLauncher.run": "(self)",
    "EnsembleLauncher.start": "(self, timeout=120.0, *, detach=True)",
    "EnsembleLauncher.stop": "(self, timeout=None)",
    "EnsembleLauncher.wait": "(self)",
    "write_results_to_json": "(results, path)",
    "Results": "(run_dir)",
    "Results.counts": "(self)",
    "Results.attempts": "(self, task_id)",
    "Results.failed": "(self)",
    "Results.meta": "(self)",
    "ClusterClient": "(checkpoint_dir, node_id='global', client_id=None)",
    "ClusterClient.start": "(self, timeout=30.0)",
    "ClusterClient.teardown": "(self)",
    "ClusterClient.submit": ("(self, task, *args, nnodes=1, ppn=1, ngpus_per_process=0, "
                             "dependencies=None, priority=0, timeout=None, **kwargs)"),
    "ClusterClient.submit_batch": "(self, tasks)",
    "ClusterClient.map": ("(self, fn, *iterables, timeout=None, window=8192, nnodes=1, ppn=1, "
                          "ngpus_per_process=0, dependencies=None, priority=0, "
                          "task_timeout=None, **kwargs)"),
    "ClusterClient.cancel_tag": "(self, tag)",
    "ClusterClient.shutdown_cluster": "(self)",
}


def test_public_signatures_are_pinned():
    from ensemble_launcher.orchestrator import ClusterClient

    owners = {"EnsembleLauncher": EnsembleLauncher, "Results": ensemble_launcher.Results,
              "ClusterClient": ClusterClient, "write_results_to_json": write_results_to_json}
    shapes = {}
    for name in PINNED_SIGNATURES:
        owner, _, method = name.partition(".")
        shapes[name] = _shape(getattr(owners[owner], method) if method else owners[owner])
    assert shapes == PINNED_SIGNATURES


def test_task_and_task_result_fields_are_pinned():
    assert [f.name for f in dataclasses.fields(ensemble_launcher.TaskResult)] == [
        "task_id", "state", "ensemble", "attempt", "reason", "returncode", "signal",
        "value_blob", "exception", "traceback", "stdout", "stderr", "start_time", "end_time",
        "host", "cpus", "gpus", "cpu_user", "cpu_system", "max_rss"]
    readable = {"value", "duration", "ok"}
    assert readable <= {n for n in dir(ensemble_launcher.TaskResult) if not n.startswith("_")}
    assert _shape(Task) == (
        "(task_id, nnodes=1, ppn=1, executable=None, args=(), kwargs=<factory>, "
        "env=<factory>, ngpus_per_process=0, cpu_affinity=<factory>, gpu_affinity=<factory>, "
        "run_dir=None, timeout=None, stdout_file=None, stderr_file=None, "
        "estimated_runtime=0.0, tag=None, ensemble=None, retries=None)")

def test_seed_config_defaults():
    system = SystemConfig(name="local")
    assert system.ncpus == len(os.sched_getaffinity(0))
    assert system.ngpus == 0 and system.gpus == []
    launcher = LauncherConfig()
    assert launcher.child_executor_name is None
    assert launcher.task_executor_name == "multiprocessing"
    assert launcher.comm_name is None
    assert launcher.report_interval == 10.0
    assert launcher.return_stdout is False
    assert launcher.worker_logs is False and launcher.master_logs is False
    assert launcher.nchildren is None and launcher.profile is None
    assert launcher.gpu_selector == "ZE_AFFINITY_MASK"


def test_overloaded_gpu_ids_count_as_slots():
    system = SystemConfig(name="my_cluster", cpus=list(range(4)),
                          gpus=["0", "0", "1", "1", "2", "3"])
    assert system.ngpus == 6 and system.ncpus == 4


def test_dict_of_callable_tasks_returns_values(tmp_path):
    tasks = {f"t{i}": Task(task_id=f"t{i}", nnodes=1, ppn=1, executable=square, args=(i,))
             for i in range(20)}
    tasks["kw"] = Task(task_id="kw", nnodes=1, ppn=1, executable=add, args=(1,), kwargs={"b": 41})
    results = EnsembleLauncher(ensemble_file=tasks, out_dir=tmp_path / "run").run()
    assert len(results) == 21
    assert {tid: results[tid].value for tid in results if tid != "kw"} == \
        {f"t{i}": i * i for i in range(20)}
    assert results["kw"].value == 42
    assert all(r.state == "succeeded" for r in results.values())


def test_results_record_where_and_when(tmp_path):
    tasks = {"a": Task(task_id="a", nnodes=1, ppn=1, executable="true")}
    result = EnsembleLauncher(tasks, out_dir=tmp_path / "run").run()["a"]
    assert result.host == socket.gethostname()
    assert len(result.cpus) == 1 and result.cpus[0] in os.sched_getaffinity(0)
    assert result.start_time <= result.end_time
    assert result.returncode == 0


def test_return_stdout_captures_output_of_commands_and_callables(tmp_path):
    def talk():
        print("from python")
        return 1

    tasks = {
        "cmd": Task(task_id="cmd", executable="echo from shell"),
        "py": Task(task_id="py", executable=talk),
    }
    results = EnsembleLauncher(tasks, return_stdout=True, out_dir=tmp_path / "run").run()
    assert results["cmd"].stdout == "from shell\n"
    assert results["py"].stdout == "from python\n"
    quiet = EnsembleLauncher(tasks, out_dir=tmp_path / "quiet").run()
    assert quiet["cmd"].stdout is None


def test_seed_quick_start_file_and_json_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exe = tmp_path / "exe"
    exe.write_text("#!/bin/sh\necho \"a=$2 b=$4\"\n")
    exe.chmod(0o755)
    (tmp_path / "config.json").write_text(json.dumps({"ensembles": {"example_ensemble": {
        "nnodes": 1, "ppn": 1, "cmd_template": "./exe -a {arg1} -b {arg2}",
        "arg1": "linspace(0, 10, 5)", "arg2": "linspace(0, 1, 5)", "relation": "one-to-one"}}}))
    el = EnsembleLauncher("config.json", return_stdout=True)
    results = el.run()
    write_results_to_json(results, "results.json")
    data = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["stdout"] for r in data.values()) == sorted(
        f"a={a} b={b}\n" for a, b in zip([0.0, 2.5, 5.0, 7.5, 10.0],
                                          [0.0, 0.25, 0.5, 0.75, 1.0], strict=True))
    assert all(r["state"] == "succeeded" for r in data.values())
    assert el.run_dir.is_relative_to("el-runs")


def test_results_are_on_disk_and_readable_after_the_run(tmp_path):
    tasks = {f"t{i}": Task(task_id=f"t{i}", executable=square, args=(i,)) for i in range(5)}
    EnsembleLauncher(tasks, out_dir=tmp_path / "run").run()
    from ensemble_launcher.store import Results

    reopened = Results(tmp_path / "run")
    assert reopened["t3"].value == 9
    assert reopened.counts() == {"succeeded": 5}


def test_run_dir_that_holds_a_run_is_refused(tmp_path):
    tasks = {"a": Task(task_id="a", executable="true")}
    EnsembleLauncher(tasks, out_dir=tmp_path / "run").run()
    with pytest.raises(ensemble_launcher.ConfigError, match="already holds a run"):
        EnsembleLauncher(tasks, out_dir=tmp_path / "run")


def test_iterable_of_tasks_is_consumed_lazily(tmp_path):
    made = []

    def generate():
        for i in range(50):
            made.append(i)
            yield Task(task_id=f"g{i}", executable=square, args=(i,))

    el = EnsembleLauncher(generate(), out_dir=tmp_path / "run")
    assert made == []
    results = el.run()
    assert len(results) == 50 and results["g7"].value == 49


def test_one_node_tree_settings_that_cannot_work_are_refused(tmp_path):
    tasks = {"a": Task(task_id="a", executable="true")}
    with pytest.raises(ensemble_launcher.ConfigError, match="nlevels=0 runs on one node"):
        EnsembleLauncher(tasks, Nodes=["localhost", "localhost"],
                         launcher_config=LauncherConfig(nlevels=0))
    with pytest.raises(ensemble_launcher.ConfigError, match="comm_name"):
        EnsembleLauncher(tasks, Nodes=["localhost"],
                         launcher_config=LauncherConfig(nlevels=1, comm_name="dragon"))


def test_master_log_is_written_when_asked(tmp_path):
    tasks = {"a": Task(task_id="a", executable="true")}
    EnsembleLauncher(tasks, launcher_config=LauncherConfig(master_logs=True),
                     out_dir=tmp_path / "run").run()
    text = (tmp_path / "run" / "logs" / "master-main.log").read_text()
    assert "finished: 1/1 finished" in text


def test_cpus_outside_this_process_affinity_are_refused(tmp_path):
    foreign = max(os.sched_getaffinity(0)) + 1
    tasks = {"a": Task(task_id="a", executable="true")}
    with pytest.raises(ensemble_launcher.ResourceError, match=str(foreign)):
        EnsembleLauncher(tasks, SystemConfig(cpus=[foreign]), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_nodes_naming_this_host_runs_here(tmp_path):
    tasks = {"a": Task(task_id="a", executable="true")}
    r = EnsembleLauncher(tasks, Nodes=[socket.gethostname()], out_dir=tmp_path / "run").run()
    assert r["a"].host == socket.gethostname()
    with pytest.raises(ensemble_launcher.ConfigError, match="does not resolve"):
        EnsembleLauncher(tasks, Nodes=["some-other-node.invalid"])


def test_launchers_made_in_one_second_get_run_directories_of_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks = {"a": Task(task_id="a", executable=square, args=(3,))}
    launchers = [EnsembleLauncher(tasks) for _ in range(3)]
    results = [el.run() for el in launchers]
    assert len({el.run_dir for el in launchers}) == 3
    assert all(r["a"].value == 9 for r in results)


def test_a_launcher_runs_once_and_says_so_when_run_again(tmp_path):
    marks = tmp_path / "marks"
    tasks = {"a": Task(task_id="a", executable=f"sh -c 'echo x >> {marks}'")}
    el = EnsembleLauncher(tasks, out_dir=tmp_path / "run")
    assert el.run()["a"].ok
    with pytest.raises(ensemble_launcher.LauncherClosedError,
                       match=r"already ran .*resume=True"):
        el.run()
    assert marks.read_text() == "x\n"


def test_a_resuming_launcher_runs_again_and_continues_its_run(tmp_path):
    """A resume interrupted (or with a task failed) is continued by calling run() again."""
    fixed = tmp_path / "fixed"
    tasks = {"ok": Task(task_id="ok", executable="true"),
             "late": Task(task_id="late", executable=f"test -e {fixed}")}
    assert EnsembleLauncher(tasks, out_dir=tmp_path / "run").run()["late"].state == "failed"
    el = EnsembleLauncher(tasks, out_dir=tmp_path / "run", resume=True, retry_failed=True)
    assert el.run()["late"].state == "failed"
    fixed.touch()
    r = el.run()
    assert r.counts() == {"succeeded": 2}
    assert [a.state for a in r.attempts("late")] == ["failed", "failed", "succeeded"]
