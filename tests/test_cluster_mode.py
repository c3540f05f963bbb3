"""Cluster mode as its users run it: a real head process (``el start`` or
``EnsembleLauncher.start()``), real ``ClusterClient``s in this process and in others, real
runners, real files. Nothing of the cluster is played by the test.

Tasks block on "gates" (files under tmp_path) where a test needs cores busy or a task
pending; the ``clusters`` fixture opens every gate, stops every head it started and prints
the tail of its log, which pytest shows when the test fails.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pickle
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, as_completed, wait
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import zmq

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.cluster.checkpoint import ClusterFile, process_alive
from ensemble_launcher.cluster.protocol import SubmitMap, SubmitRecord
from ensemble_launcher.comm.zmq_transport import KEY_ENV
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.task import AsyncTask
from ensemble_launcher.errors import (
    ClusterLost,
    CommandFailed,
    ConfigError,
    DependencyFailed,
    InvalidTask,
    TaskError,
    TaskTimedOut,
)
from ensemble_launcher.orchestrator import ClusterClient
from ensemble_launcher.orchestrator.boot import OUR_VARIABLES
from ensemble_launcher.store import Results, TaskResult

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = 0.5


# -- what the tasks run (module level: runners import this module, as a user's) ----------


class WorkflowError(Exception):
    """An exception type that only this test module defines."""


class NeedsTwoArgs(Exception):
    """Pickles, but does not load again (its __init__ wants two arguments)."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} ({code})")


def double(i: int) -> int:
    return 2 * i


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int = 0) -> int:
    return a + b


def nested_total(items: list, weights: dict) -> int:
    """Sums what a list (with a tuple in it) and a dict hold, to see futures replaced there."""
    flat = [items[0], *items[1]]
    return sum(flat) + sum(weights.values())


def raise_value_error() -> None:
    raise ValueError("bad value 42")


def raise_workflow_error(code: int) -> None:
    raise WorkflowError(f"workflow step failed with code {code}")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgs("cannot rebuild me", 7)


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def touch(path: str) -> str:
    Path(path).touch()
    return path


def read_text(path: str) -> str:
    return Path(path).read_text()


def write_after_a_while(path: str, text: str) -> None:
    time.sleep(0.3)
    Path(path).write_text(text)


def count_run(counter: str) -> str:
    """Appends a line to ``counter``: how often a task ran is the number of lines."""
    with open(counter, "a") as out:
        out.write("ran\n")
    return counter


def wait_for_gate(gate: str, started: str | None = None, counter: str | None = None,
                  limit: float = 60.0) -> str:
    """Holds a core until the gate file (or the test's ALL gate) exists."""
    if counter is not None:
        count_run(counter)
    if started is not None:
        Path(started).write_text(str(os.getpid()))
    path = Path(gate)
    deadline = time.monotonic() + limit
    while not (path.exists() or (path.parent / "ALL").exists()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.01)
    return gate


def count_then_wait(counter: str, gate: str | None, started: str | None) -> str:
    count_run(counter)
    if gate is not None:
        wait_for_gate(gate, started)
    return counter


def sleep_unless_zero(tenths: int) -> float:
    """Sleeps ``tenths`` tenths of a second; 0 raises ZeroDivisionError."""
    if tenths == 0:
        raise ZeroDivisionError("zero tenths of a second")
    time.sleep(tenths / 10)
    return tenths / 10


def environment() -> dict[str, str]:
    return dict(os.environ)


async def triple_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return 3 * x


def total(values: list[int]) -> int:
    return sum(values)


# -- helpers -------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def journal_result(directory: Path, task_id: str, timeout: float = 30.0) -> TaskResult:
    """A task's final result, once the head has written it to the journal."""
    def read() -> TaskResult | None:
        with closing(Results(directory)) as results:
            return results.get(task_id)
    return wait_for(read, f"the result of {task_id} in {directory}", timeout)


def all_results(directory: Path) -> dict[str, TaskResult]:
    with closing(Results(directory)) as results:
        return dict(results.items())


def submitted_count(directory: Path, task_ids: list[str]) -> int:
    """How many of ``task_ids`` the head has journaled as submitted (it has them then)."""
    uri = f"file:{directory / 'journal.db'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute("SELECT task_id FROM submitted").fetchall()
    return len({task_id for (task_id,) in rows} & set(task_ids))


def gone(pid: int) -> bool:
    return not process_alive(pid)


def lock_free(directory: Path) -> bool:
    """Whether no launcher holds the run directory's lock (the kernel drops a killed
    holder's lock a moment after it is a zombie)."""
    fd = os.open(directory / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def kill_head(directory: Path) -> None:
    """kill -9 of the cluster's head; returns once it is gone and its lock dropped."""
    pid = ClusterFile(directory).read().pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid) and lock_free(directory), "the killed head to be gone", 10)


def el_command() -> list[str]:
    script = Path(sys.executable).with_name("el")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ensemble_launcher.cli"]


def run_el(*args: Any, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*el_command(), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=90)


def log_tail(directory: Path, lines: int = 40) -> str:
    path = directory / "logs" / "head.log"
    if not path.exists():
        return f"(no {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def system() -> SystemConfig:
    return SystemConfig(name="local", ncpus=2)


