"""The root's account of every task it hands out: retries, lost nodes, resume, shutdown.

    TaskStream (minus tasks a resumed run already has) --+
    retry queue (failed attempts to run again) ----------+--take()--> (key, task) --> tree
    <--finished(key, result)/lost(keys)-- tree: final -> journal; retry -> retry queue

Every hand-out gets a fresh key, so a late result for an attempt already given up on (a
node declared lost that answers after all) is dropped: the first final result wins.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.task import UnbuildableTask
from ensemble_launcher.executors.runner import FAILED, LOST, SUCCEEDED
from ensemble_launcher.monitor.profiles import BasicProfile
from ensemble_launcher.orchestrator.recording import Recorder
from ensemble_launcher.orchestrator.signals import GracefulShutdown

NOT_RUN = "not_run"

#: How a task reads when it died of the signal that stops the run (Slurm signals every
#: process of the job at walltime): killed by it, or a shell's exit status for it.
_SHUTDOWN_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_SHUTDOWN_EXIT_CODES = frozenset(128 + s for s in _SHUTDOWN_SIGNALS)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts for a failure whose reason is in ``retry_on``; a task whose
    node was lost is run again up to ``node_loss_retries`` times (not the task's fault)."""

    retries: int = 0
    retry_on: frozenset[str] = frozenset({"exit_code", "signal", "exception", "timeout",
                                          "worker_lost"})
    node_loss_retries: int = 3


@dataclass(slots=True)
class _Entry:
    task: Task
    attempt: int
    losses: int = 0
    tries: int = 1
    handed_out: float = 0.0

    def again(self, lost: bool = False) -> _Entry:
        return _Entry(self.task, self.attempt + 1, self.losses + lost, self.tries + 1)


