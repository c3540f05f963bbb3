"""The root's account of every task it hands out: intake, dependencies, priority, retries,
lost nodes, cancels, resume, shutdown.

    TaskStream (minus tasks a resumed run already has) --+
    submit(): ready now -> queue (by priority) ---------+
              waiting on dependencies -> waiting -------/   (enter the queue when settled)
    retry queue (failed attempts to run again) ---------+--take()--> (key, task) --> tree
    <--finished(key, result)/lost(keys)-- tree: final -> recorder; retry -> retry queue

The intake is open until ``close()``: ``take()`` may return None now and a task later, and
the ledger is ``exhausted`` only once it is closed and everything in it is final. ``el run``
hands the ledger its file's stream and closes it at once; a cluster closes it on ``el
stop``. Every hand-out gets a fresh key, so a late result for an attempt already given up
on (a node declared lost that answers after all) is dropped: the first final result wins.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.task import UnbuildableTask
from ensemble_launcher.monitor.profiles import BasicProfile
from ensemble_launcher.orchestrator.recording import Recorder
from ensemble_launcher.orchestrator.signals import (
    GracefulShutdown,
    died_of_stop_signal,
    interrupted,
)
from ensemble_launcher.states import (
    CANCELLED,
    FAILED,
    LOST,
    NOT_RUN,
    SUCCEEDED,
    RunResult,
    never_ran,
)

#: Final submitted tasks remembered in memory; far more than one loop turn finishes, so
#: any older one is in the journal already.
_SETTLED_IN_MEMORY = 4096


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts for a failure whose reason is in ``retry_on``; a task whose
    node was lost is run again up to ``node_loss_retries`` times (not the task's fault)."""

    retries: int = 0
    retry_on: frozenset[str] = frozenset({"exit_code", "signal", "exception", "timeout",
                                          "worker_lost"})
    node_loss_retries: int = 3


#: Builds the task that runs from a submitted one once its dependencies are settled: it
#: puts their values (``{task_id: pickled value or None}``) where the task takes them.
Resolver = Callable[[Task, dict[str, bytes | None]], Task]


class Submission(NamedTuple):
    """A task entering an open ledger. ``after`` names tasks (by task_id) it waits for;
    ``resolve`` gives it their values. ``tag`` groups tasks to cancel together."""

    task: Task
    priority: int = 0
    route: str = ""
    after: tuple[str, ...] = ()
    resolve: Resolver | None = None


class TaskObserver(Protocol):
    """What watches tasks move through the ledger (the rules engine): each call is one
    event of one task. Final results go to the recorder's listeners instead."""

    def submitted(self, task: Task, at: float) -> None: ...

    def handed_out(self, task: Task, at: float, fresh: bool) -> None:
        """``fresh``: the task entered just now (the stream is read as tasks go out)."""

    def started(self, task: Task, at: float, entered: float) -> None:
        """A node reported it running; ``entered``: when it was submitted (0: unknown)."""

    def finished(self, task: Task | UnbuildableTask, result: RunResult,
                 entered: float) -> None:
        """Its final result (recorded): whatever ended it, ran or not."""

    def done_before(self, task: Task | UnbuildableTask, state: str) -> None:
        """An earlier life of the run finished ``task`` (``state``); this one skips it."""


class Settled(NamedTuple):
    """What a finished submitted task left for tasks that depend on it."""

    state: str
    value: bytes | None
    reason: str | None


@dataclass(slots=True)
class _Entry:
    task: Task
    attempt: int
    losses: int = 0
    tries: int = 1
    handed_out: float = 0.0
    entered: float = 0.0
    """When it was submitted (a stream task: handed out), for the observer; 0: unknown."""
    priority: int = 0
    route: str = ""
    submitted: Submission | None = None
    key: int | None = None
    cancelled: bool = False

    def again(self, lost: bool = False) -> _Entry:
        return _Entry(self.task, self.attempt + 1, self.losses + lost, self.tries + 1,
                      priority=self.priority, route=self.route, submitted=self.submitted,
                      entered=self.entered)


