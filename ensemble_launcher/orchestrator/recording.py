"""Turning finished tasks into journal rows and live counts, at the root of a run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.task import UnbuildableTask
from ensemble_launcher.executors.runner import SUCCEEDED
from ensemble_launcher.monitor import Counts, Reporter
from ensemble_launcher.store import RunStore
from ensemble_launcher.store.journal import journal_row


class Recorder:
    """Where the root puts results: the run store, the live counts, the reporter."""

    def __init__(self, store: RunStore, counts: Counts, reporter: Reporter) -> None:
        self.store = store
        self.counts = counts
        self.reporter = reporter

    def add(self, task: Task | UnbuildableTask, result: Sequence[Any], host: str, cpus: str,
            gpus: str, attempt: int = 1, final: bool = True) -> None:
        """``result`` is a runner result tuple: (key, state, reason, returncode, signal,
        value, exception, traceback, stdout, stderr, start, end). A non-final result is an
        attempt that will be retried."""
        ensemble = task.ensemble or "tasks"
        state = result[1]
        if not final:
            bucket = self.counts.retried
        elif state == SUCCEEDED:
            bucket = self.counts.done
        elif state == "not_run":
            bucket = self.counts.not_run
        else:
            bucket = self.counts.failed
        bucket[ensemble] = bucket.get(ensemble, 0) + 1
        self.store.add(journal_row(task.task_id, task.ensemble, attempt, result, host, cpus,
                                   gpus), final)

    def tick(self) -> None:
        self.store.maybe_flush()
        self.reporter.update(self.counts)

    def flush(self) -> None:
        self.store.flush()
        self.reporter.update(self.counts)
