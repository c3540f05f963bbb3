"""The loop that runs a stream of tasks on one node (``main.w0``; at nlevels=0, the whole run).

    TaskStream --next()--> backlog --NodeSlots.place()--> WarmPool.submit --flush-->
        runners (one per core) --results--> NodeWorker._collect --> RunStore + progress

Tasks are pulled only while lanes have room, so memory holds what is in flight plus a
small backlog of tasks waiting for cores or GPUs, never the ensemble. How many tasks
wait on a lane (``depth``) follows the observed task duration: enough to keep about
20 ms of work queued per core, one when tasks are long.
"""

from __future__ import annotations

import itertools
import shlex
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.loader import requirement_of
from ensemble_launcher.errors import ResourceError
from ensemble_launcher.executors import PoolEvents, WarmPool
from ensemble_launcher.executors.runner import FAILED, SUCCEEDED, TIMED_OUT
from ensemble_launcher.monitor import Counts, Reporter
from ensemble_launcher.resources import NodeResources, check_requirements
from ensemble_launcher.scheduler import NodeSlots, Placement, needs_exclusive
from ensemble_launcher.store import RunStore

_QUEUED_WORK_SECONDS = 0.02
_MAX_DEPTH = 512
_MAX_BACKLOG = 256
_STARVATION_SECONDS = 1.0
_TICK_SECONDS = 0.1


@dataclass(slots=True)
class _InFlight:
    task: Task
    placement: Placement
    deadline: float | None


