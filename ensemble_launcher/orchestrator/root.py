"""The root's adapters between its Ledger and what runs the tasks.

    nlevels=0:  Ledger --LocalSource--> NodeWorker --LocalSink--> Ledger
    nlevels>=1: Ledger --RootUpstream.take() (wire)--> Master(main) --record_rows()--> Ledger
"""

from __future__ import annotations

import logging
from typing import Any

from ensemble_launcher.ensemble import Task
from ensemble_launcher.orchestrator.ledger import Ledger
from ensemble_launcher.orchestrator.node_worker import LocalFeed
from ensemble_launcher.orchestrator.recording import Recorder
from ensemble_launcher.orchestrator.signals import GracefulShutdown
from ensemble_launcher.orchestrator.wire import FunctionTable, task_to_wire

log = logging.getLogger("ensemble_launcher")


class RootControl:
    """What the root checks on every tick: a requested shutdown halts the ledger; the end
    of its grace period cancels the run."""

    def __init__(self, ledger: Ledger, shutdown: GracefulShutdown) -> None:
        self.ledger = ledger
        self.shutdown = shutdown

    def supervise(self) -> None:
        if self.shutdown.requested and not self.ledger.halted:
            log.warning("%s: stopping: no new task starts; running tasks have %g s to finish",
                        self.shutdown.signal_name, self.shutdown.grace)
            self.ledger.halt()
        self.shutdown.check()


class LocalSource(LocalFeed):
    """A NodeWorker's source when it runs at the root."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @property
    def halted(self) -> bool:
        return self._ledger.halted

    def take(self) -> tuple[int, Task] | None:
        return self._ledger.take()

    @property
    def exhausted(self) -> bool:
        return self._ledger.exhausted


class LocalSink:
    """A NodeWorker's sink when it runs at the root: results go to the ledger, and the
    journal is written on every loop turn."""

    def __init__(self, control: RootControl, recorder: Recorder, host: str) -> None:
        self._control = control
        self._ledger = control.ledger
        self._recorder = recorder
        self._host = host

    def record(self, key: int, task: Task, result: tuple, cpus: str, gpus: str) -> None:
        self._ledger.finished(key, result, self._host, cpus, gpus)

    def held(self, key: int, cpus: list[int], gpus: list[str]) -> None:
        raise RuntimeError("a multi-node task cannot run on one node")

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        self._recorder.counts.running_now = by_ensemble

    def tick(self) -> None:
        self._control.supervise()
        self._recorder.tick()

    def turn(self) -> None:
        self._recorder.store.flush()

    def flush(self) -> None:
        self._recorder.flush()


class RootUpstream(LocalFeed):
    """The upstream of the root Master: tasks as wire items, results into the ledger."""

    def __init__(self, control: RootControl, recorder: Recorder) -> None:
        self._control = control
        self._ledger = control.ledger
        self._recorder = recorder
        self.functions = FunctionTable()

    @property
    def halted(self) -> bool:
        return self._ledger.halted

    def take(self) -> tuple[int, list[Any]] | None:
        item = self._ledger.take()
        if item is None:
            return None
        key, task = item
        return key, task_to_wire(key, task, self.functions)

    @property
    def exhausted(self) -> bool:
        return self._ledger.exhausted

    def record_rows(self, rows: list[list[Any]]) -> None:
        finished = self._ledger.finished
        for row in rows:
            finished(row[0], row, row[12], row[13], row[14])

    def node_lost(self, name: str, host: str, keys: list[int], why: str) -> None:
        self._ledger.lost(keys, name, host, why)

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        """What the tree runs now, summed over its nodes by the root master."""
        self._recorder.counts.running_now = by_ensemble

    def tick(self) -> None:
        self._control.supervise()
        self._recorder.store.flush()
        self._recorder.reporter.update(self._recorder.counts)