@dataclass(slots=True)
class _Waiting:
    entry: _Entry
    missing: set[str]
    values: dict[str, bytes | None] = field(default_factory=dict)


class Ledger:
    def __init__(self, tasks: Iterable[Task | UnbuildableTask], recorder: Recorder,
                 policy: RetryPolicy, *,
                 previous: dict[str, tuple[str, int]] | None = None,
                 retry_failed: bool = False, deadline: float | None = None,
                 profile: BasicProfile | None = None,
                 shutdown: GracefulShutdown | None = None, closed: bool = True) -> None:
        self._stream: Iterator[Task | UnbuildableTask] = iter(tasks)
        self._recorder = recorder
        self._policy = policy
        self._previous = previous or {}
        self._retry_failed = retry_failed
        self._deadline = deadline
        self._profile = profile
        self._shutdown = shutdown
        self._retry: deque[_Entry] = deque()
        self._queue: list[tuple[int, int, _Entry]] = []
        self._order = itertools.count()
        self._live: dict[str, _Entry] = {}
        """Submitted tasks not final yet: waiting, queued, out, or about to run again."""
        self._waiting: dict[str, _Waiting] = {}
        self._dependents: dict[str, list[str]] = {}
        self.settled: OrderedDict[str, Settled] = OrderedDict()
        """The last final submitted tasks, for tasks submitted later that depend on them
        (older ones are read from the journal, which holds them once flushed)."""
        self._cancels: list[int] = []
        self.await_unknown = 0.0
        """Seconds a dependency that is not (yet) a task waits to be submitted: another
        client's Submit may arrive after the one that names it. 0: it fails at once."""
        self._awaited: dict[str, float] = {}
        self.inflight: dict[int, _Entry] = {}
        self._next_key = 0
        self._stream_done = False
        self.closed = closed
        self.halted = False
        self.skipped = 0
        self.observer: TaskObserver | None = None
        self._stream_cancels: list[Callable[[Task], bool]] = []
        self.stream_size: int | None = None
        """How many tasks the stream holds, when known (a file, a list): for ``waiting``."""
        self._read = 0

    # -- intake ------------------------------------------------------------------------------

    def submit(self, submission: Submission) -> None:
        """Take one task into the open ledger; its id must be new (the caller checks)."""
        task = submission.task
        entry = _Entry(task, self._attempt_of(task.task_id), priority=submission.priority,
                       route=submission.route, submitted=submission)
        if self._awaited:
            self._awaited.pop(task.task_id, None)
        if task.task_id in submission.after:
            self._live[task.task_id] = entry
            self._final(entry, _failed("dependency", f"DependencyFailed: {task.task_id!r} "
                                       "depends on itself"))
            return
        self._live[task.task_id] = entry
        self._recorder.counts.submitted(task.ensemble)
        if self.observer is not None:
            entry.entered = time.time()
            self.observer.submitted(task, entry.entered)
        if not submission.after:
            heapq.heappush(self._queue, (-entry.priority, next(self._order), entry))
            return
        waiting = _Waiting(entry, set())
        for name in submission.after:
            if name in self._live:
                waiting.missing.add(name)
                self._dependents.setdefault(name, []).append(task.task_id)
                continue
            settled = self._settled(name)
            if settled is None and self.await_unknown > 0:
                self._awaited.setdefault(name, time.monotonic() + self.await_unknown)
                waiting.missing.add(name)
                self._dependents.setdefault(name, []).append(task.task_id)
                continue
            if settled is None:
                self._final(entry, _unknown_dependency(name))
                return
            if settled.state != SUCCEEDED:
                self._final(entry, _dependency_failed(name, settled))
                return
            waiting.values[name] = settled.value
        if waiting.missing:
            self._waiting[task.task_id] = waiting
        else:
            self._ready(waiting)

    def submit_alike(self, tasks: list[Task], priority: int = 0, route: str = "") -> None:
        """Take in tasks that differ only in their ids and arguments (a map's chunk) and
        wait for nothing, as ``submit`` takes each; they share one Submission (only its
        options are read after this)."""
        if self._previous:
            for task in tasks:
                self.submit(Submission(task, priority, route))
            return
        shared = Submission(tasks[0], priority, route)
        live, queue, order, awaited = self._live, self._queue, self._order, self._awaited
        for task in tasks:
            entry = _Entry(task, 1, priority=priority, route=route, submitted=shared)
            if awaited:
                awaited.pop(task.task_id, None)
            live[task.task_id] = entry
            heapq.heappush(queue, (-priority, next(order), entry))
        self._recorder.counts.submitted(tasks[0].ensemble, len(tasks))
        observer = self.observer
        if observer is not None:
            now = time.time()
            for task in tasks:
                live[task.task_id].entered = now
                observer.submitted(task, now)

    def done_before(self, task_id: str) -> str | None:
        """The final state of a task that an earlier life of this run finished and this one
        does not run again (a resume), else None."""
        earlier = self._previous.get(task_id)
        if earlier is None or runs_again(earlier[0], self._retry_failed):
            return None
        return earlier[0]

    @property
    def live_ids(self) -> dict[str, _Entry]:
        """Submitted tasks not final yet, by task_id (for ``in``)."""
        return self._live

    def _attempt_of(self, task_id: str) -> int:
        earlier = self._previous.get(task_id)
        if earlier is None:
            return 1
        self._recorder.store.archive_final(task_id)
        return earlier[1] + 1

    def _settled(self, task_id: str) -> Settled | None:
        """How a task that is no longer live ended: recent ones are in memory, the rest
        (and those of an earlier life of this run) in the journal."""
        settled = self.settled.get(task_id)
        if settled is not None:
            return settled
        final = self._recorder.store.final_outcome(task_id)
        if final is None or final[0] == NOT_RUN:
            return None
        return Settled(*final)

    def _ready(self, waiting: _Waiting) -> None:
        entry = waiting.entry
        submission = entry.submitted
        if submission is not None and submission.resolve is not None:
            try:
                entry.task = submission.resolve(entry.task, waiting.values)
            except Exception as exc:  # noqa: BLE001 - a value we cannot pass fails its task
                self._final(entry, _failed("dependency", f"DependencyFailed: cannot pass "
                                           f"the values of its dependencies: {exc}"))
                return
        heapq.heappush(self._queue, (-entry.priority, next(self._order), entry))

    def expire_awaited(self) -> None:
        """Dependencies awaited past their time fail the tasks that wait on them."""
        if not self._awaited:
            return
        now = time.monotonic()
        for name in [n for n, deadline in self._awaited.items() if deadline <= now]:
            del self._awaited[name]
            for dependent in self._dependents.pop(name, ()):
                waiting = self._waiting.pop(dependent, None)
                if waiting is not None:
                    self._final(waiting.entry, _unknown_dependency(name))

    def close(self) -> None:
        """No task enters any more: once everything in the ledger is final, it is
        exhausted and the tree drains."""
        self.closed = True

    # -- cancelling --------------------------------------------------------------------------

    def cancel(self, task_id: str) -> bool:
        """Cancel a submitted task: one not started never runs; a running one is stopped.
        False when it is final already (or unknown)."""
        entry = self._live.get(task_id)
        if entry is None or entry.cancelled:
            return entry is not None
        entry.cancelled = True
        if entry.key is not None and entry.key in self.inflight:
            self._cancels.append(entry.key)
            return True
        self._waiting.pop(task_id, None)
        self._final(entry, _cancelled())
        return True

    def cancel_tag(self, tag: str) -> int:
        """Cancel every submitted task with ``tag`` that is not final; how many."""
        names = [name for name, entry in self._live.items() if entry.task.tag == tag]
        return sum(self.cancel(name) for name in names)

    def cancel_where(self, chosen: Callable[[Task], bool]) -> int:
        """Cancel every task that is not final and that ``chosen`` picks (a rules group):
        submitted ones, those of the stream out in the tree, and those the stream has not
        read yet (each recorded cancelled as it is read). How many were live."""
        if chosen not in self._stream_cancels:
            self._stream_cancels.append(chosen)
        names = [task_id for task_id, entry in self._live.items() if chosen(entry.task)]
        count = sum(self.cancel(task_id) for task_id in names)
        for entry in self.inflight.values():
            if entry.submitted is None and not entry.cancelled and chosen(entry.task):
                entry.cancelled = True
                self._cancels.append(entry.key)  # type: ignore[arg-type]
                count += 1
        for entry in [e for e in self._retry if e.submitted is None and chosen(e.task)]:
            self._retry.remove(entry)
            self._final(entry, _cancelled())
            count += 1
        return count

    def waiting_since(self) -> Iterator[tuple[Task, float]]:
        """Every task not final that entered while observed, with when it entered: those
        waiting, queued, to run again, or out in the tree (started or not)."""
        entries = itertools.chain(self._retry, (item[2] for item in self._queue),
                                  (w.entry for w in self._waiting.values()),
                                  self.inflight.values())
        for entry in entries:
            if entry.entered:
                yield entry.task, entry.entered

    @property
    def idle(self) -> bool:
        """Nothing waits, is queued, runs, or is left in the stream."""
        return self._stream_done and not (self._retry or self._queue or self._waiting or
                                          self.inflight)

    def waiting(self) -> int:
        """Tasks ready to hand out: retries, submitted ones, and what the stream has left
        (a stream of unknown size that is not done counts as a great many). A provider's
        policy sizes its blocks by it."""
        left = 0
        if not self._stream_done:
            left = _UNSIZED if self.stream_size is None else max(0, self.stream_size - self._read)
        return len(self._retry) + len(self._queue) + left

    def take_cancels(self) -> list[int]:
        """Hand-out keys of running tasks to stop, for the tree."""
        cancels, self._cancels = self._cancels, []
        return cancels

    # -- handing out -------------------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        return self.halted or (self.closed and self._stream_done and not self._retry
                               and not self._queue and not self._waiting)

    def take(self) -> tuple[int, Task] | None:
        entry = self.take_entry()
        return None if entry is None else (entry.key, entry.task)  # type: ignore[return-value]

    def take_entry(self) -> _Entry | None:
        """The next task to hand out, with its key, priority and route."""
        while not self._shutting_down:
            entry = self._next_entry()
            if entry is None:
                return None
            if entry.cancelled or self._past_walltime(entry):
                continue
            key = self._next_key
            self._next_key += 1
            entry.key = key
            self.inflight[key] = entry
            self._running(entry, +1)
            if self._profile is not None:
                entry.handed_out = time.time()
            if self.observer is not None:
                self._observe_hand_out(entry)
            return entry
        return None

    def _observe_hand_out(self, entry: _Entry) -> None:
        """A task of the stream is submitted as it is read, which is when it is handed out."""
        observer = self.observer
        assert observer is not None
        now = time.time()
        fresh = entry.submitted is None and entry.tries == 1
        if fresh:
            entry.entered = now
        observer.handed_out(entry.task, now, fresh)

    def _next_entry(self) -> _Entry | None:
        """A retry first; then submitted tasks of a higher priority than the stream's (0),
        the stream, and the rest of the submitted ones."""
        if self._retry:
            return self._retry.popleft()
        queue = self._queue
        if queue and (queue[0][0] < 0 or self._stream_done):
            return heapq.heappop(queue)[2]
        if not self._stream_done:
            entry = self._next_from_stream()
            if entry is not None:
                return entry
            if queue:
                return heapq.heappop(queue)[2]
        return None

    def _next_from_stream(self) -> _Entry | None:
        for task in self._stream:
            self._read += 1
            earlier = self._previous.get(task.task_id)
            if earlier is not None and not runs_again(earlier[0], self._retry_failed):
                self.skipped += 1
                if self.observer is not None:
                    self.observer.done_before(task, earlier[0])
                continue
            attempt = 1
            if earlier is not None:
                self._recorder.store.archive_final(task.task_id)
                attempt = earlier[1] + 1
            if isinstance(task, UnbuildableTask):
                self._add_final(task, _failed("launch", task.reason), attempt)
            elif self._stream_cancels and any(chosen(task) for chosen in self._stream_cancels):
                self._add_final(task, _cancelled(), attempt)
            else:
                return _Entry(task, attempt)
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

    def started(self, keys: Iterable[int], at: float) -> None:
        """The nodes saw these hand-outs start running (for the observer; a short task may
        finish before any report says so, and is never named here)."""
        observer = self.observer
        if observer is None:
            return
        inflight = self.inflight
        for key in keys:
            entry = inflight.get(key)
            if entry is not None:
                observer.started(entry.task, at, entry.entered)

    def finished(self, key: int, result: RunResult, host: str, cpus: str, gpus: str) -> None:
        entry = self.inflight.pop(key, None)
        if entry is None:
            return
        self._running(entry, -1)
        if self._profile is not None:
            self._profile.task_done(entry.handed_out, result.start, result.end, time.time())
        if entry.cancelled and result.state != SUCCEEDED:
            self._record(entry, _cancelled(result), host, cpus, gpus)
        elif result.state == LOST:
            self._lost(entry, result, host, cpus, gpus)
        elif self._stopped_by_shutdown(result):
            self._record(entry, interrupted(result), host, cpus, gpus)
        elif result.state not in (SUCCEEDED, CANCELLED) and \
                self._may_retry(entry, result.reason):
            self._record(entry, result, host, cpus, gpus, final=False)
            self._retry.append(self._again(entry))
        else:
            self._record(entry, result, host, cpus, gpus)

    def _may_retry(self, entry: _Entry, reason: str | None) -> bool:
        limit = entry.task.retries if entry.task.retries is not None else self._policy.retries
        return not self.halted and reason in self._policy.retry_on and \
            entry.tries <= limit + entry.losses

    def _stopped_by_shutdown(self, result: RunResult) -> bool:
        """A task that died of the signal stopping the run did not fail: it was not let
        finish, and resume runs it."""
        return self._shutting_down and died_of_stop_signal(result)

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
            result = RunResult(key, LOST, "node_lost", None, None, None,
                               f"{name} on {host} was lost: {why}", None, None, "", now, now)
            if entry.cancelled:
                self._record(entry, _cancelled(result), host, "", "")
            else:
                self._lost(entry, result, host, "", "")

    def _lost(self, entry: _Entry, result: RunResult, host: str, cpus: str,
              gpus: str) -> None:
        """A task lost with its node (or its runner) runs again up to node_loss_retries
        times; while the run is stopping it is recorded as not run, for resume."""
        if self._shutting_down:
            self._record(entry, interrupted(result), host, cpus, gpus)
        elif entry.losses < self._policy.node_loss_retries:
            self._record(entry, result, host, cpus, gpus, final=False)
            self._retry.appendleft(self._again(entry, lost=True))
        else:
            self._record(entry, result, host, cpus, gpus)

    def _again(self, entry: _Entry, lost: bool = False) -> _Entry:
        again = entry.again(lost)
        if entry.submitted is not None:
            self._live[entry.task.task_id] = again
        return again

    def _record(self, entry: _Entry, result: RunResult, host: str, cpus: str, gpus: str,
                final: bool = True) -> None:
        self._recorder.add(entry.task, result, host, cpus, gpus, entry.attempt, final)
        if final and self.observer is not None:
            self.observer.finished(entry.task, result, entry.entered)
        if final and entry.submitted is not None:
            self._settle(entry.task.task_id, Settled(result.state,
                                                     _passed_value(entry.task, result),
                                                     result.reason))

    def _settle(self, task_id: str, settled: Settled) -> None:
        """A submitted task is final: tasks waiting on it go on, or fail if it did."""
        if self._live.pop(task_id, None) is None:
            return
        self.settled[task_id] = settled
        if len(self.settled) > _SETTLED_IN_MEMORY:
            self.settled.popitem(last=False)
        for name in self._dependents.pop(task_id, ()):
            waiting = self._waiting.get(name)
            if waiting is None:
                continue
            if settled.state == NOT_RUN:
                del self._waiting[name]
                self._final(waiting.entry, _not_run(
                    "interrupted", f"not run: its dependency {task_id!r} was not run to its "
                                   "end"))
                continue
            if settled.state != SUCCEEDED:
                del self._waiting[name]
                self._final(waiting.entry, _dependency_failed(task_id, settled))
                continue
            waiting.missing.discard(task_id)
            waiting.values[task_id] = settled.value
            if not waiting.missing:
                del self._waiting[name]
                self._ready(waiting)

    # -- shutdown ----------------------------------------------------------------------------

    def halt(self) -> None:
        """Hand out nothing more: tasks waiting for a retry, in the queue or on their
        dependencies are recorded as not run."""
        self.halted = True
        self.closed = True
        self._record_pending("not run: the run was interrupted")

    def abandon(self, why: str) -> None:
        """Record every task still out, waiting, or waiting to run again, as not run (after
        the grace period ran out, or when the run cannot go on)."""
        self._record_pending(why)
        for entry in list(self.inflight.values()):
            self._running(entry, -1)
            self._final(entry, _cancelled() if entry.cancelled else _not_run("interrupted", why))
        self.inflight.clear()

    def _record_pending(self, why: str) -> None:
        pending = list(self._retry) + [item[2] for item in self._queue] + \
            [w.entry for w in self._waiting.values()]
        self._retry.clear()
        self._queue.clear()
        self._waiting.clear()
        for entry in pending:
            if not entry.cancelled:
                self._final(entry, _not_run("interrupted", why))

    def refuse(self, task: Task | UnbuildableTask, why: str) -> None:
        """A task that cannot enter (one submitted before a restart that no longer loads):
        recorded failed, so that it has its one final result."""
        self._add_final(task, _failed("invalid", why))

    def _add_final(self, task: Task | UnbuildableTask, result: RunResult,
                   attempt: int = 1) -> None:
        """The final result of a task that never entered: recorded, and told."""
        self._recorder.add(task, result, "", "", "", attempt)
        if self.observer is not None:
            self.observer.finished(task, result, 0.0)

    def _running(self, entry: _Entry, change: int) -> None:
        by = self._recorder.counts.handed_out
        name = entry.task.ensemble or "tasks"
        by[name] = by.get(name, 0) + change

    def _final(self, entry: _Entry, result: RunResult) -> None:
        self._record(entry, result, "", "", "")


