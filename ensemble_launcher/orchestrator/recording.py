"""Turning finished tasks into journal rows and live counts, at the root of a run, and
telling whoever listens (a cluster's clients)."""

from __future__ import annotations

from collections.abc import Callable

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.task import UnbuildableTask
from ensemble_launcher.monitor import Counts, Reporter
from ensemble_launcher.states import CANCELLED, NOT_RUN, SUCCEEDED, RunResult
from ensemble_launcher.store import RunStore
from ensemble_launcher.store.journal import journal_row

#: Called with every final result, after it is queued for the journal.
Listener = Callable[[Task | UnbuildableTask, RunResult], None]


class Recorder:
    """Where the root puts results: the run store, the live counts, the reporter, and the
    listeners of final results."""

    def __init__(self, store: RunStore, counts: Counts, reporter: Reporter) -> None:
        self.store = store
        self.counts = counts
        self.reporter = reporter
        self.listeners: list[Listener] = []

    def add(self, task: Task | UnbuildableTask, result: RunResult, host: str, cpus: str,
            gpus: str, attempt: int = 1, final: bool = True) -> None:
        """One attempt of ``task``; a non-final result is an attempt that will be retried."""
        ensemble = task.ensemble or "tasks"
        state = result.state
        if not final:
            bucket = self.counts.retried
        elif state == SUCCEEDED:
            bucket = self.counts.done
        elif state == NOT_RUN:
            bucket = self.counts.not_run
        elif state == CANCELLED:
            bucket = self.counts.cancelled
        else:
            bucket = self.counts.failed
        bucket[ensemble] = bucket.get(ensemble, 0) + 1
        tag = getattr(task, "tag", None) if final and task.ensemble is None else None
        if tag:
            tagged = self.counts.tagged
            tagged[tag, state] = tagged.get((tag, state), 0) + 1
        self.store.add(journal_row(task.task_id, task.ensemble, attempt, result, host, cpus,
                                   gpus), final)
        if final:
            for listener in self.listeners:
                listener(task, result)

    def tick(self) -> None:
        self.store.maybe_flush()
        self.reporter.update(self.counts)

    def flush(self) -> None:
        self.store.flush()
        self.reporter.update(self.counts)
