"""The root's adapters between its Ledger and what runs the tasks.

    nlevels=0:  Ledger --LocalSource--> NodeWorker --LocalSink--> Ledger
    nlevels>=1: Ledger --RootUpstream.take() (wire)--> Master(main) --record_rows()--> Ledger

The nodes' samples of CPU and memory use (``record_samples``) go to the journal, with the
next flush.

In a cluster, the root's loop also serves the clients: the desk's sockets are waited on
with the tree's, ``pump()`` takes what clients sent, and each turn sends them their
results (see ``cluster.desk``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from ensemble_launcher.ensemble import Task
from ensemble_launcher.orchestrator.feeds import LocalFeed
from ensemble_launcher.orchestrator.ledger import Ledger
from ensemble_launcher.orchestrator.recording import Recorder
from ensemble_launcher.orchestrator.signals import GracefulShutdown
from ensemble_launcher.orchestrator.wire import FunctionTable, WireTask, task_to_wire
from ensemble_launcher.states import NodeSample, ResultRow, RunResult

if TYPE_CHECKING:
    import zmq

log = logging.getLogger("ensemble_launcher")


class Door(Protocol):
    """What serves a cluster's clients from the root's loop (``cluster.desk.ClientDesk``)."""

    @property
    def has_pending(self) -> bool: ...

    def sockets(self) -> tuple[zmq.Socket, ...]: ...

    def pump(self) -> None: ...

    def flush(self) -> None: ...

    def tick(self) -> None: ...


class _Closed:
    """The door of ``el run``: no clients."""

    has_pending = False

    def sockets(self) -> tuple[zmq.Socket, ...]:
        return ()

    def pump(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def tick(self) -> None:
        pass


class Steering(Protocol):
    """What steers a run from its events (``rules.engine.RulesEngine``)."""

    def turn(self) -> None:
        """After each round of results."""

    def tick(self) -> None:
        """About ten times a second."""


class RootControl:
    """What the root checks on every tick: a requested shutdown halts the ledger; the end
    of its grace period cancels the run. Each turn, the rules (if any) see the results."""

    def __init__(self, ledger: Ledger, shutdown: GracefulShutdown,
                 door: Door | None = None, steering: Steering | None = None) -> None:
        self.ledger = ledger
        self.shutdown = shutdown
        self.door: Door = door or _Closed()
        self.steering = steering

    def supervise(self) -> None:
        if self.steering is not None:
            self.steering.tick()
        if self.shutdown.requested and not self.ledger.halted:
            log.warning("%s: stopping: no new task starts; running tasks have %g s to finish",
                        self.shutdown.signal_name, self.shutdown.grace)
            self.ledger.halt()
        self.shutdown.check()
        self.door.tick()

    def turn(self) -> None:
        if self.steering is not None:
            self.steering.turn()


class _RootFeed(LocalFeed):
    def __init__(self, control: RootControl) -> None:
        self._control = control
        self._ledger = control.ledger

    @property
    def halted(self) -> bool:
        return self._ledger.halted

    @property
    def exhausted(self) -> bool:
        return self._ledger.exhausted

    @property
    def has_pending(self) -> bool:  # type: ignore[override]
        return self._control.door.has_pending

    def sockets(self) -> tuple[zmq.Socket, ...]:
        return self._control.door.sockets()

    def pump(self) -> None:
        self._control.door.pump()

    def take_cancels(self) -> list[int]:
        return self._ledger.take_cancels()


class LocalSource(_RootFeed):
    """A NodeWorker's source when it runs at the root."""

    def take(self) -> tuple[int, Task] | None:
        return self._ledger.take()


class LocalSink:
    """A NodeWorker's sink when it runs at the root: results go to the ledger, and the
    journal is written (and clients are answered) on every loop turn."""

    def __init__(self, control: RootControl, recorder: Recorder, host: str) -> None:
        self._control = control
        self._ledger = control.ledger
        self._recorder = recorder
        self._host = host

    def record(self, key: int, task: Task, result: RunResult, cpus: str, gpus: str) -> None:
        if type(result) is not RunResult:
            result = RunResult._make(result)
        self._ledger.finished(key, result, self._host, cpus, gpus)

    def held(self, key: int, cpus: list[int], gpus: list[str]) -> None:
        raise RuntimeError("a multi-node task cannot run on one node")

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        self._recorder.counts.running_now = by_ensemble

    def report_started(self, keys: list[int]) -> None:
        self._ledger.started(keys, time.time())

    def record_samples(self, samples: list[NodeSample]) -> None:
        self._recorder.store.add_node_samples(samples)

    def every_tick(self) -> None:
        self._control.supervise()
        self._recorder.tick()

    def after_turn(self) -> None:
        self._control.turn()
        self._recorder.store.flush()
        self._control.door.flush()

    def final_flush(self) -> None:
        self._recorder.flush()
        self._control.door.flush()


class RootUpstream(_RootFeed):
    """The upstream of the root Master: tasks as wire items, results into the ledger."""

    def __init__(self, control: RootControl, recorder: Recorder,
                 functions: FunctionTable | None = None) -> None:
        super().__init__(control)
        self._recorder = recorder
        self.functions = functions or FunctionTable()

    def take(self) -> tuple[int, WireTask] | None:
        entry = self._ledger.take_entry()
        if entry is None:
            return None
        key = entry.key
        assert key is not None
        return key, task_to_wire(key, entry.task, self.functions, entry.priority, entry.route)

    def record_rows(self, rows: list[ResultRow]) -> None:
        finished = self._ledger.finished
        for row in rows:
            if type(row) is not ResultRow:
                row = ResultRow._make(row)
            finished(row.key, row, row.host, row.cpus, row.gpus)  # type: ignore[arg-type]

    def node_lost(self, name: str, host: str, keys: list[int], why: str) -> None:
        self._ledger.lost(keys, name, host, why)

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        """What the tree runs now, summed over its nodes by the root master."""
        self._recorder.counts.running_now = by_ensemble

    def report_started(self, keys: list[int]) -> None:
        self._ledger.started(keys, time.time())

    def record_samples(self, samples: list[NodeSample]) -> None:
        self._recorder.store.add_node_samples(samples)

    def tick(self) -> None:
        self._control.supervise()
        self._control.turn()
        self._recorder.store.flush()
        self._control.door.flush()
        self._recorder.reporter.update(self._recorder.counts)