class Clusters:
    """Starts heads for a test, and makes sure none outlives it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.gates = tmp_path / "gates"
        self.gates.mkdir()
        self.dirs: list[Path] = []
        self._launchers: list[EnsembleLauncher] = []
        self._heads: list[subprocess.Popen] = []

    def config(self, directory: Path, **options: Any) -> LauncherConfig:
        options.setdefault("nlevels", 0)
        options.setdefault("heartbeat_interval", HEARTBEAT)
        options.setdefault("shutdown_grace", 2.0)
        return LauncherConfig(cluster=True, checkpoint_dir=str(directory), **options)

    def start(self, ensemble_file: Any = None, *, name: str = "ck", return_stdout: bool = False,
              **options: Any) -> EnsembleLauncher:
        directory = self.tmp_path / name
        launcher = EnsembleLauncher(ensemble_file={} if ensemble_file is None else ensemble_file,
                                    system_config=system(),
                                    launcher_config=self.config(directory, **options),
                                    return_stdout=return_stdout)
        return self.started(launcher.start())

    def run_again(self, directory: Path, **options: Any) -> None:
        """Start the cluster again on ``directory`` (a restart) and drain it."""
        again = EnsembleLauncher(ensemble_file={}, system_config=system(),
                                 launcher_config=self.config(directory, **options))
        self.started(again.start())
        again.stop(timeout=60)

    def started(self, launcher: EnsembleLauncher) -> EnsembleLauncher:
        self.watch(launcher.run_dir)
        self._launchers.append(launcher)
        if launcher._head is not None:
            self._heads.append(launcher._head)
        return launcher

    def watch(self, directory: Path) -> None:
        if directory not in self.dirs:
            self.dirs.append(directory)

    def gate(self, name: str) -> str:
        return str(self.gates / name)

    def open(self, name: str) -> None:
        Path(self.gate(name)).touch()

    def wait_started(self, name: str) -> None:
        """Until the task behind gate ``name`` runs (it wrote ``name.started``)."""
        started = Path(self.gate(f"{name}.started"))
        wait_for(started.exists, f"the task behind gate {name} to start")

    def close(self) -> None:
        (self.gates / "ALL").touch()
        for launcher in self._launchers:
            try:
                launcher.stop(timeout=10)
            except Exception as exc:  # noqa: BLE001 - teardown reports and goes on
                print(f"stop of {launcher.run_dir} failed: {exc!r}")
        for head in self._heads:
            if head.poll() is None:
                head.kill()
            head.wait(timeout=30)
        for directory in self.dirs:
            self._kill_stray_head(directory)
            print(f"--- tail of {directory}/logs/head.log ---\n{log_tail(directory)}")

    @staticmethod
    def _kill_stray_head(directory: Path) -> None:
        """A head that did not stop (or one el start started) is killed."""
        try:
            info = ClusterFile(directory).read()
        except ClusterLost:
            return
        if process_alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
            wait_for(lambda: gone(info.pid), f"stray head {info.pid} to die", 10)


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Clusters]:
    started = Clusters(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def cluster(clusters: Clusters, request: pytest.FixtureRequest) -> EnsembleLauncher:
    """A running cluster on 2 cores, at nlevels=0 unless the test is parametrized with
    ``at_depths``."""
    return clusters.start(nlevels=getattr(request, "param", 0))


at_depths = pytest.mark.parametrize("cluster", [0, 1], indirect=True,
                                    ids=["nlevels0", "nlevels1"])


@pytest.fixture
def client(cluster: EnsembleLauncher) -> Iterator[ClusterClient]:
    with ClusterClient(cluster.run_dir) as connected:
        yield connected


def block_both_cores(client: ClusterClient, clusters: Clusters,
                     names: tuple[str, str] = ("a", "b")) -> list:
    """Two tasks that hold the 2 cores until their gates open; returns once both run."""
    futures = [client.submit(wait_for_gate, clusters.gate(name),
                             clusters.gate(f"{name}.started")) for name in names]
    for name in names:
        clusters.wait_started(name)
    return futures


# -- 1. the original project's cluster examples, unchanged ---------------------------------


def test_python_api_example_runs_unchanged(tmp_path, clusters):
    checkpoint_dir = str(tmp_path / "ckpt")
    el = EnsembleLauncher(
        ensemble_file={},
        system_config=SystemConfig(name="local", ncpus=2),
        launcher_config=LauncherConfig(cluster=True, checkpoint_dir=checkpoint_dir),
        Nodes=[os.uname().nodename],
    )
    el.start()
    clusters.started(el)
    with ClusterClient(checkpoint_dir=checkpoint_dir) as client:
        futures = {}
        for i in range(10):
            task = Task(task_id=f"task-{i}", nnodes=1, ppn=1, executable=double, args=(i,))
            futures[task.task_id] = client.submit(task)
        results = {tid: fut.result(timeout=60) for tid, fut in futures.items()}
    el.stop()
    assert results == {f"task-{i}": 2 * i for i in range(10)}
    assert not (tmp_path / "ckpt" / "cluster.json").exists()
    finished = all_results(tmp_path / "ckpt")
    assert {tid: r.state for tid, r in finished.items()} == dict.fromkeys(results, "succeeded")


def test_context_manager_starts_and_stops_the_cluster(tmp_path, clusters):
    checkpoint_dir = tmp_path / "ckpt"
    clusters.watch(checkpoint_dir)
    with EnsembleLauncher(ensemble_file={}, system_config=system(),
                          launcher_config=clusters.config(checkpoint_dir)) as el:
        pid = ClusterFile(checkpoint_dir).read().pid
        with ClusterClient(checkpoint_dir) as client:
            assert client.submit(add, 2, b=3).result(timeout=60) == 5
    assert el.run_dir == checkpoint_dir
    wait_for(lambda: gone(pid), "the head to exit after the with block", 10)
    assert not (checkpoint_dir / "cluster.json").exists()
    with pytest.raises(ClusterLost, match="no cluster is running"):
        ClusterClient(checkpoint_dir).start(timeout=2)


SUBMIT_SCRIPT = """
import json, sys
from ensemble_launcher.ensemble import Task
from ensemble_launcher.orchestrator import ClusterClient

def square(i):
    return i * i

with ClusterClient(checkpoint_dir=sys.argv[1]) as client:
    futures = {f"sq-{i}": client.submit(Task(task_id=f"sq-{i}", executable=square, args=(i,)))
               for i in range(5)}
    print(json.dumps({tid: f.result(timeout=60) for tid, f in futures.items()}))
