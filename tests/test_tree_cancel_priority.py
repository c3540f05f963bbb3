"""Cancel, priority and routing in the tree, on real processes: a real ParentLink on a real
socket, a real NodeWorker with a real warm pool, a real Master with real workers. Only the
feed that the root would be (the ledger) is played by the test."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from ensemble_launcher.comm import Cancel, Drain, ParentEndpoint, ResultBatch, Tasks, terminate
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.executors import WarmPool
from ensemble_launcher.orchestrator.boot import Settings
from ensemble_launcher.orchestrator.feeds import CANCELLED_MESSAGE, LocalFeed
from ensemble_launcher.orchestrator.master import Master
from ensemble_launcher.orchestrator.node_worker import NodeWorker
from ensemble_launcher.orchestrator.parent_link import ParentLink
from ensemble_launcher.orchestrator.placement import tree_settings
from ensemble_launcher.orchestrator.tree import plan_tree
from ensemble_launcher.orchestrator.wire import FunctionTable, WireTask, task_to_wire
from ensemble_launcher.resources import NodeResources
from ensemble_launcher.states import CANCELLED, FAILED, SUCCEEDED, ResultRow, RunResult

HERE = socket.gethostname()

pytestmark = pytest.mark.timeout(120)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def nap_after_marking(marker: str) -> None:
    Path(marker).touch()
    time.sleep(60)


def parent_pid() -> int:
    return os.getppid()


# -- the link to the parent --------------------------------------------------------------


class _LinkUnderTest:
    """A ParentLink connected to a parent endpoint played by the test, in one process."""

    def __init__(self, decode: bool) -> None:
        self.ctx = zmq.Context()
        self.parent = ParentEndpoint(self.ctx, "ipc", None)
        self.link = ParentLink(self.ctx, self.parent.address, "main.w0", None,
                               heartbeat_interval=30.0, decode_tasks=decode)
        self.functions = FunctionTable()
        self.rows: list[list] = []

    def close(self) -> None:
        self.link.close()
        self.parent.close()
        terminate(self.ctx)

    def wire(self, key: int, priority: int = 0) -> WireTask:
        return task_to_wire(key, Task(task_id=f"t{key}", executable="true"), self.functions,
                            priority=priority)

    def send(self, message) -> None:
        """Send from the parent (once the link said Hello, the parent can reach it)."""
        wait_for(lambda: self.parent.send(b"main.w0", message), "the link to connect")

    def pump_until(self, condition: Callable[[], bool], what: str) -> None:
        def pumped() -> bool:
            self.link.pump()
            for _, message in self.parent.receive({b"main.w0"}):
                if isinstance(message, ResultBatch):
                    self.rows.extend(message.rows)
            return condition()

        wait_for(pumped, what)

    def take_all(self) -> list[int]:
        keys = []
        while (item := self.link.take()) is not None:
            keys.append(item[0])
        return keys


@pytest.fixture
def link():
    made: list[_LinkUnderTest] = []

    def make(decode: bool = False) -> _LinkUnderTest:
        made.append(_LinkUnderTest(decode))
        made[-1].link.hello([], [])
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_a_link_hands_out_tasks_by_priority_and_in_arrival_order_among_equals(link):
    under = link()
    under.send(Tasks([under.wire(k) for k in (1, 2, 3)]))
    under.pump_until(lambda: len(under.link._queue) == 3, "the first tasks")
    assert under.take_all() == [1, 2, 3]
    under.send(Tasks([under.wire(4), under.wire(5, priority=2), under.wire(6, priority=-1),
                      under.wire(7, priority=2), under.wire(8)]))
    under.send(Tasks([under.wire(9, priority=5), under.wire(10)]))
    under.pump_until(lambda: len(under.link._queue) == 7, "the prioritized tasks")
    assert under.take_all() == [9, 5, 7, 4, 8, 10, 6]


def test_a_worker_link_decodes_tasks_in_priority_order(link):
    under = link(decode=True)
    under.send(Tasks([under.wire(1), under.wire(2, priority=1)]))
    under.pump_until(lambda: len(under.link._queue) == 2, "the tasks")
    taken = [under.link.take(), under.link.take()]
    assert [(key, task.task_id) for key, task in taken] == [(2, "t2"), (1, "t1")]


def test_a_cancelled_task_waiting_at_a_link_is_reported_cancelled_and_never_handed_out(link):
    under = link()
    under.send(Tasks([under.wire(k, priority=k % 2) for k in (1, 2, 3, 4)]))
    under.pump_until(lambda: len(under.link._queue) == 4, "the tasks")
    assert under.link.take()[0] == 1  # handed out: its cancel goes on to the taker
    under.send(Cancel([1, 2, 99]))
    under.pump_until(lambda: any(row[0] == 2 for row in under.rows), "the cancelled row")
    row = ResultRow._make(next(row for row in under.rows if row[0] == 2))
    assert (row.state, row.reason, row.exception) == (CANCELLED, "cancelled", CANCELLED_MESSAGE)
    assert under.link.take_cancels() == [1, 99]
    assert under.link.take_cancels() == []
    assert under.take_all() == [3, 4]


def test_a_reservation_released_before_it_was_placed_is_never_placed(link):
    """A multi-node task cancelled (or a member lost) while a worker's share of it still
    waits in the link: the Release drops that share, which would otherwise hold its cores
    for a task that never comes."""
    from ensemble_launcher.comm import Hold, Release

    under = link(decode=True)
    under.send(Hold(5, [0], []))
    under.send(Tasks([under.wire(1)]))
    under.send(Release(5))
    under.send(Tasks([under.wire(2), under.wire(3)]))
    under.pump_until(lambda: len(under.link._queue) == 3, "the release and the tasks after it")
    assert under.take_all() == [1, 2, 3]
    assert under.link.take_orders() == []


# -- a node worker -----------------------------------------------------------------------


class _Feed(LocalFeed):
    """The tasks of a node, and cancels handed out once a condition holds (as a client
    would send them, after seeing a task start). As a real feed (a parent link, the
    ledger) does, it answers itself for a cancelled task it still holds."""

    def __init__(self, tasks: list[Task],
                 cancels: list[tuple[Callable[[], bool], list[int]]],
                 sink: _Sink | None = None) -> None:
        self._tasks = deque(enumerate(tasks, 1))
        self._cancels = cancels
        self._sink = sink
        self.halted = False

    def take(self) -> tuple[int, Task] | None:
        return self._tasks.popleft() if self._tasks else None

    @property
    def exhausted(self) -> bool:
        return not self._tasks and not self._cancels

    def take_cancels(self) -> list[int]:
        due = [keys for condition, keys in self._cancels if condition()]
        self._cancels = [(c, keys) for c, keys in self._cancels if keys not in due]
        keys = {key for batch in due for key in batch}
        held = [(key, task) for key, task in self._tasks if key in keys]
        if held and self._sink is not None:
            self._tasks = deque((k, t) for k, t in self._tasks if k not in keys)
            for key, task in held:
                self._sink.record(key, task, RunResult(key, CANCELLED, "cancelled", None, None,
                                                       None, CANCELLED_MESSAGE, None, None, "",
                                                       0.0, 0.0), "", "")
        return sorted(keys - {key for key, _ in held})


class _Sink:
    def __init__(self) -> None:
        self.results: dict[int, RunResult] = {}
        self.recorded: list[int] = []

    def record(self, key: int, task: Task, result: RunResult, cpus: str, gpus: str) -> None:
        self.recorded.append(key)
        self.results[key] = RunResult._make(result)

    def held(self, key: int, cpus: list[int], gpus: list[str]) -> None:
        raise AssertionError("no reservation on one node")

    def after_turn(self) -> None:
        pass

    def every_tick(self) -> None:
        pass

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        pass

    def report_started(self, keys: list[int]) -> None:
        pass

    def final_flush(self) -> None:
        pass


def _run_node(tasks: list[Task], cancels: list, depth: int = 1) -> _Sink:
    sink = _Sink()
    with WarmPool([0], pin=False, tail_bytes=4096, kill_grace=2.0) as pool:
        worker = NodeWorker(_Feed(tasks, cancels, sink), sink, NodeResources(HERE, (0,), ()),
                            pool,
                            gpu_selector="CUDA_VISIBLE_DEVICES", capture_stdout=True,
                            pin=False, kill_grace=2.0)
        worker._slots.depth = depth
        worker.run()
    assert sorted(sink.recorded) == sorted(set(sink.recorded)), "a task recorded twice"
    return sink


def _is_cancelled(result: RunResult) -> bool:
    return (result.state, result.reason, result.exception) == (CANCELLED, "cancelled",
                                                               CANCELLED_MESSAGE)


def test_a_node_cancels_a_running_command_a_waiting_task_and_a_running_callable(tmp_path):
    started, called, never = tmp_path / "started", tmp_path / "called", tmp_path / "never"
    tasks = [
        Task(task_id="running", executable=["sh", "-c", f"echo on my way >&2; touch {started};"
                                                        " exec sleep 60"]),
        Task(task_id="waiting", executable=["touch", str(never)]),
        Task(task_id="callable", executable=nap_after_marking, args=(str(called),)),
        Task(task_id="after", executable="echo still here"),
    ]
    sink = _run_node(tasks, [(started.exists, [1, 2, 999]), (called.exists, [3])])
    assert sorted(sink.results) == [1, 2, 3, 4]
    assert all(_is_cancelled(sink.results[k]) for k in (1, 2, 3))
    assert "on my way" in sink.results[1].stderr
    assert not never.exists()
    assert sink.results[2].start == sink.results[2].end, "the waiting task never started"
    assert (sink.results[4].state, sink.results[4].stdout) == (SUCCEEDED, "still here\n")


def test_tasks_queued_behind_a_cancelled_one_in_its_runner_are_dealt_with_one_by_one(
        tmp_path):
    """Three commands in one lane's runner: the running one and the one behind it are
    cancelled (the second never starts); the third runs after all."""
    started, never = tmp_path / "started", tmp_path / "never"
    tasks = [Task(task_id="running", executable=["sh", "-c", f"touch {started}; exec sleep 60"]),
             Task(task_id="behind", executable=["touch", str(never)]),
             Task(task_id="kept", executable="echo kept")]
    sink = _run_node(tasks, [(started.exists, [2, 1])], depth=3)
    assert _is_cancelled(sink.results[1]) and _is_cancelled(sink.results[2])
    assert not never.exists()
    assert (sink.results[3].state, sink.results[3].stdout) == (SUCCEEDED, "kept\n")


# -- a master ----------------------------------------------------------------------------


class _Upstream(LocalFeed):
    """What the root gives a master: wire tasks (some routed), cancels, and a place for
    the results."""

    def __init__(self, tasks: list[tuple[Task, str]],
                 cancels: list[tuple[Callable[[], bool], list[int]]]) -> None:
        self.functions = FunctionTable()
        self._tasks = deque((key, task_to_wire(key, task, self.functions, route=route))
                            for key, (task, route) in enumerate(tasks, 1))
        self._feed = _Feed([], cancels)
        self.rows: dict[int, ResultRow] = {}
        self.halted = False

    def take(self) -> tuple[int, WireTask] | None:
        return self._tasks.popleft() if self._tasks else None

    @property
    def exhausted(self) -> bool:
        return not self._tasks and self._feed.exhausted

    def take_cancels(self) -> list[int]:
        return self._feed.take_cancels()

    def record_rows(self, rows: list[ResultRow]) -> None:
        for row in rows:
            assert type(row) is ResultRow
            assert row.key not in self.rows, f"task {row.key} recorded twice"
            self.rows[row.key] = row

    def node_lost(self, name: str, host: str, keys: list[int], why: str) -> None:
        raise AssertionError(f"{name} lost: {why}")

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        pass

    def report_started(self, keys: list[int]) -> None:
        pass

    def record_samples(self, samples: list) -> None:
        pass

    def tick(self) -> None:
        pass


def test_a_master_routes_tasks_parks_them_for_a_busy_node_and_cancels_through_the_tree(
        tmp_path):
    """main.w1 is busy with a long command while tasks routed to it wait at the master;
    the tasks for anywhere run on main.w0 meanwhile. Cancelling the long command (at the
    worker) and a parked task (at the master) lets the routed tasks run, on main.w1."""
    started = tmp_path / "started"
    long_one = Task(task_id="long", executable=["sh", "-c", f"touch {started}; exec sleep 60"])
    routed = [(Task(task_id=f"r{i}", executable=parent_pid), "main.w1") for i in range(4)]
    anywhere = [(Task(task_id=f"a{i}", executable=parent_pid), "") for i in range(10)]
    tasks = [(long_one, "main.w1"), *routed, *anywhere,
             (Task(task_id="nowhere", executable="true"), "main.w7"),
             (Task(task_id="parked", executable="true"), "main.w1")]
    r_keys, a_keys = range(2, 6), range(6, 16)
    nowhere, parked = 16, 17
    upstream = _Upstream(tasks, [])

    def anywhere_done() -> bool:
        return started.exists() and all(k in upstream.rows for k in (*a_keys, nowhere))

    upstream._feed = _Feed([], [(anywhere_done, [1, parked])])
    config = LauncherConfig(comm_name="multiprocessing", kill_grace=2.0)
    tree = plan_tree([HERE, HERE], 1)
    child_env = Settings(
        launcher_config=config.model_dump_json(),
        system_config=SystemConfig(ncpus=1).model_dump_json(), run_dir=str(tmp_path),
        pin=False, return_stdout=False, check_each=False, sys_path=sys.path).to_env()
    ctx = zmq.Context()
    try:
        master = Master(tree, upstream, ctx, tree_settings(tree, config, tmp_path, child_env),
                        None)
        master.run()
    finally:
        terminate(ctx)
    rows = upstream.rows
    assert sorted(rows) == list(range(1, 18))
    assert (rows[1].state, rows[1].reason) == (CANCELLED, "cancelled")
    assert (rows[parked].state, rows[parked].reason) == (CANCELLED, "cancelled")
    assert (rows[nowhere].state, rows[nowhere].reason) == (FAILED, "launch")
    assert "main.w7" in rows[nowhere].exception
    worker_pid = {names[0].decode(): proc.pid for proc, names, _ in master._steps}
    values = {k: _value(rows[k]) for k in (*r_keys, *a_keys)}
    assert {values[k] for k in r_keys} == {worker_pid["main.w1"]}
    assert {values[k] for k in a_keys} == {worker_pid["main.w0"]}


def _value(row: ResultRow) -> object:
    import pickle

    assert row.state == SUCCEEDED, row
    return pickle.loads(row.value) if row.value is not None else None


# -- the transports --------------------------------------------------------------------


def test_a_malformed_task_fails_alone_and_the_tasks_beside_it_are_handed_out(link):
    import msgpack

    under = link()
    good = list(under.wire(1))
    frame = msgpack.packb([Tasks.code, [[7, "too short"], good, ["no key"]]], use_bin_type=True)
    under.send(Drain())
    under.parent.router.send_multipart([b"main.w0", frame])
    under.pump_until(lambda: any(row[0] == 7 for row in under.rows), "the failed row")
    assert under.take_all() == [1] and under.link.exhausted
    row = ResultRow._make(next(row for row in under.rows if row[0] == 7))
    assert (row.state, row.reason) == (FAILED, "launch")


def test_an_endpoint_at_a_given_ipc_path_takes_frames_from_any_identity(tmp_path):
    from ensemble_launcher.comm import ANYONE, Heartbeat

    home = tmp_path / "desk"
    home.mkdir(mode=0o700)
    ctx = zmq.Context()
    try:
        desk = ParentEndpoint(ctx, "ipc", None, ipc_path=str(home / "desk.sock"))
        assert desk.address == f"ipc://{home / 'desk.sock'}"
        clients = [ctx.socket(zmq.DEALER) for _ in range(2)]
        clients[1].setsockopt(zmq.IDENTITY, b"client-1")
        got: list = []
        for client in clients:
            client.connect(desk.address)
            client.send(Heartbeat(1.0).encode())

        def both_arrived() -> bool:
            got.extend(desk.receive(ANYONE))
            return len(got) == 2

        wait_for(both_arrived, "both clients' frames")
        assert all(isinstance(message, Heartbeat) for _, message in got)
        assert b"client-1" in [identity for identity, _ in got]
        for client in clients:
            client.close(linger=0)
        desk.close()
        assert not (home / "desk.sock").exists() and home.is_dir()
    finally:
        terminate(ctx)
