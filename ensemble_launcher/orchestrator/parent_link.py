"""A child's side of the tree: the link to its parent master.

    parent --Define/Tasks/Drain/Stop/Heartbeat--> ParentLink --take()--> NodeWorker
    parent <--Hello/Request/Results/Heartbeat/Bye-- ParentLink <--record()-- NodeWorker

Flow control is pull-based: ``want(n)`` asks the parent for at most what the node can
start soon plus a small prefetch, counting what was asked for and not yet received, so a
busy node never sits on tasks an idle one could run. Results are sent in one batch per
loop turn. A parent that stays silent past the heartbeat timeout is taken as lost, and so
is one that died (we see it at once when it started us: our parent process changes); a
child that outlives its parent removes the parent's ipc socket directory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import deque
from typing import Any

import zmq

from ensemble_launcher.comm import (
    Bye,
    ChildEndpoint,
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
    PipeChildEndpoint,
    Release,
    Request,
    Results,
    RunHeld,
    Stop,
    Tasks,
)
from ensemble_launcher.ensemble import Task
from ensemble_launcher.orchestrator.node_worker import Reservation
from ensemble_launcher.orchestrator.wire import FunctionTable, task_from_wire


class ParentLost(Exception):
    """The parent stopped answering, or told us to stop."""


class ParentLink:
    def __init__(self, ctx: zmq.Context, address: str, name: str, keys: CurveKeys | None, *,
                 heartbeat_interval: float, decode_tasks: bool = True) -> None:
        self.name = name
        self._address = address
        self._parent_pid = os.getppid()
        #: True once the process that started us died (not merely went silent).
        self.parent_gone = False
        self.endpoint: ChildEndpoint | PipeChildEndpoint = \
            PipeChildEndpoint(int(address.removeprefix("fd://"))) \
            if address.startswith("fd://") else ChildEndpoint(ctx, address, name, keys)
        self.functions = FunctionTable()
        self._decode = decode_tasks
        self._queue: deque[Any] = deque()
        self._outstanding = 0
        self._rows: list[list[Any]] = []
        self._running: dict[str, int] = {}
        self._running_changed = False
        self._interval = heartbeat_interval
        self._last_sent = self._last_heard = time.monotonic()
        self.draining = False
        self.halted = False
        self._orders: list[tuple[str, int, Task | None]] = []
        self.sent_results = 0
        self.stop_reason: str | None = None

    def hello(self, cpus: list[int], gpus: list[str]) -> None:
        self._send(Hello(self.name, socket.gethostname(), os.getpid(), cpus, gpus))

    # -- TaskSource ----------------------------------------------------------------------------

    def take(self) -> Any:
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, Hold):
                return item.key, Reservation(task_id=f"reservation-{item.key}",
                                             executable="(reservation)",
                                             cpu_affinity=item.cpus, gpu_affinity=item.gpus)
            if not self._decode:
                return item[0], item
            try:
                return task_from_wire(item, self.functions)
            except Exception as exc:  # noqa: BLE001 - any unloadable task fails alone
                self._undecodable(item, exc)
        return None

    def _undecodable(self, item: list[Any], exc: Exception) -> None:
        """A task whose callable or arguments cannot be loaded here fails as a result."""
        import traceback

        now = time.time()
        self._rows.append([item[0], "failed", "launch", None, None, None,
                           f"cannot load the task on {self._host}: {type(exc).__name__}: {exc}",
                           "".join(traceback.format_exception(exc)), None, "", now, now,
                           self._host, "", ""])

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
        return getattr(self.endpoint, "has_pending", False)

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
            self.parent_gone = True
            raise ParentLost(f"our parent process {self._parent_pid} is gone")
        if self.stop_reason is not None:
            raise ParentLost(f"stopped by the parent: {self.stop_reason}")

    def _handle(self, message: Message) -> None:
        if isinstance(message, Tasks):
            self._outstanding = max(0, self._outstanding - len(message.tasks))
            self._queue.extend(message.tasks)
        elif isinstance(message, Define):
            self.functions.define(message.digest, message.blob)
        elif isinstance(message, Drain):
            self.draining = True
        elif isinstance(message, Hold):
            self._queue.append(message)
        elif isinstance(message, RunHeld):
            self._orders.append(("run", message.key,
                                 task_from_wire(message.task, self.functions)[1]))
        elif isinstance(message, Release):
            self._orders.append(("release", message.key, None))
        elif isinstance(message, Halt):
            self._queue.clear()
            self.draining = self.halted = True
        elif isinstance(message, Stop):
            self.stop_reason = message.reason

    def take_orders(self) -> list[tuple[str, int, Task | None]]:
        orders, self._orders = self._orders, []
        return orders

    # -- ResultSink ----------------------------------------------------------------------------

    def held(self, key: int, cpus: list[int], gpus: list[str]) -> None:
        self._send(Held(key, cpus, gpus))

    def record(self, key: int, task: Task, result: tuple, cpus: str, gpus: str) -> None:
        self._rows.append([*result, self._host, cpus, gpus])

    def record_rows(self, rows: list[list[Any]]) -> None:
        """A sub-master passes its children's results up unchanged."""
        self._rows.extend(rows)

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        """Sent with the next results, or alone, when it changed; an ensemble reported once
        stays in the report (with 0), so that the parent sees it stop."""
        report = {**dict.fromkeys(self._running, 0), **by_ensemble}
        if report != self._running:
            self._running = report
            self._running_changed = True

    def node_lost(self, name: str, host: str, keys: list[int], why: str) -> None:
        self.flush()
        self._send(NodeLost(name, host, keys, why))

    def tick(self) -> None:
        self.flush()

    def turn(self) -> None:
        self.flush()

    def flush(self) -> None:
        if self._rows or self._running_changed:
            rows, self._rows = self._rows, []
            self.sent_results += len(rows)
            running = [[name, n] for name, n in self._running.items()] \
                if self._running_changed else []
            self._running_changed = False
            self._send(Results(rows, running))

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