"""


def test_cli_start_submit_status_stop(tmp_path, clusters):
    checkpoint_dir = tmp_path / "ckpt"
    clusters.watch(checkpoint_dir)
    (tmp_path / "my_ensemble.json").write_text(json.dumps({"ensembles": {"greet": {
        "cmd_template": "echo hello {who}", "who": ["a", "b", "c"]}}}))
    (tmp_path / "launcher_cluster.json").write_text(json.dumps({
        "task_executor_name": "async_processpool", "comm_name": "async_zmq", "nlevels": 1,
        "cluster": True, "checkpoint_dir": str(checkpoint_dir)}))
    (tmp_path / "submit_tasks.py").write_text(SUBMIT_SCRIPT)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}

    started = run_el("start", "my_ensemble.json", "--launcher-config-file",
                 "launcher_cluster.json", cwd=tmp_path, env=env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == str(checkpoint_dir.resolve())
    submitted = subprocess.run([sys.executable, "submit_tasks.py", str(checkpoint_dir)],
                               capture_output=True, text=True, cwd=tmp_path, env=env, timeout=90)
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout) == {f"sq-{i}": i * i for i in range(5)}
    def status() -> str | None:
        shown = run_el("status", checkpoint_dir, cwd=tmp_path, env=env)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout if "greet: 3/3 finished" in shown.stdout else None
    live = wait_for(status, "el status to show the ensemble finished", 15)
    assert "running" in live.splitlines()[0], live
    stopped = run_el("stop", cwd=tmp_path, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not (checkpoint_dir / "cluster.json").exists()

    finished = all_results(checkpoint_dir)
    greetings = [r for r in finished.values() if r.ensemble == "greet"]
    assert sorted(r.state for r in greetings) == ["succeeded"] * 3
    assert {f"sq-{i}" for i in range(5)} <= set(finished)


def test_a_non_empty_ensemble_runs_first_and_el_stop_dir_stops_it(tmp_path, clusters):
    tasks = {f"first-{i}": Task(task_id=f"first-{i}", executable=double, args=(i,))
             for i in range(4)}
    launcher = clusters.start(tasks)
    for task_id in tasks:
        assert journal_result(launcher.run_dir, task_id).value == 2 * int(task_id.split("-")[1])
    with ClusterClient(launcher.run_dir) as client:
        assert client.submit(double, 21).result(timeout=60) == 42
    stopped = run_el("stop", launcher.run_dir, cwd=tmp_path, env=dict(os.environ))
    assert stopped.returncode == 0, stopped.stderr
    assert all(r.ok for r in all_results(launcher.run_dir).values())


def test_submit_batch_map_wait_and_as_completed(client):
    batch = client.submit_batch([Task(task_id=f"batch-{i}", executable=double, args=(i,))
                                 for i in range(8)])
    done, not_done = wait(batch, timeout=60)
    assert not not_done and sorted(f.result() for f in done) == [2 * i for i in range(8)]
    singles = [client.submit(inc, i) for i in range(8)]
    assert sorted(f.result() for f in as_completed(singles, timeout=60)) == list(range(1, 9))
    assert list(client.map(add, range(100), range(100), window=16)) == \
        [2 * i for i in range(100)]


def test_map_passes_futures_among_its_items_and_raises_a_failure_in_its_place(client):
    """An item holding a future waits for its value; the results come in input order;
    the first failure raises the task's own exception where its result would be, and
    leaving the loop there cancels the tasks still in flight (their results are final)."""
    base = client.submit(inc, 41)
    assert list(client.map(add, [1, base, 3], [10, 20, 30])) == [11, 62, 33]
    results = client.map(sleep_unless_zero, [1, 1, 0, 600, 600, 600], window=6)
    assert [next(results), next(results)] == [0.1, 0.1]
    with pytest.raises(ZeroDivisionError):
        next(results)
    results.close()
    ids = [f"{client._session}.{n}" for n in range(4, 10)]
    states = {task_id: journal_result(client.checkpoint_dir, task_id).state for task_id in ids}
    assert [states[task_id] for task_id in ids] == \
        ["succeeded", "succeeded", "failed", "cancelled", "cancelled", "cancelled"]
    assert list(client.map(inc, range(3), task_timeout=30)) == [1, 2, 3]


def test_map_takes_keyword_arguments_dependencies_and_commands(client):
    """Keyword arguments go to every call; a failed dependency fails every task of the map
    with DependencyFailed (and the cluster goes on); a command is mapped as submit() runs
    one, each input's items appended."""
    assert list(client.map(add, range(3), b=10)) == [10, 11, 12]
    bad = client.submit(raise_value_error)
    with pytest.raises(DependencyFailed, match=bad.task_id):
        list(client.map(inc, range(3), dependencies=[bad]))
    assert list(client.map("true", ["a", "b"])) == [0, 0]
    assert client.submit(inc, 1).result(timeout=60) == 2


def test_a_client_sending_its_own_task_ids_again_is_refused(cluster):
    """A task id a client made itself names one task: sent again (a bug, or a replay of
    its messages), alone or in a map chunk, it is refused, never run twice; the cluster
    stops cleanly afterwards, with one result for it."""
    with ClusterClient(cluster.run_dir) as client:
        assert list(client.map(inc, [1])) == [2]
        first = f"{client._session}.0"
        with pytest.raises(InvalidTask, match="submitted before"):
            client.submit(Task(task_id=first, executable=inc, args=(5,))).result(timeout=60)
        template = SubmitRecord("", {}, client._digest(inc), None, [], False, 0, "")
        client._post(SubmitMap(list(template), 0, [pickle.dumps(((7,), {}))]))
        assert client.submit(inc, 2).result(timeout=60) == 3
    cluster.stop(timeout=60)
    assert journal_result(cluster.run_dir, first).value == 2


def test_a_restart_reruns_only_the_unfinished_tasks_of_a_map(clusters, tmp_path):
    """A map's chunk is journaled as one row: after a kill -9, a restart runs the tasks of
    it that had not finished (those that were running, and those still pending), each
    once more, and not the ones that had."""
    counters = tmp_path / "counters"
    counters.mkdir()
    launcher = clusters.start()
    directory = launcher.run_dir
    items = [(str(counters / f"item-{i}"), None if i < 2 else clusters.gate(f"g{i}"),
              None if i < 2 else clusters.gate(f"g{i}.started")) for i in range(8)]
    with ClusterClient(directory) as client:
        mapped = client.map(count_then_wait, *zip(*items, strict=True))
        assert [next(mapped), next(mapped)] == [items[0][0], items[1][0]]
        clusters.wait_started("g2")
        clusters.wait_started("g3")
        kill_head(directory)
        with pytest.raises(ClusterLost):
            next(mapped)
    clusters.close()
    clusters.run_again(directory)
    runs = {path.name: path.read_text().count("ran") for path in counters.iterdir()}
    assert runs == {"item-0": 1, "item-1": 1, "item-2": 2, "item-3": 2,
                    **{f"item-{i}": 1 for i in range(4, 8)}}
    assert all(result.ok for result in all_results(directory).values())


def test_stop_drains_work_of_a_client_that_left(cluster, tmp_path):
    """A chain and a queue behind busy cores outlive the client that submitted them, and
    stop() waits for them: they are all in the journal, succeeded."""
    with ClusterClient(cluster.run_dir) as client:
        slow = [client.submit(Task(task_id=f"slow-{i}", executable=sleep_for, args=(0.3,)))
                for i in range(4)]
        link = client.submit(Task(task_id="link-0", executable=inc, args=(0,)))
        for n in range(1, 5):
            link = client.submit(Task(task_id=f"link-{n}", executable=inc, args=(link,)))
        wait_for(lambda: submitted_count(cluster.run_dir, ["link-4"]) == 1,
                 "the head to have the chain")
    assert all(future.done() for future in [*slow, link]), "teardown settles every future"
    cluster.stop()
    results = all_results(cluster.run_dir)
    assert all(results[f"slow-{i}"].ok for i in range(4))
    assert results["link-4"].ok and results["link-4"].value == 5


