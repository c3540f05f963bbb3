"""A child's side of the tree: the link to its parent master.

    parent --Define/Tasks/Cancel/Drain/Stop/Heartbeat--> ParentLink --take()--> NodeWorker
    parent <--Hello/Request/ResultBatch/Heartbeat/Bye-- ParentLink <--record()-- NodeWorker
    parent <--NodeSamples------------------------------ ParentLink <--record_samples()--

Flow control is pull-based: ``want(n)`` asks the parent for at most what the node can
start soon plus a small prefetch, counting what was asked for and not yet received, so a
busy node never sits on tasks an idle one could run. Tasks wait in the order they are
handed out: higher ``priority`` first, in arrival order among equals. A cancelled task
that still waits here is dropped and reported cancelled; the cancel of one handed out
already goes on to the taker (``take_cancels``). Results are sent in one batch per
loop turn. A parent that stays silent past the heartbeat timeout is taken as lost, and so
is one that died (we see it at once when it started us: our parent process changes); a
child that outlives its parent removes the parent's ipc socket directory.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from ensemble_launcher.comm import (
    Bye,
    Cancel,
    ChildEndpoint,
    ChildSide,
    CurveKeys,
    Define,
    Drain,
    Halt,
    Heartbeat,
    Held,
    Hello,
    Hold,
    Message,
    NodeLost,
    NodeSamples,
    PipeChildEndpoint,
    Release,
    Request,
    ResultBatch,
    RunHeld,
    Stop,
    Tasks,
)
from ensemble_launcher.ensemble import Task
from ensemble_launcher.orchestrator.feeds import CANCELLED_MESSAGE, Order, never_ran_row
from ensemble_launcher.orchestrator.node_worker import Reservation
from ensemble_launcher.orchestrator.wire import FunctionTable, WireTask, task_from_wire
from ensemble_launcher.states import CANCELLED, FAILED, NodeSample, ResultRow

log = logging.getLogger("ensemble_launcher")

_Queued = WireTask | Hold


class ParentLost(Exception):
    """The parent stopped answering, or told us to stop."""


class _TaskQueue:
    """Tasks (and reservations) in the order to hand them out: higher priority first, in
    arrival order among equals. A plain FIFO until a task with a priority other than 0
    arrives, a heap from then on; a reservation counts as priority 0."""

    def __init__(self) -> None:
        self._fifo: deque[_Queued] = deque()
        self._heap: list[tuple[int, int, _Queued]] | None = None
        self._seq = 0

    def __len__(self) -> int:
        return len(self._fifo) if self._heap is None else len(self._heap)

    def extend(self, items: Sequence[_Queued]) -> None:
        if self._heap is None:
            if not any(map(_priority, items)):
                self._fifo.extend(items)
                return
            self._heap = []
            self._push(self._fifo)
            self._fifo.clear()
        self._push(items)

    def _push(self, items: Iterable[_Queued]) -> None:
        heap = self._heap
        assert heap is not None
        for item in items:
            heapq.heappush(heap, (-_priority(item), self._seq, item))
            self._seq += 1

    def pop(self) -> _Queued | None:
        if self._heap is None:
            return self._fifo.popleft() if self._fifo else None
        return heapq.heappop(self._heap)[2] if self._heap else None

    def remove(self, key: int, kind: type) -> bool:
        """Drop the queued ``kind`` (WireTask or Hold) with this key; True if it was here."""
        if self._heap is None:
            for i, item in enumerate(self._fifo):
                if item.key == key and type(item) is kind:
                    del self._fifo[i]
                    return True
            return False
        for i, (_, _, item) in enumerate(self._heap):
            if item.key == key and type(item) is kind:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return True
        return False

    def clear(self) -> None:
        self._fifo.clear()
        if self._heap is not None:
            self._heap.clear()


def _priority(item: _Queued) -> int:
    return item.priority if type(item) is WireTask else 0


class ParentLink:
    def __init__(self, ctx: zmq.Context, address: str, name: str, keys: CurveKeys | None, *,
                 heartbeat_interval: float, decode_tasks: bool = True,
                 started_by_parent: bool = True) -> None:
        self.name = name
        self._address = address
        self._parent_pid = os.getppid()
        self._started_by_parent = started_by_parent
        """False in a block: the process that started us is the block's job, not our
        master, and its end ends our job but says nothing of the master."""
        #: True once the master that started us died (not merely went silent).
        self.parent_gone = False
        self.endpoint: ChildSide = \
            PipeChildEndpoint(int(address.removeprefix("fd://"))) \
            if address.startswith("fd://") else ChildEndpoint(ctx, address, name, keys)
        self.functions = FunctionTable()
        self._decode = decode_tasks
        self._queue = _TaskQueue()
        self._outstanding = 0
        self._rows: list[ResultRow] = []
        self._running: dict[str, int] = {}
        self._running_changed = False
        self._started: list[int] = []
        self._samples: list[NodeSample] = []
        self._interval = heartbeat_interval
        self._last_sent = self._last_heard = time.monotonic()
        self.draining = False
        self.halted = False
        self._orders: list[Order] = []
        self._cancels: list[int] = []
        self.sent_results = 0
        self.stop_reason: str | None = None

    def hello(self, cpus: list[int], gpus: list[str]) -> None:
        self._send(Hello(self.name, socket.gethostname(), os.getpid(), cpus, gpus))

    # -- Feed --------------------------------------------------------------------------------

    def take(self) -> Any:
        """``(key, Task)`` for a worker (or a Reservation), ``(key, WireTask)`` for a
        sub-master, which passes tasks on undecoded."""
        while True:
            item = self._queue.pop()
            if item is None:
                return None
            if type(item) is Hold:
                return item.key, Reservation(task_id=f"reservation-{item.key}",
                                             executable="(reservation)",
                                             cpu_affinity=item.cpus, gpu_affinity=item.gpus)
            assert type(item) is WireTask
            if not self._decode:
                return item.key, item
            try:
                return task_from_wire(item, self.functions)
            except Exception as exc:  # noqa: BLE001 - any unloadable task fails alone
                self._undecodable(item.key, exc)

    def _undecodable(self, key: int, exc: Exception) -> None:
        """A task whose callable or arguments cannot be loaded here fails as a result."""
        import traceback

        row = never_ran_row(key, FAILED, "launch", f"cannot load the task on {self._host}: "
                            f"{type(exc).__name__}: {exc}", self._host)
        self._rows.append(row._replace(traceback="".join(traceback.format_exception(exc))))

    def _received(self, items: list[list[Any]]) -> list[WireTask]:
        """The tasks of a Tasks message, rebuilt as WireTasks once, here; an item that is
        not a task fails alone when it has a key, and is dropped when it has none."""
        tasks = []
        for item in items:
            try:
                task = WireTask._make(item)
                if type(task.key) is int and type(task.priority) is int \
                        and type(task.route) is str:
                    tasks.append(task)
                    continue
            except TypeError:
                pass
            key = item[0] if item and type(item[0]) is int else None
            log.warning("%s: a task that is not %d fields of the right types: %.200r",
                        self.name, len(WireTask._fields), item)
            if key is not None:
                self._undecodable(key, ValueError("the task arrived malformed"))
        return tasks
    @property
    def exhausted(self) -> bool:
        return self.draining and not self._queue

    def want(self, n: int) -> None:
        """Ask for the shortfall once it is worth a message: half the target, or all of a
        small one."""
        target = n
        shortfall = target - len(self._queue) - self._outstanding
        if shortfall > 0 and shortfall * 2 >= target and not self.draining:
            self._outstanding += shortfall
            self._send(Request(shortfall))

    def sockets(self) -> tuple[Any, ...]:
        return (self.endpoint.socket,)

    @property
    def has_pending(self) -> bool:
        """Output the transport still holds (pipes): the loop should come back soon."""
        return self.endpoint.has_pending

    def pump(self) -> None:
        for message in self.endpoint.receive():
            self._last_heard = time.monotonic()
            self._handle(message)
        self.flush()
        now = time.monotonic()
        if now - self._last_sent >= self._interval:
            self._send(Heartbeat(time.time()))
        if now - self._last_heard > 2.5 * self._interval:
            raise ParentLost(f"no message from the parent for {now - self._last_heard:.1f} s")
        if os.getppid() != self._parent_pid:
            self.parent_gone = self._started_by_parent
            raise ParentLost(f"our parent process {self._parent_pid} is gone")
        if self.stop_reason is not None:
            raise ParentLost(f"stopped by the parent: {self.stop_reason}")

    def _handle(self, message: Message) -> None:
        if isinstance(message, Tasks):
            self._outstanding = max(0, self._outstanding - len(message.tasks))
            self._queue.extend(self._received(message.tasks))
        elif isinstance(message, Cancel):
            self._cancel(message.keys)
        elif isinstance(message, Define):
            self.functions.define(message.digest, message.blob)
        elif isinstance(message, Drain):
            self.draining = True
        elif isinstance(message, Hold):
            self._queue.extend([message])
        elif isinstance(message, RunHeld):
            self._run_held(message)
        elif isinstance(message, Release):
            if not self._queue.remove(message.key, Hold):
                self._orders.append(("release", message.key, None))
        elif isinstance(message, Halt):
            self._queue.clear()
            self.draining = self.halted = True
        elif isinstance(message, Stop):
            self.stop_reason = message.reason

    def _run_held(self, message: RunHeld) -> None:
        tasks = self._received([message.task])
        if not tasks:
            self._orders.append(("release", message.key, None))
            return
        try:
            task = task_from_wire(tasks[0], self.functions)[1]
        except Exception as exc:  # noqa: BLE001 - any unloadable task fails alone
            self._undecodable(message.key, exc)
            self._orders.append(("release", message.key, None))
            return
        self._orders.append(("run", message.key, task))

    def _cancel(self, keys: list[int]) -> None:
        for key in keys:
            if self._queue.remove(key, WireTask):
                self._rows.append(never_ran_row(key, CANCELLED, "cancelled", CANCELLED_MESSAGE,
                                                self._host))
            else:
                self._cancels.append(key)

    def take_orders(self) -> list[Order]:
        orders, self._orders = self._orders, []
        return orders

    def take_cancels(self) -> list[int]:
        cancels, self._cancels = self._cancels, []
        return cancels

    # -- ResultSink ----------------------------------------------------------------------------

    def held(self, key: int, cpus: list[int], gpus: list[str]) -> None:
        self._send(Held(key, cpus, gpus))

    def record(self, key: int, task: Task, result: tuple, cpus: str, gpus: str) -> None:
        self._rows.append(ResultRow._make((*result, self._host, cpus, gpus)))

    def record_rows(self, rows: list[ResultRow]) -> None:
        """A sub-master passes its children's results up unchanged."""
        self._rows.extend(rows)

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        """Sent with the next results, or alone, when it changed; an ensemble reported once
        stays in the report (with 0), so that the parent sees it stop."""
        report = {**dict.fromkeys(self._running, 0), **by_ensemble}
        if report != self._running:
            self._running = report
            self._running_changed = True

    def report_started(self, keys: list[int]) -> None:
        """Sent with the next results (a sub-master passes its children's up unchanged)."""
        self._started.extend(keys)

    def record_samples(self, samples: list[NodeSample]) -> None:
        """Sent after the next results (a sub-master passes its children's up unchanged)."""
        self._samples.extend(samples)

    def node_lost(self, name: str, host: str, keys: list[int], why: str) -> None:
        self.flush()
        self._send(NodeLost(name, host, keys, why))

    def tick(self) -> None:
        """Send what waits: ten times a second as a sub-master's upstream; as a node
        worker's sink, after each turn and each tick, and once at its end."""
        self.flush()

    every_tick = after_turn = final_flush = tick

    def flush(self) -> None:
        if self._rows or self._running_changed or self._started:
            rows, self._rows = self._rows, []
            started, self._started = self._started, []
            self.sent_results += len(rows)
            running = [[name, n] for name, n in self._running.items()] \
                if self._running_changed else []
            self._running_changed = False
            self._send(ResultBatch(rows, running, started))
        if self._samples:
            samples, self._samples = self._samples, []
            self._send(NodeSamples(samples))

    def bye(self) -> None:
        self.flush()
        self._send(Bye())

    # -- plumbing ----------------------------------------------------------------------------

    _host = socket.gethostname()

    def _send(self, message: Message) -> None:
        self.endpoint.send(message)
        self._last_sent = time.monotonic()

    def close(self) -> None:
        self.endpoint.close()
        if self.parent_gone:
            _remove_ipc_dir(self._address)


def _remove_ipc_dir(address: str) -> None:
    """Remove the socket and directory of a dead parent's ipc endpoint (``ipc://DIR/NAME``,
    DIR private to the run), which the parent can no longer remove; a sibling may be first."""
    if not address.startswith("ipc://"):
        return
    path = address.removeprefix("ipc://")
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))