class NodeWorker:
    def __init__(self, tasks: Iterable[Task], node: NodeResources, pool: WarmPool,
                 store: RunStore, counts: Counts, progress: Reporter, *,
                 gpu_selector: str, capture_stdout: bool, pin: bool, kill_grace: float,
                 check_each_task: bool = False) -> None:
        self._source: Iterator[Task] = iter(tasks)
        self._node = node
        self._pool = pool
        self._store = store
        self._counts = counts
        self._progress = progress
        self._gpu_selector = gpu_selector
        self._capture = capture_stdout
        self._pin = pin
        self._kill_grace = kill_grace
        self._check_each = check_each_task
        self._slots = NodeSlots(node.cpus, node.gpus)
        self._inflight: dict[int, _InFlight] = {}
        self._backlog: deque[tuple[Task, float]] = deque()
        self._keys = itertools.count()
        self._exhausted = False
        self._mean_duration: float | None = None
        self._results_seen = 0
        self._expired: set[int] = set()
        self._last_tick = 0.0

    def run(self) -> None:
        while True:
            self._fill()
            if not self._inflight and not self._backlog and self._exhausted:
                break
            self._collect(self._pool.wait(self._wait_timeout()))
            self._expire_callables()
            self._tick()
        self._store.flush()
        self._progress.update(self._counts)

    # -- dispatch ----------------------------------------------------------------------------

    def _fill(self) -> None:
        for _ in range(len(self._backlog)):
            task, since = self._backlog.popleft()
            placement = self._slots.place(task)
            if placement is None:
                self._backlog.append((task, since))
            else:
                self._dispatch(task, placement)
        while not self._exhausted and len(self._backlog) < _MAX_BACKLOG and not self._starving():
            next_task = next(self._source, None)
            if next_task is None:
                self._exhausted = True
                break
            task = next_task
            if self._check_each and not self._fits(task):
                continue
            placement = self._slots.place(task)
            if placement is None:
                self._backlog.append((task, time.monotonic()))
                if not needs_exclusive(task):
                    break
            else:
                self._dispatch(task, placement)
        self._pool.flush()

    def _starving(self) -> bool:
        """True once a waiting task has waited long enough that new work must not overtake
        it: lanes then drain until it fits."""
        return bool(self._backlog) and \
            time.monotonic() - self._backlog[0][1] > _STARVATION_SECONDS

    def _fits(self, task: Task) -> bool:
        try:
            check_requirements([requirement_of(task, f"task {task.task_id!r}")], [self._node])
        except ResourceError as exc:
            now = time.time()
            self._record(task, None, (None, FAILED, "launch", None, None, None, str(exc), None,
                                      None, "", now, now))
            return False
        return True

    def _dispatch(self, task: Task, placement: Placement) -> None:
        key = next(self._keys)
        env = dict(task.env) if task.env else None
        if placement.gpus:
            env = env or {}
            env[self._gpu_selector] = ",".join(placement.gpus)
        deadline = None
        if task.is_callable:
            if task.timeout:
                deadline = time.monotonic() + task.timeout + self._kill_grace + 1.0
            self._pool.submit_call(placement.lane, key, task, env, self._capture)
        else:
            cpus = placement.cpus if placement.exclusive and self._pin else None
            self._pool.submit_run(placement.lane, key, _command(task), env, task, cpus,
                                  self._capture)
        self._inflight[key] = _InFlight(task, placement, deadline)
        self._counts.running += 1

    # -- results -----------------------------------------------------------------------------

    def _wait_timeout(self) -> float:
        timeout = _TICK_SECONDS
        now = time.monotonic()
        for entry in self._inflight.values():
            if entry.deadline is not None:
                timeout = min(timeout, max(0.0, entry.deadline - now))
        return timeout

    def _collect(self, events: PoolEvents) -> None:
        for result in events.results:
            entry = self._inflight.pop(result[0])
            self._slots.release(entry.placement)
            self._counts.running -= 1
            self._record(entry.task, entry.placement, result)
            self._learn_duration(result[11] - result[10])
        for lane, exitcode in events.dead_lanes:
            self._lane_died(lane, exitcode)

    def _lane_died(self, lane: int, exitcode: int | None) -> None:
        """The earliest unreported task of the lane was running: it fails (or times out,
        if we killed it for that). Tasks queued behind it never started: they go back to
        the front of the backlog."""
        keys = sorted(k for k, e in self._inflight.items() if e.placement.lane == lane)
        now = time.time()
        for i, key in enumerate(keys):
            entry = self._inflight.pop(key)
            self._slots.release(entry.placement)
            self._counts.running -= 1
            if i > 0:
                self._backlog.appendleft((entry.task, time.monotonic()))
            elif key in self._expired:
                self._expired.discard(key)
                self._record(entry.task, entry.placement, (
                    key, TIMED_OUT, "timeout", None, None, None,
                    f"TimeoutError: task exceeded its timeout of {entry.task.timeout} s "
                    "and its runner process was killed", None, None, "", now, now))
            else:
                how = (f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0
                       else f"exit status {exitcode}")
                self._record(entry.task, entry.placement, (
                    key, FAILED, "worker_lost", None, None, None,
                    f"the runner process running this task died ({how})", None, None, "",
                    now, now))
        self._pool.replace(lane)

    def _expire_callables(self) -> None:
        """Kill the runner of a callable that ignored its timeout alarm (stuck in C code)."""
        now = time.monotonic()
        for key, entry in self._inflight.items():
            if entry.deadline is not None and now >= entry.deadline and key not in self._expired:
                self._expired.add(key)
                self._pool.kill(entry.placement.lane)

    def _record(self, task: Task, placement: Placement | None, r: tuple) -> None:
        state = r[1]
        ensemble = task.ensemble or "tasks"
        if state == SUCCEEDED:
            self._counts.done[ensemble] = self._counts.done.get(ensemble, 0) + 1
        else:
            self._counts.failed[ensemble] = self._counts.failed.get(ensemble, 0) + 1
        cpus = ",".join(map(str, placement.cpus)) if placement else ""
        gpus = ",".join(placement.gpus) if placement else ""
        self._store.add((task.task_id, task.ensemble, 1, state, r[2], r[3], r[4], r[5], r[6],
                         r[7], r[8], r[9], r[10], r[11], self._node.host, cpus, gpus))

    def _learn_duration(self, seconds: float) -> None:
        mean = self._mean_duration
        self._mean_duration = seconds if mean is None else 0.9 * mean + 0.1 * seconds
        self._results_seen += 1
        if self._results_seen % 32 == 1:
            target = _QUEUED_WORK_SECONDS / max(self._mean_duration, 1e-6)
            depth = 1
            while depth * 2 <= min(target, _MAX_DEPTH):
                depth *= 2
            self._slots.depth = depth

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick >= _TICK_SECONDS:
            self._last_tick = now
            self._store.maybe_flush()
            self._progress.update(self._counts)


def _command(task: Task) -> str | list[str]:
    if not task.args:
        return task.executable  # type: ignore[return-value]
    if isinstance(task.executable, str):
        return task.executable + " " + " ".join(shlex.quote(str(a)) for a in task.args)
    return [*task.executable, *(str(a) for a in task.args)]  # type: ignore[misc]