@pytest.mark.parametrize(("nlevels", "node_id"), [(1, "main.w0"), (2, "main.m0"),
                                                (2, "main.m0.w0"), (1, "main")])
def test_a_client_routed_to_a_subtree_gets_its_results(clusters, nlevels, node_id):
    launcher = clusters.start(nlevels=nlevels)
    with ClusterClient(checkpoint_dir=launcher.run_dir, node_id=node_id) as client:
        futures = [client.submit(Task(task_id=f"routed-{i}", executable=double, args=(i,)))
                   for i in range(6)]
        futures.append(client.submit("true"))
        assert [f.result(timeout=60) for f in futures] == [0, 2, 4, 6, 8, 10, 0]


@pytest.mark.parametrize("how", ["el stop", "kill -9"])
def test_stop_of_a_cluster_already_gone_returns_and_reaps_the_head(clusters, tmp_path, how):
    """el stop from a shell (or a head that died) before the script's own stop(), as at
    the end of a with block: stop() has nothing left to do, and leaves no zombie."""
    launcher = clusters.start()
    head = launcher._head
    assert head is not None
    if how == "el stop":
        stopped = run_el("stop", launcher.run_dir, cwd=tmp_path, env=dict(os.environ))
        assert stopped.returncode == 0, stopped.stderr
    else:
        head.send_signal(signal.SIGKILL)
    launcher.stop(timeout=10)
    assert head.poll() is not None, "stop() returned with the head still running"


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("head", ["alive", "dead"])
def test_start_raises_when_no_head_answers(tmp_path, head):
    """A cluster.json left behind, or naming a head that never answers (hung, or its pid
    reused): start() raises ClusterLost, never hands back a client that is already lost."""
    directory = tmp_path / "ck"
    directory.mkdir(mode=0o700)
    pid = os.getpid() if head == "alive" else _dead_pid()
    (directory / "cluster.json").write_text(json.dumps({
        "address": f"ipc://{directory}/cluster.sock", "pid": pid, "host": os.uname().nodename,
        "heartbeat": HEARTBEAT}))
    client = ClusterClient(directory)
    try:
        with pytest.raises(ClusterLost):
            client.start(timeout=5)
    finally:
        client.teardown()


def test_tasks_submitted_before_shutdown_still_run(cluster):
    """shutdown_cluster() (what el stop sends) right after submits: those tasks were
    submitted first, so they run, and then the head stops."""
    with ClusterClient(cluster.run_dir) as client:
        futures = [client.submit(double, i) for i in range(5)]
        client.shutdown_cluster()
        assert [f.result(timeout=60) for f in futures] == [0, 2, 4, 6, 8]
    wait_for(lambda: not (cluster.run_dir / "cluster.json").exists(), "the head to stop", 30)


def test_a_client_for_an_unknown_node_is_refused(cluster):
    with pytest.raises(ClusterLost, match="main.nowhere"):
        ClusterClient(cluster.run_dir, node_id="main.nowhere").start(timeout=10)


def test_el_run_is_refused_in_cluster_mode(clusters, tmp_path):
    launcher = EnsembleLauncher(ensemble_file={}, system_config=system(),
                           launcher_config=clusters.config(tmp_path / "never"))
    with pytest.raises(ConfigError, match="start"):
        launcher.run()
    assert not (tmp_path / "never").exists()


# -- 2. what a future holds -----------------------------------------------------------------


def test_a_callable_future_holds_its_value(client):
    assert client.submit(add, 40, b=2).result(timeout=60) == 42
    assert client.submit(Task(task_id="kw", executable=add, args=(1,),
                              kwargs={"b": 2})).result(timeout=60) == 3


def test_a_command_future_holds_exit_code_zero(client):
    assert client.submit("true").result(timeout=60) == 0
    assert client.submit(["sh", "-c", "echo ignored"]).result(timeout=60) == 0


def test_a_command_future_holds_stdout_with_return_stdout(clusters):
    launcher = clusters.start(return_stdout=True)
    with ClusterClient(launcher.run_dir) as client:
        assert client.submit("echo", "hello", "world").result(timeout=60) == "hello world\n"
        assert client.submit(Task(task_id="cmd", executable="echo from-a-task")).result(
            timeout=60) == "from-a-task\n"


def test_the_task_own_exception_is_raised_with_the_remote_traceback(client):
    future = client.submit(raise_value_error)
    with pytest.raises(ValueError, match="bad value 42") as caught:
        future.result(timeout=60)
    cause = caught.value.__cause__
    assert cause is not None and "raise_value_error" in str(cause)
    assert 'raise ValueError("bad value 42")' in str(cause)


def test_an_exception_class_of_the_task_module_comes_back_as_that_class(client):
    with pytest.raises(WorkflowError) as caught:
        client.submit(raise_workflow_error, 7).result(timeout=60)
    assert type(caught.value) is WorkflowError
    assert str(caught.value) == "workflow step failed with code 7"
    assert "raise_workflow_error" in str(caught.value.__cause__)


def test_an_exception_the_client_cannot_rebuild_is_a_task_error(client):
    with pytest.raises(TaskError) as caught:
        client.submit(raise_needs_two_args).result(timeout=60)
    error = caught.value
    assert "NeedsTwoArgs" in (error.exception_type or "")
    assert "cannot rebuild me (7)" in str(error)
    assert "raise NeedsTwoArgs" in (error.remote_traceback or "")


def test_a_failed_command_raises_command_failed_with_code_and_stderr(client):
    with pytest.raises(CommandFailed) as caught:
        client.submit(["sh", "-c", "echo disk-on-fire >&2; exit 3"]).result(timeout=60)
    assert caught.value.returncode == 3
    assert "disk-on-fire" in caught.value.stderr
    assert "disk-on-fire" in str(caught.value)


@pytest.mark.parametrize("kind", ["callable", "command"])
def test_a_task_past_its_timeout_raises_task_timed_out(client, kind):
    future = client.submit(sleep_for, 30, timeout=0.5) if kind == "callable" \
        else client.submit(["sleep", "30"], timeout=0.5)
    with pytest.raises(TaskTimedOut):
        future.result(timeout=30)


# -- 3. dependencies ------------------------------------------------------------------------


def test_a_twenty_link_chain_passes_values_through_futures(client):
    future = client.submit(inc, 0)
    for _ in range(19):
        future = client.submit(inc, future)
    assert future.result(timeout=60) == 20


