"""The ``simulate`` executor: a task "runs" for its ``estimated_runtime`` without a process.

It lets one machine host a tree of hundreds of logical nodes with many slots each, to
measure what the masters and the protocol cost at scale. Same interface as
:class:`~ensemble_launcher.executors.pool.WarmPool`; results say ``simulated``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from typing import Any

import zmq

from ensemble_launcher.ensemble import Task
from ensemble_launcher.executors.command import MAX_WAIT_SECONDS, poll_ms
from ensemble_launcher.executors.pool import PoolEvents
from ensemble_launcher.states import SUCCEEDED, RunResult


class SimulatedPool:
    def __init__(self, cpus: Sequence[int], **_: Any) -> None:
        self._due: list[tuple[float, int, float]] = []
        self._poller: zmq.Poller | None = None
        self._polled: tuple = ()

    def __enter__(self) -> SimulatedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit_call(self, lane: int, key: int, task: Task, env: Any, capture: bool) -> None:
        self._schedule(key, task)

    def submit_run(self, lane: int, key: int, command: Any, env: Any, task: Task,
                   cpus: Any, capture: bool) -> None:
        self._schedule(key, task)

    def _schedule(self, key: int, task: Task) -> None:
        now = time.time()
        heapq.heappush(self._due, (time.monotonic() + task.estimated_runtime, key, now))

    def flush(self) -> None:
        pass

    def wait(self, timeout: float | None,
             extra: tuple[zmq.Socket | int, ...] = ()) -> PoolEvents:
        due = self.next_due()
        if due is not None:
            next_due = due - time.monotonic()
            timeout = max(0.0, next_due if timeout is None else min(timeout, next_due))
        if extra:
            if extra != self._polled:
                self._poller = zmq.Poller()
                for sock in extra:
                    self._poller.register(sock, zmq.POLLIN)
                self._polled = extra
            assert self._poller is not None
            self._poller.poll(poll_ms(timeout))
        elif timeout:
            time.sleep(min(timeout, MAX_WAIT_SECONDS))
        return self.ended()

    def next_due(self) -> float | None:
        """When the next task ends (monotonic), if one runs."""
        return self._due[0][0] if self._due else None

    def ended(self) -> PoolEvents:
        """The tasks whose time is up, without waiting: what a host of many simulated
        nodes, which does its own waiting, collects for each."""
        events = PoolEvents()
        now, wall = time.monotonic(), time.time()
        due = self._due
        while due and due[0][0] <= now:
            _, key, started = heapq.heappop(due)
            events.results.append(RunResult(key, SUCCEEDED, None, None, None, None, None, None,
                                            None, "", started, wall))
        return events

    def replace(self, lane: int) -> None:
        pass

    def kill(self, lane: int) -> None:
        pass

    def stop_command(self, lane: int) -> bool:
        return False

    def close(self, cancel: bool = False) -> None:
        self._due.clear()