class Ledger:
    def __init__(self, tasks: Iterable[Task | UnbuildableTask], recorder: Recorder,
                 policy: RetryPolicy, *,
                 previous: dict[str, tuple[str, int]] | None = None,
                 retry_failed: bool = False, deadline: float | None = None,
                 profile: BasicProfile | None = None,
                 shutdown: GracefulShutdown | None = None) -> None:
        self._stream: Iterator[Task | UnbuildableTask] = iter(tasks)
        self._recorder = recorder
        self._policy = policy
        self._previous = previous or {}
        self._retry_failed = retry_failed
        self._deadline = deadline
        self._profile = profile
        self._shutdown = shutdown
        self._retry: deque[_Entry] = deque()
        self.inflight: dict[int, _Entry] = {}
        self._next_key = 0
        self._stream_done = False
        self.halted = False
        self.skipped = 0

    # -- handing out -------------------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        return self.halted or (self._stream_done and not self._retry)

    def take(self) -> tuple[int, Task] | None:
        while not self._shutting_down:
            entry = self._retry.popleft() if self._retry else self._next_from_stream()
            if entry is None:
                return None
            if self._past_walltime(entry):
                continue
            key = self._next_key
            self._next_key += 1
            self.inflight[key] = entry
            self._running(entry, +1)
            if self._profile is not None:
                entry.handed_out = time.time()
            return key, entry.task
        return None

    def _next_from_stream(self) -> _Entry | None:
        for task in self._stream:
            earlier = self._previous.get(task.task_id)
            if isinstance(task, UnbuildableTask):
                if earlier is None or runs_again(earlier[0], self._retry_failed):
                    if earlier is not None:
                        self._recorder.store.archive_final(task.task_id)
                    self._recorder.add(task, _failed("launch", task.reason), "", "", "",
                                       earlier[1] + 1 if earlier else 1)
                else:
                    self.skipped += 1
                continue
            if earlier is None:
                return _Entry(task, 1)
            state, attempt = earlier
            if runs_again(state, self._retry_failed):
                self._recorder.store.archive_final(task.task_id)
                return _Entry(task, attempt + 1)
            self.skipped += 1
        self._stream_done = True
        return None

    def _past_walltime(self, entry: _Entry) -> bool:
        """A task declared longer than the job's remaining walltime is not started."""
        if self._deadline is None or not entry.task.estimated_runtime:
            return False
        left = self._deadline - time.time()
        if entry.task.estimated_runtime <= left:
            return False
        self._final(entry, _not_run(
            "walltime", f"not started: its estimated_runtime of {entry.task.estimated_runtime}"
                        f" s exceeds the {max(0.0, left):.0f} s left in the job"))
        return True

    # -- results -----------------------------------------------------------------------------

    def finished(self, key: int, result: Sequence[Any], host: str, cpus: str,
                 gpus: str) -> None:
        entry = self.inflight.pop(key, None)
        if entry is None:
            return
        self._running(entry, -1)
        if self._profile is not None:
            self._profile.task_done(entry.handed_out, result[10], result[11], time.time())
        if result[1] == LOST:
            self._lost(entry, result, host, cpus, gpus)
        elif self._stopped_by_shutdown(result):
            self._recorder.add(entry.task, _interrupted(result), host, cpus, gpus,
                               entry.attempt)
        elif result[1] != SUCCEEDED and self._may_retry(entry, result[2]):
            self._recorder.add(entry.task, result, host, cpus, gpus, entry.attempt, final=False)
            self._retry.append(entry.again())
        else:
            self._recorder.add(entry.task, result, host, cpus, gpus, entry.attempt)

    def _may_retry(self, entry: _Entry, reason: str | None) -> bool:
        limit = entry.task.retries if entry.task.retries is not None else self._policy.retries
        return not self.halted and reason in self._policy.retry_on and \
            entry.tries <= limit + entry.losses

    def _stopped_by_shutdown(self, result: Sequence[Any]) -> bool:
        """A task that died of the signal stopping the run did not fail: it was not let
        finish, and resume runs it."""
        if result[1] != FAILED or not self._shutting_down:
            return False
        return (result[2] == "signal" and result[4] in _SHUTDOWN_SIGNALS) or \
            (result[2] == "exit_code" and result[3] in _SHUTDOWN_EXIT_CODES)

    @property
    def _shutting_down(self) -> bool:
        return self.halted or (self._shutdown is not None and self._shutdown.requested)

    def lost(self, keys: Iterable[int], name: str, host: str, why: str) -> None:
        """The tasks of a lost node run again elsewhere (a bounded number of times)."""
        now = time.time()
        for key in keys:
            entry = self.inflight.pop(key, None)
            if entry is None:
                continue
            self._running(entry, -1)
            self._lost(entry, (key, LOST, "node_lost", None, None, None,
                               f"{name} on {host} was lost: {why}", None, None, "", now, now),
                       host, "", "")

    def _lost(self, entry: _Entry, result: Sequence[Any], host: str, cpus: str,
              gpus: str) -> None:
        """A task lost with its node (or its runner) runs again up to node_loss_retries
        times; while the run is stopping it is recorded as not run, for resume."""
        if self._shutting_down:
            self._recorder.add(entry.task, _interrupted(result), host, cpus, gpus,
                               entry.attempt)
        elif entry.losses < self._policy.node_loss_retries:
            self._recorder.add(entry.task, result, host, cpus, gpus, entry.attempt,
                               final=False)
            self._retry.appendleft(entry.again(lost=True))
        else:
            self._recorder.add(entry.task, result, host, cpus, gpus, entry.attempt)

    # -- shutdown ----------------------------------------------------------------------------

    def halt(self) -> None:
        """Hand out nothing more: tasks waiting for a retry are recorded as not run."""
        self.halted = True
        while self._retry:
            self._final(self._retry.popleft(), _not_run("interrupted",
                                                         "not run: the run was interrupted"))

    def abandon(self, why: str) -> None:
        """Record every task still out, or waiting to run again, as not run (after the
        grace period ran out, or when the run cannot go on)."""
        while self._retry:
            self._final(self._retry.popleft(), _not_run("interrupted", why))
        for entry in self.inflight.values():
            self._running(entry, -1)
            self._final(entry, _not_run("interrupted", why))
        self.inflight.clear()

    def _running(self, entry: _Entry, change: int) -> None:
        by = self._recorder.counts.handed_out
        name = entry.task.ensemble or "tasks"
        by[name] = by.get(name, 0) + change

    def _final(self, entry: _Entry, result: tuple) -> None:
        self._recorder.add(entry.task, result, "", "", "", entry.attempt)


def runs_again(state: str, retry_failed: bool) -> bool:
    """Whether a resume runs a task whose earlier final result has ``state``: tasks not run
    do, failed ones only with ``retry_failed``, succeeded ones never."""
    return state == NOT_RUN or (retry_failed and state != SUCCEEDED)


def _interrupted(result: Sequence[Any]) -> tuple:
    """``result`` of a task the stopping run did not let finish, recorded as not run."""
    return (result[0], NOT_RUN, "interrupted", result[3], result[4], None,
            f"not run to its end: the run was stopping ({result[6]})", None, result[8],
            result[9], result[10], result[11])


def _not_run(reason: str, message: str) -> tuple:
    now = time.time()
    return (None, NOT_RUN, reason, None, None, None, message, None, None, "", now, now)


def _failed(reason: str, message: str) -> tuple:
    now = time.time()
    return (None, FAILED, reason, None, None, None, message, None, None, "", now, now)


__all__ = ["FAILED", "NOT_RUN", "Ledger", "RetryPolicy", "runs_again"]