def test_futures_inside_list_and_dict_arguments_are_replaced(client):
    one, two, three = (client.submit(inc, n) for n in (0, 1, 2))
    combined = client.submit(nested_total, [one, (two, 10)], weights={"x": three, "y": 100})
    assert combined.result(timeout=60) == 1 + 2 + 10 + 3 + 100


def test_dependencies_wait_without_passing_values(client, tmp_path):
    path = str(tmp_path / "made-by-the-first")
    first = client.submit(write_after_a_while, path, "written first")
    second = client.submit(read_text, path, dependencies=[first])
    assert second.result(timeout=60) == "written first"
    assert first.result(timeout=1) is None


def test_a_failing_dependency_fails_its_dependents_which_never_run(cluster, client, tmp_path):
    bad = client.submit(raise_value_error)
    waits = client.submit(touch, str(tmp_path / "waits"), dependencies=[bad])
    takes_value = client.submit(add, bad, 1)
    downstream = client.submit(touch, str(tmp_path / "downstream"), dependencies=[waits])
    for dependent in (waits, takes_value, downstream):
        with pytest.raises(DependencyFailed) as caught:
            dependent.result(timeout=60)
        assert bad.task_id in str(caught.value) or waits.task_id in str(caught.value)
    with pytest.raises(DependencyFailed, match=bad.task_id):
        waits.result()
    for dependent in (waits, takes_value, downstream):
        row = journal_result(cluster.run_dir, dependent.task_id)
        assert (row.state, row.reason) == ("failed", "dependency")
        assert row.start_time == row.end_time or row.host is None
    assert not (tmp_path / "waits").exists()
    assert not (tmp_path / "downstream").exists()


# -- 4. cancel ------------------------------------------------------------------------------


@at_depths
def test_cancel_of_a_pending_task_it_never_runs(cluster, clusters, client, tmp_path):
    """The first pending task may already wait in a worker's queue, the last is still in
    the head's: cancelled, neither runs, and a task that takes the first's value fails."""
    blockers = block_both_cores(client, clusters)
    pending = [client.submit(touch, str(tmp_path / f"pending-{i}")) for i in range(8)]
    dependent = client.submit(inc, pending[0])
    wait_for(lambda: submitted_count(cluster.run_dir, [f.task_id for f in pending]) == 8,
             "the head to have the pending tasks")
    cancelled = (pending[0], pending[-1])
    assert [future.cancel() for future in cancelled] == [True, True]
    for future in cancelled:
        with pytest.raises(CancelledError):
            future.result(timeout=10)
    clusters.open("a")
    clusters.open("b")
    with pytest.raises(DependencyFailed, match="cancelled"):
        dependent.result(timeout=30)
    for blocker in blockers:
        blocker.result(timeout=30)
    for future in pending[1:-1]:
        future.result(timeout=30)
    for future in cancelled:
        assert journal_result(cluster.run_dir, future.task_id).state == "cancelled"
    ran = sorted(path.name for path in tmp_path.glob("pending-*"))
    assert ran == [f"pending-{i}" for i in range(1, 7)]


@at_depths
def test_cancel_right_after_submit_is_not_lost(cluster, clusters, client, tmp_path):
    """The cancel may reach the head in the same turn as the task: it still never runs."""
    blockers = block_both_cores(client, clusters)
    marker = tmp_path / "ran"
    future = client.submit(touch, str(marker))
    dependent = client.submit(inc, future)
    assert future.cancel() is True
    clusters.open("a")
    clusters.open("b")
    for blocker in blockers:
        blocker.result(timeout=30)
    with pytest.raises(DependencyFailed, match="cancelled"):
        dependent.result(timeout=30)
    assert journal_result(cluster.run_dir, future.task_id).state == "cancelled"
    assert not marker.exists()


@at_depths
@pytest.mark.parametrize("kind", ["command", "callable"])
def test_cancel_of_a_running_task_stops_its_processes(cluster, client, tmp_path, kind):
    pid_file = tmp_path / "pids"
    if kind == "command":
        running = client.submit(["sh", "-c", f"sleep 60 & echo $$ $! > {pid_file}.tmp; "
                                 f"mv {pid_file}.tmp {pid_file}; wait"])
    else:
        running = client.submit(wait_for_gate, str(tmp_path / "never"), str(pid_file))
    pids = wait_for(lambda: pid_file.exists() and pid_file.read_text().split(),
                    "the task to start")
    assert running.cancel() is True
    with pytest.raises(CancelledError):
        running.result(timeout=1)
    for pid in map(int, pids):
        wait_for(lambda pid=pid: gone(pid), f"the task's process {pid} to be stopped", 15)
    assert journal_result(cluster.run_dir, running.task_id).state == "cancelled"
    assert [client.submit(inc, n).result(timeout=30) for n in range(3)] == [1, 2, 3]


def test_cancel_returns_false_for_a_finished_task(client):
    future = client.submit(inc, 1)
    assert future.result(timeout=60) == 2
    assert future.cancel() is False
    assert future.result() == 2
    assert not future.cancelled()


@at_depths
def test_cancel_tag_cancels_every_task_with_the_tag(cluster, clusters, client, tmp_path):
    blockers = block_both_cores(client, clusters)
    tagged = [client.submit(Task(task_id=f"tagged-{i}", executable=touch,
                                 args=(str(tmp_path / f"tagged-{i}"),), tag="sweep-7"))
              for i in range(5)]
    other = client.submit(Task(task_id="untagged", executable=inc, args=(1,), tag="keep"))
    wait_for(lambda: submitted_count(cluster.run_dir, [f.task_id for f in tagged]) == 5,
             "the head to have the tagged tasks")
    client.cancel_tag("sweep-7")
    for future in tagged:
        with pytest.raises(CancelledError):
            future.result(timeout=30)
    clusters.open("a")
    clusters.open("b")
    assert other.result(timeout=30) == 2
    for blocker in blockers:
        blocker.result(timeout=30)
    for future in tagged:
        assert journal_result(cluster.run_dir, future.task_id).state == "cancelled"
    assert not list(tmp_path.glob("tagged-*"))


# -- 5. priority ----------------------------------------------------------------------------


