"""Running tasks on one node: concurrency, pinning, GPU ids, environment, failures as results."""

from __future__ import annotations

import os
import sys

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task

CORES = sorted(os.sched_getaffinity(0))
# One write per process, so that the ranks of an MPI task cannot interleave within a line
# (print() writes each piece apart under PYTHONUNBUFFERED).
PRINT_AFFINITY = (f"{sys.executable} -c "
                  "'import os; os.write(1, f\"{sorted(os.sched_getaffinity(0))}\\n\".encode())'")
needs_two_cores = pytest.mark.skipif(len(CORES) < 2, reason="needs 2 usable cores")


def run(tasks, tmp_path, **kwargs):
    if isinstance(tasks, list):
        tasks = {t.task_id: t for t in tasks}
    return EnsembleLauncher(tasks, out_dir=tmp_path / "run", **kwargs).run()


def affinity():
    return sorted(os.sched_getaffinity(0))


def crash_hard():
    os._exit(7)


def boom(x):
    raise ValueError(f"bad input {x}")


def spin_forever():
    while True:
        pass


@needs_two_cores
def test_tasks_run_concurrently_one_per_core(tmp_path):
    tasks = [Task(task_id=f"s{i}", executable="sleep 0.5") for i in range(2)]
    r = run(tasks, tmp_path)
    a, b = r["s0"], r["s1"]
    assert a.start_time < b.end_time and b.start_time < a.end_time
    assert {a.cpus, b.cpus} == {(CORES[0],), (CORES[1],)}


def test_commands_and_callables_are_pinned_to_their_recorded_core(tmp_path):
    tasks = [Task(task_id=f"c{i}", executable=PRINT_AFFINITY) for i in range(4)]
    tasks += [Task(task_id=f"p{i}", executable=affinity) for i in range(4)]
    r = run(tasks, tmp_path, return_stdout=True)
    for i in range(4):
        assert r[f"c{i}"].stdout.strip() == str(list(r[f"c{i}"].cpus))
        assert r[f"p{i}"].value == list(r[f"p{i}"].cpus)


def test_without_pinning_tasks_see_every_core(tmp_path):
    r = run([Task(task_id="c", executable=PRINT_AFFINITY), Task(task_id="p", executable=affinity)],
            tmp_path, pin_resources=False, return_stdout=True)
    assert r["c"].stdout.strip() == str(CORES)
    assert r["p"].value == CORES


@needs_two_cores
def test_multi_core_task_and_explicit_affinity(tmp_path):
    tasks = [Task(task_id="two", cpu_affinity=CORES[:2], executable=PRINT_AFFINITY),
             Task(task_id="ranks", ppn=2, executable=PRINT_AFFINITY),
             Task(task_id="last", cpu_affinity=[CORES[-1]], executable=PRINT_AFFINITY)]
    r = run(tasks, tmp_path, return_stdout=True)
    assert r["two"].cpus == tuple(CORES[:2]) and r["two"].stdout.strip() == str(CORES[:2])
    assert r["ranks"].cpus == tuple(CORES[:2])
    assert sorted(r["ranks"].stdout.split("\n")[:2]) == [f"[{c}]" for c in CORES[:2]]
    assert r["last"].cpus == (CORES[-1],) and r["last"].stdout.strip() == str([CORES[-1]])


@pytest.mark.parametrize("selector", ["ZE_AFFINITY_MASK", "CUDA_VISIBLE_DEVICES"])
def test_gpu_ids_reach_tasks_through_the_selector(tmp_path, selector):
    system = SystemConfig(name="fake", cpus=CORES[:2], gpus=["0", "0", "1", "1"])
    config = LauncherConfig(gpu_selector=selector)
    tasks = [Task(task_id=f"g{i}", ngpus_per_process=1, executable=f"printenv {selector}")
             for i in range(6)]
    tasks.append(Task(task_id="tile", gpu_affinity=["1"], executable=f"printenv {selector}"))
    tasks.append(Task(task_id="none", executable=f"sh -c 'echo ${{{selector}:-unset}}'"))
    r = run(tasks, tmp_path, system_config=system, launcher_config=config, return_stdout=True)
    for i in range(6):
        assert len(r[f"g{i}"].gpus) == 1
        assert r[f"g{i}"].stdout.strip() == r[f"g{i}"].gpus[0]
    assert r["tile"].gpus == ("1",) and r["tile"].stdout.strip() == "1"
    assert r["none"].gpus == () and r["none"].stdout.strip() == "unset"


