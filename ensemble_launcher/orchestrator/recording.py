"""Turning finished tasks into journal rows and live counts, at the root of a run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ensemble_launcher.ensemble import Task
from ensemble_launcher.executors.runner import SUCCEEDED
from ensemble_launcher.monitor import Counts, Reporter
from ensemble_launcher.store import RunStore


class Recorder:
    """Where the root puts results: the run store, the live counts, the reporter."""

    def __init__(self, store: RunStore, counts: Counts, reporter: Reporter) -> None:
        self.store = store
        self.counts = counts
        self.reporter = reporter

    def add(self, task: Task, result: Sequence[Any], host: str, cpus: str, gpus: str,
            attempt: int = 1) -> None:
        """``result`` is a runner result tuple: (key, state, reason, returncode, signal,
        value, exception, traceback, stdout, stderr, start, end)."""
        ensemble = task.ensemble or "tasks"
        bucket = self.counts.done if result[1] == SUCCEEDED else self.counts.failed
        bucket[ensemble] = bucket.get(ensemble, 0) + 1
        self.store.add((task.task_id, task.ensemble, attempt, result[1], result[2], result[3],
                        result[4], result[5], result[6], result[7], result[8], result[9],
                        result[10], result[11], host, cpus, gpus))

    def tick(self) -> None:
        self.store.maybe_flush()
        self.reporter.update(self.counts)

    def flush(self) -> None:
        self.store.flush()
        self.reporter.update(self.counts)


class LocalSink:
    """The sink of a NodeWorker that runs at the root itself (nlevels=0)."""

    def __init__(self, recorder: Recorder, host: str, worker_running: Callable[[], int]) -> None:
        self._recorder = recorder
        self._host = host
        self._running = worker_running

    def record(self, key: int, task: Task, result: tuple, cpus: str, gpus: str) -> None:
        self._recorder.add(task, result, self._host, cpus, gpus)

    def tick(self) -> None:
        self._recorder.counts.running = self._running()
        self._recorder.tick()

    def flush(self) -> None:
        self._recorder.counts.running = self._running()
        self._recorder.flush()