@pytest.mark.parametrize("nlevels", [0, 1])
def test_a_high_priority_task_starts_before_pending_low_ones(clusters, nlevels):
    launcher = clusters.start(nlevels=nlevels)
    with ClusterClient(launcher.run_dir) as client:
        blockers = block_both_cores(client, clusters)
        low = [client.submit(Task(task_id=f"low-{i}", executable=inc, args=(i,)))
               for i in range(20)]
        wait_for(lambda: submitted_count(launcher.run_dir, [f.task_id for f in low]) == 20,
                 "the head to have the low-priority tasks")
        high = client.submit(Task(task_id="high", executable=inc, args=(0,)), priority=10)
        wait_for(lambda: submitted_count(launcher.run_dir, ["high"]) == 1,
                 "the head to have the high-priority task")
        clusters.open("a")
        for future in [high, *low]:
            future.result(timeout=60)
        clusters.open("b")
        for blocker in blockers:
            blocker.result(timeout=30)
    results = all_results(launcher.run_dir)
    low_starts = [results[f"low-{i}"].start_time for i in range(20)]
    order = sorted(["high", *(f"low-{i}" for i in range(20))],
                   key=lambda task_id: results[task_id].start_time)
    assert order[0] == "high", f"start order: {order[:4]}"
    assert low_starts == sorted(low_starts), "equal priorities run in submission order"


def test_submit_of_a_task_takes_priority_from_the_keyword(clusters):
    """The keyword also applies to submit(Task): a Task has no priority field of its own."""
    launcher = clusters.start()
    with ClusterClient(launcher.run_dir) as client:
        assert client.submit(Task(task_id="p", executable=inc, args=(1,)),
                             priority=5).result(timeout=60) == 2


# -- 6. async callables ---------------------------------------------------------------------


def test_an_async_def_callable_runs_and_returns_its_value(client):
    assert client.submit(triple_later, 4).result(timeout=60) == 12


def test_async_task_is_accepted(client):
    task = AsyncTask(task_id="async-1", executable=triple_later, args=(5,))
    assert client.submit(task).result(timeout=60) == 15


# -- 7. many clients, authenticated ---------------------------------------------------------


OTHER_CLIENT = """
import json, sys
from ensemble_launcher.orchestrator import ClusterClient

def offset(i, base):
    return base + i

with ClusterClient(sys.argv[1], client_id="other") as client:
    futures = [client.submit(offset, i, 1000) for i in range(30)]
    print(json.dumps([f.result(timeout=60) for f in futures]))
"""