def test_callable_sees_its_gpu_in_the_environment(tmp_path):
    def visible():
        return os.environ.get("ZE_AFFINITY_MASK")

    system = SystemConfig(name="fake", gpus=["3"])
    r = run([Task(task_id="g", ngpus_per_process=1, executable=visible),
             Task(task_id="n", executable=visible)], tmp_path, system_config=system)
    assert r["g"].value == "3" and r["g"].gpus == ("3",)
    assert r["n"].value is None


def test_env_and_working_directory(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()

    def where():
        return os.getcwd(), os.environ.get("MY_VAR")

    tasks = [Task(task_id="cmd", executable="sh -c 'echo $MY_VAR; pwd'", env={"MY_VAR": "x1"},
                  run_dir=str(workdir)),
             Task(task_id="py", executable=where, env={"MY_VAR": "x2"}, run_dir=str(workdir))]
    r = run(tasks, tmp_path, return_stdout=True)
    assert r["cmd"].stdout.split() == ["x1", str(workdir)]
    assert r["py"].value == (str(workdir), "x2")


def test_stdout_and_stderr_files(tmp_path):
    task = Task(task_id="f", executable="sh -c 'echo out; echo err >&2'",
                stdout_file=str(tmp_path / "logs" / "f.out"),
                stderr_file=str(tmp_path / "logs" / "f.err"))
    r = run([task], tmp_path)
    assert (tmp_path / "logs" / "f.out").read_text() == "out\n"
    assert (tmp_path / "logs" / "f.err").read_text() == "err\n"
    assert r["f"].stderr == "err\n"


def test_failures_are_results_and_the_run_goes_on(tmp_path):
    tasks = [
        Task(task_id="exit3", executable="sh -c 'echo oops >&2; exit 3'"),
        Task(task_id="signal", executable=["sh", "-c", "kill -9 $$"]),
        Task(task_id="raises", executable=boom, args=(5,)),
        Task(task_id="slow_cmd", executable="sleep 30", timeout=0.5),
        Task(task_id="ok", executable="true"),
    ]
    r = run(tasks, tmp_path, launcher_config=LauncherConfig(kill_grace=0.5))
    assert (r["exit3"].state, r["exit3"].reason, r["exit3"].returncode) == \
        ("failed", "exit_code", 3)
    assert r["exit3"].stderr == "oops\n"
    assert (r["signal"].state, r["signal"].reason, r["signal"].signal) == ("failed", "signal", 9)
    assert r["raises"].reason == "exception"
    assert r["raises"].exception == "ValueError: bad input 5"
    assert "in boom" in r["raises"].traceback and "ValueError: bad input 5" in r["raises"].traceback
    assert (r["slow_cmd"].state, r["slow_cmd"].reason) == ("timed_out", "timeout")
    assert r["slow_cmd"].duration < 10
    assert r["ok"].state == "succeeded"


def test_missing_executable_at_run_time_is_a_launch_failure(tmp_path):
    def tasks():
        yield Task(task_id="missing", executable="/no/such/program --flag")
        yield Task(task_id="ok", executable="true")

    r = EnsembleLauncher(tasks(), out_dir=tmp_path / "run").run()
    assert (r["missing"].state, r["missing"].reason) == ("failed", "launch")
    assert "/no/such/program" in r["missing"].exception
    assert r["ok"].state == "succeeded"


def test_callable_timeout_even_in_a_busy_loop(tmp_path):
    r = run([Task(task_id="spin", executable=spin_forever, timeout=0.5),
             Task(task_id="after", executable=affinity)], tmp_path)
    assert (r["spin"].state, r["spin"].reason) == ("timed_out", "timeout")
    assert r["after"].state == "succeeded"


def test_runner_death_fails_only_its_task_and_the_pool_recovers(tmp_path):
    tasks = [Task(task_id="crash", executable=crash_hard)]
    tasks += [Task(task_id=f"t{i}", executable=affinity) for i in range(40)]
    r = run(tasks, tmp_path)
    assert (r["crash"].state, r["crash"].reason) == ("failed", "worker_lost")
    assert "exit status 7" in r["crash"].exception
    assert all(r[f"t{i}"].state == "succeeded" for i in range(40))


def test_stderr_keeps_only_the_tail(tmp_path):
    script = "import sys; sys.stderr.write('x' * 100000 + 'END'); sys.exit(1)"
    task = Task(task_id="loud", executable=[sys.executable, "-c", script])
    r = run([task], tmp_path, launcher_config=LauncherConfig(stderr_tail_bytes=1000))
    assert len(r["loud"].stderr) == 1000 and r["loud"].stderr.endswith("END")
