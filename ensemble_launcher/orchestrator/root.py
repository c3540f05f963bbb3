"""The root of a tree (``main`` at nlevels >= 1): the task stream above, the store below.

    TaskStream --RootUpstream.take()--> Master(main) --> sub-masters / workers
    Recorder <--RootUpstream.record_rows()/node_lost()-- Master(main)

The root keeps only the tasks in flight (key -> Task), to record their results and to
account for them when a node is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from ensemble_launcher.ensemble import Task
from ensemble_launcher.executors.runner import LOST
from ensemble_launcher.orchestrator.recording import Recorder
from ensemble_launcher.orchestrator.wire import FunctionTable, task_to_wire


class RootUpstream:
    def __init__(self, tasks: Iterable[Task], recorder: Recorder) -> None:
        self._tasks: Iterator[Task] = iter(tasks)
        self._recorder = recorder
        self.functions = FunctionTable()
        self.inflight: dict[int, Task] = {}
        self._next_key = 0
        self.exhausted = False

    def take(self) -> tuple[int, list[Any]] | None:
        if self.exhausted:
            return None
        task = next(self._tasks, None)
        if task is None:
            self.exhausted = True
            return None
        key = self._next_key
        self._next_key += 1
        self.inflight[key] = task
        return key, task_to_wire(key, task, self.functions)

    def want(self, n: int) -> None:
        pass

    def sockets(self) -> tuple[zmq.Socket, ...]:
        return ()

    def pump(self) -> None:
        pass

    def record_rows(self, rows: list[list[Any]]) -> None:
        add, inflight = self._recorder.add, self.inflight
        for row in rows:
            task = inflight.pop(row[0], None)
            if task is not None:
                add(task, row, row[12], row[13], row[14])

    def node_lost(self, name: str, host: str, keys: list[int], why: str) -> None:
        now = time.time()
        for key in keys:
            task = self.inflight.pop(key, None)
            if task is not None:
                self._recorder.add(task, (key, LOST, "node_lost", None, None, None,
                                          f"{name} on {host} was lost: {why}", None, None, "",
                                          now, now), host, "", "")

    def tick(self) -> None:
        self._recorder.counts.running = len(self.inflight)
        self._recorder.tick()