#: What ``waiting`` counts for a stream of unknown size: enough for any pool's max_blocks.
_UNSIZED = 1_000_000


def runs_again(state: str, retry_failed: bool) -> bool:
    """Whether a resume runs a task whose earlier final result has ``state``: tasks not run
    do, failed ones only with ``retry_failed``, succeeded and cancelled ones never."""
    return state == NOT_RUN or (retry_failed and state not in (SUCCEEDED, CANCELLED))


def _passed_value(task: Task, result: RunResult) -> bytes | None:
    """What a task's dependents get for it, pickled: a callable's return value, a command's
    stdout (with return_stdout) or else its exit status, as the client's future holds."""
    if task.is_callable or result.state != SUCCEEDED:
        return result.value
    return pickle.dumps(result.stdout if result.stdout is not None else result.returncode)


def _cancelled(result: RunResult | None = None) -> RunResult:
    if result is None:
        return never_ran(CANCELLED, "cancelled", "cancelled by a client", time.time())
    return result._replace(state=CANCELLED, reason="cancelled", value=None,
                           exception="cancelled by a client while it ran", traceback=None)


def _unknown_dependency(name: str) -> RunResult:
    return _failed("dependency", f"DependencyFailed: dependency {name!r} is not a task of "
                                 "this cluster")


def _dependency_failed(name: str, settled: Settled) -> RunResult:
    how = "was cancelled" if settled.state == CANCELLED else \
        f"ended {settled.state}" + (f" ({settled.reason})" if settled.reason else "")
    return _failed("dependency", f"DependencyFailed: dependency {name!r} {how}")


def _not_run(reason: str, message: str) -> RunResult:
    return never_ran(NOT_RUN, reason, message, time.time())


def _failed(reason: str, message: str) -> RunResult:
    return never_ran(FAILED, reason, message, time.time())


__all__ = ["FAILED", "NOT_RUN", "Ledger", "RetryPolicy", "Settled", "Submission",
           "runs_again"]