def test_two_clients_at_once_each_get_their_own_results(cluster, tmp_path):
    script = tmp_path / "other_client.py"
    script.write_text(OTHER_CLIENT)
    other = subprocess.Popen([sys.executable, str(script), str(cluster.run_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with ClusterClient(cluster.run_dir, client_id="first") as first, \
                ClusterClient(cluster.run_dir, client_id="second") as second:
            ones = [first.submit(add, i, 100) for i in range(30)]
            twos = [second.submit(add, i, 200) for i in range(30)]
            assert [f.result(timeout=60) for f in ones] == [100 + i for i in range(30)]
            assert [f.result(timeout=60) for f in twos] == [200 + i for i in range(30)]
        out, err = other.communicate(timeout=90)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert other.returncode == 0, err
    assert json.loads(out) == [1000 + i for i in range(30)]


def test_a_task_id_another_client_holds_is_refused_to_the_second(cluster, clusters):
    with ClusterClient(cluster.run_dir) as first, ClusterClient(cluster.run_dir) as second:
        mine = first.submit(Task(task_id="shared-id", executable=wait_for_gate,
                                 args=(clusters.gate("shared"),)))
        wait_for(lambda: submitted_count(cluster.run_dir, ["shared-id"]) == 1,
                 "the head to have the first task")
        theirs = second.submit(Task(task_id="shared-id", executable=inc, args=(1,)))
        with pytest.raises(InvalidTask, match="already a task"):
            theirs.result(timeout=30)
        clusters.open("shared")
        assert mine.result(timeout=30) == clusters.gate("shared")


def _copy_with_keys(source: Path, target: Path, **keys: str) -> Path:
    """A checkpoint dir whose cluster.json names the same cluster with other keys."""
    target.mkdir(mode=0o700)
    record = json.loads((source / "cluster.json").read_text())
    record.update(keys)
    (target / "cluster.json").write_text(json.dumps(record))
    return target


@pytest.fixture
def tcp_cluster(clusters: Clusters) -> EnsembleLauncher:
    return clusters.start(cluster_address="127.0.0.1", name="tcp")


IMPOSTOR = """
import sys, time
from ensemble_launcher.orchestrator import ClusterClient

began = time.monotonic()
try:
    ClusterClient(sys.argv[1]).start(timeout=2)
except Exception as exc:
    print(type(exc).__name__, f"{time.monotonic() - began:.1f}")
else:
    print("welcomed")
"""


def _start_in_a_process(directory: Path, tmp_path: Path) -> tuple[str, float]:
    """ClusterClient(directory).start(timeout=2) in its own process, so that a client that
    hangs cannot hang the tests; what it raised, and after how many seconds."""
    script = tmp_path / "impostor.py"
    script.write_text(IMPOSTOR)
    try:
        out = subprocess.run([sys.executable, str(script), str(directory)], capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("ClusterClient.start(timeout=2) with the wrong keys did not return "
                    "within 20 s")
    assert out.returncode == 0, out.stderr
    raised, seconds = out.stdout.split()
    return raised, float(seconds)


def test_a_client_with_other_keys_over_tcp_is_refused(tcp_cluster, tmp_path):
    record = json.loads((tcp_cluster.run_dir / "cluster.json").read_text())
    assert record["address"].startswith("tcp://127.0.0.1:")
    public, secret = zmq.curve_keypair()
    impostor = _copy_with_keys(tcp_cluster.run_dir, tmp_path / "impostor",
                               client_public=public.decode(), client_secret=secret.decode())
    raised, seconds = _start_in_a_process(impostor, tmp_path)
    assert raised == "ClusterLost" and seconds < 10
    other_server, _ = zmq.curve_keypair()
    wrong_server = _copy_with_keys(tcp_cluster.run_dir, tmp_path / "wrong-server",
                                   server_public=other_server.decode())
    raised, seconds = _start_in_a_process(wrong_server, tmp_path)
    assert raised == "ClusterLost" and seconds < 10
    with ClusterClient(tcp_cluster.run_dir) as good:
        assert good.submit(inc, 41).result(timeout=60) == 42


GARBAGE: list[list[bytes]] = [
    [b""],
    [b"\x00\xff\xfe not msgpack"],
    [b"\x93\x01\x02"],
    [b"\x92\xcd\x99\x99\xc0"],
    [b"first", b"second", b"third"],
    [os.urandom(4096)],
]


def _garbage_messages() -> list[list[bytes]]:
    """Frames that are ours in form but wrong in content, then plain garbage."""
    import msgpack

    from ensemble_launcher.cluster.protocol import Join, Submit
    from ensemble_launcher.comm.messages import Define, Request

    return [
        [Submit([["t", {}, None, None, [], False, 0, ""]]).encode()],
        [msgpack.packb([40, 1, 2, 3, 4])],
        [Join("raw", "global", 1, "nowhere").encode()],
        [msgpack.packb([43, [["x"]]])],
        [msgpack.packb([43, [["y", {"nnodes": "many"}, None, None, [], False, 0, ""]]])],
        [msgpack.packb([43, [["z", {}, b"\x01" * 32, None, [], False, 0, ""]]])],
        [Define(b"\x02" * 32, b"not a pickle").encode()],
        [Request(5).encode()],
        [msgpack.packb([43, [["w", {}, b"\x02" * 32, b"not a pickle", [], True, 0, ""]]])],
        [msgpack.packb([45, "not a list", 7])],
        [msgpack.packb([99])],
        *GARBAGE,
    ]


def _raw_dealer(ctx: zmq.Context, directory: Path) -> zmq.Socket:
    info = ClusterFile(directory).read()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if info.keys is not None:
        dealer.setsockopt(zmq.CURVE_SERVERKEY, info.keys.server_public)
        dealer.setsockopt(zmq.CURVE_PUBLICKEY, info.keys.client_public)
        dealer.setsockopt(zmq.CURVE_SECRETKEY, info.keys.client_secret)
    dealer.connect(info.address)
    return dealer


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_garbage_frames_do_not_crash_the_head(clusters, transport):
    options = {"cluster_address": "127.0.0.1"} if transport == "tcp" else {}
    launcher = clusters.start(name=transport, **options)
    assert ClusterFile(launcher.run_dir).read().address.startswith(f"{transport}://")
    pid = ClusterFile(launcher.run_dir).read().pid
    ctx = zmq.Context()
    try:
        dealer = _raw_dealer(ctx, launcher.run_dir)
        for frames in _garbage_messages():
            dealer.send_multipart(frames)
        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(ClusterFile(launcher.run_dir).read().address)
        for frames in GARBAGE:
            stranger.send_multipart(frames)
        with ClusterClient(launcher.run_dir) as good:
            assert good.submit(inc, 1).result(timeout=60) == 2
            for frames in GARBAGE:
                dealer.send_multipart(frames)
            assert good.submit(inc, 2).result(timeout=60) == 3
        dealer.close()
        stranger.close()
    finally:
        ctx.term()
    assert process_alive(pid)
    assert "dropped a bad frame" in log_tail(launcher.run_dir, 400)


def test_checkpoint_dir_is_0700_and_cluster_json_0600(tcp_cluster):
    directory = tcp_cluster.run_dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "cluster.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "head.pkl").stat().st_mode) == 0o600
    with ClusterClient(directory) as client:
        assert client.submit(inc, 1).result(timeout=60) == 2
    secret = json.loads((directory / "cluster.json").read_text())["client_secret"].encode()
    holding = [path for path in directory.rglob("*") if path.is_file()
               and path.name != "cluster.json" and secret in path.read_bytes()]
    assert not holding, f"the client's secret key is also in {holding}"


def _secrets_of(directory: Path) -> list[str]:
    record = json.loads((directory / "cluster.json").read_text())
    return [record["server_public"], record["client_public"], record["client_secret"],
            str(directory / "cluster.json")]


def _assert_no_key_material(env: dict[str, str], secrets: list[str]) -> None:
    assert not [name for name in env if name.startswith("EL_CURVE")], sorted(env)
    assert not OUR_VARIABLES.intersection(env), sorted(OUR_VARIABLES.intersection(env))
    leaks = [(name, secret) for name, value in env.items() for secret in secrets
             if secret in value]
    assert not leaks, leaks


@pytest.mark.parametrize("nlevels", [0, 1])
def test_a_task_environment_holds_no_key_material(clusters, nlevels):
    launcher = clusters.start(cluster_address="127.0.0.1", bind_address="127.0.0.1",
                         nlevels=nlevels, return_stdout=True)
    secrets = _secrets_of(launcher.run_dir)
    with ClusterClient(launcher.run_dir) as client:
        from_callable = client.submit(environment).result(timeout=60)
        printed = client.submit(["env", "-0"]).result(timeout=60)
    from_command = dict(line.split("=", 1) for line in printed.split("\0") if "=" in line)
    assert "PATH" in from_callable and "PATH" in from_command
    _assert_no_key_material(from_callable, secrets)
    _assert_no_key_material(from_command, secrets)
    for name in KEY_ENV:
        assert name not in from_callable and name not in from_command


# -- 8. nothing lost, no future hangs -------------------------------------------------------


def _within_three_heartbeats(futures: list, since: float) -> float:
    """Waits for every future to fail with ClusterLost; seconds since ``since``."""
    for future in futures:
        with pytest.raises(ClusterLost):
            future.result(timeout=3 * HEARTBEAT + 10)
    return time.monotonic() - since


@pytest.mark.parametrize("nlevels", [0, 1])
def test_a_killed_head_fails_pending_futures_and_a_restart_reruns_only_unfinished(
        clusters, tmp_path, nlevels):
    counters = tmp_path / "counters"
    counters.mkdir()
    launcher = clusters.start(nlevels=nlevels)
    directory = launcher.run_dir
    head_pid = ClusterFile(directory).read().pid
    with ClusterClient(directory) as client:
        quick = [client.submit(Task(task_id=f"quick-{i}", executable=count_run,
                                    args=(str(counters / f"quick-{i}"),))) for i in range(3)]
        for future in quick:
            future.result(timeout=60)
        running = [client.submit(Task(task_id=f"long-{name}", executable=wait_for_gate,
                                      args=(clusters.gate(name), clusters.gate(f"{name}.started"),
                                            str(counters / f"long-{name}"))))
                   for name in ("a", "b")]
        for name in ("a", "b"):
            clusters.wait_started(name)
        pending = [client.submit(Task(task_id=f"pending-{i}", executable=count_run,
                                      args=(str(counters / f"pending-{i}"),)))
                   for i in range(2)]
        with ClusterClient(directory, client_id="bystander") as bystander:
            theirs = bystander.submit(Task(task_id="pending-theirs", executable=count_run,
                                           args=(str(counters / "pending-theirs"),)))
            wait_for(lambda: submitted_count(
                directory, ["pending-0", "pending-1", "pending-theirs"]) == 3,
                "the head to have the pending tasks")
            killed_at = time.monotonic()
            os.kill(head_pid, signal.SIGKILL)
            elapsed = _within_three_heartbeats([*running, *pending, theirs], killed_at)
    assert elapsed <= 3 * HEARTBEAT + 2.0, f"futures failed {elapsed:.1f} s after the kill"
    wait_for(lambda: gone(head_pid) and lock_free(directory), "the killed head to be gone", 10)

    clusters.open("a")
    clusters.open("b")
    clusters.run_again(directory, nlevels=nlevels)

    runs = {path.name: path.read_text().count("ran") for path in counters.iterdir()}
    assert runs == {"quick-0": 1, "quick-1": 1, "quick-2": 1, "long-a": 2, "long-b": 2,
                    "pending-0": 1, "pending-1": 1, "pending-theirs": 1}
    results = all_results(directory)
    assert {tid: r.state for tid, r in results.items()} == dict.fromkeys(runs, "succeeded")


def test_a_restart_keeps_the_dependencies_of_unfinished_tasks(clusters, tmp_path):
    """Tasks pending behind busy cores at the kill, which wait for a finished task's value
    and for each other, run after the restart with the values from the journal."""
    launcher = clusters.start()
    directory = launcher.run_dir
    with ClusterClient(directory) as client:
        base = client.submit(Task(task_id="base", executable=inc, args=(41,)))
        assert base.result(timeout=60) == 42
        block_both_cores(client, clusters)
        step = client.submit(Task(task_id="step", executable=inc, args=(base,)))
        last = client.submit(Task(task_id="last", executable=add, args=(step, base)))
        wait_for(lambda: submitted_count(directory, ["step", "last"]) == 2,
                 "the head to have the pending tasks")
        kill_head(directory)
        for future in (step, last):
            with pytest.raises(ClusterLost):
                future.result(timeout=10)
    clusters.open("a")
    clusters.open("b")
    clusters.run_again(directory)
    results = all_results(directory)
    assert (results["step"].value, results["last"].value) == (43, 85)


def test_a_cancelled_pending_task_does_not_run_after_a_restart(clusters, tmp_path):
    """The cancel is final at once (in the journal), not when a core would have been free
    for the task: a head killed meanwhile does not run it when it starts again."""
    launcher = clusters.start()
    directory = launcher.run_dir
    with ClusterClient(directory) as client:
        block_both_cores(client, clusters)
        never = [client.submit(Task(task_id=f"cancelled-{i}", executable=touch,
                                    args=(str(tmp_path / f"cancelled-{i}-ran"),)))
                 for i in range(3)]
        wait_for(lambda: submitted_count(directory, [f.task_id for f in never]) == 3,
                 "the head to have the pending tasks")
        assert all(future.cancel() for future in never)
        for future in never:
            assert journal_result(directory, future.task_id, 10).state == "cancelled"
        kill_head(directory)
    clusters.open("a")
    clusters.open("b")
    clusters.run_again(directory)
    assert {f"cancelled-{i}": "cancelled" for i in range(3)} == {
        task_id: r.state for task_id, r in all_results(directory).items()
        if task_id.startswith("cancelled")}
    assert not list(tmp_path.glob("cancelled-*-ran"))


def test_a_restart_right_after_the_head_died_is_not_refused(clusters):
    """A supervisor that starts the cluster again as soon as its head is gone (its pid a
    zombie or reaped) must not be told the directory is in use by that dead head; the
    kernel drops the dead head's lock only a moment later, so we try a few times."""
    directory = clusters.start().run_dir
    for _ in range(5):
        pid = ClusterFile(directory).read().pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda pid=pid: gone(pid), "the killed head to be gone", 10)
        again = EnsembleLauncher(ensemble_file={}, system_config=system(),
                                 launcher_config=clusters.config(directory))
        clusters.started(again.start())


def test_a_frozen_head_fails_pending_futures_within_three_heartbeats(clusters):
    """A head that is there but silent (stopped, or on a host we cannot see) is found
    by the heartbeats, not by its pid."""
    launcher = clusters.start()
    head_pid = ClusterFile(launcher.run_dir).read().pid
    with ClusterClient(launcher.run_dir) as client:
        long_ones = block_both_cores(client, clusters)
        queued = client.submit(inc, 1)
        frozen_at = time.monotonic()
        os.kill(head_pid, signal.SIGSTOP)
        try:
            elapsed = _within_three_heartbeats([*long_ones, queued], frozen_at)
        finally:
            os.kill(head_pid, signal.SIGKILL)
    assert elapsed <= 3 * HEARTBEAT + 2.0, f"futures failed {elapsed:.1f} s after the freeze"


def _el_run_message(tmp_path: Path, task: Task) -> str:
    with pytest.raises(ConfigError) as caught:
        EnsembleLauncher({task.task_id: task}, system(), out_dir=tmp_path / "el-run").run()
    assert not (tmp_path / "el-run").exists()
    return str(caught.value)


@pytest.mark.parametrize("task", [
    Task(task_id="unknown-program", executable="no-such-program-xyz"),
    Task(task_id="too-wide", executable="true", ppn=64),
    Task(task_id="too-wide-callable", executable=inc, args=(1,), ppn=64),
], ids=lambda task: task.task_id)
def test_a_bad_task_fails_its_own_future_with_the_el_run_message(client, tmp_path, task):
    expected = _el_run_message(tmp_path, task)
    future = client.submit(task)
    with pytest.raises(InvalidTask) as caught:
        future.result(timeout=60)
    said = str(caught.value)
    assert expected in said, f"el run says: {expected}\ncluster says: {said}"
    assert said.count(repr(task.task_id)) == 1, f"the task is named more than once: {said}"
    assert client.submit(inc, 1).result(timeout=60) == 2


# -- 9. every depth on one machine ----------------------------------------------------------


@pytest.mark.parametrize("nlevels", [0, 1, 2])
def test_smoke_at_every_depth(clusters, nlevels):
    launcher = clusters.start(nlevels=nlevels, return_stdout=True)
    with ClusterClient(launcher.run_dir) as client:
        squares = [client.submit(double, i) for i in range(50)]
        commands = [client.submit("echo", f"cmd-{i}") for i in range(5)]
        summed = client.submit(total, squares)
        after = client.submit(read_text, "/proc/self/stat", dependencies=commands)
        assert summed.result(timeout=60) == sum(2 * i for i in range(50))
        assert [f.result(timeout=60) for f in commands] == [f"cmd-{i}\n" for i in range(5)]
        assert after.result(timeout=60)
    launcher.stop()
    assert all_results(launcher.run_dir).__len__() == 57
    assert all(r.ok for r in all_results(launcher.run_dir).values())
