"""The loop that runs tasks on one node (``main.w0``; at nlevels=0, the whole run).

    Feed --take()--> backlog --NodeSlots.place()--> WarmPool.submit --flush-->
        runners (one per core) --results--> NodeWorker._collect --> ResultSink
    Feed --take_cancels()--> NodeWorker._cancel: drop from the backlog, or stop the task

The source is the task stream itself at nlevels=0, or the link to the parent master in a
tree; the sink is the run store, or that same link. Tasks are taken only while lanes
have room, so memory holds what is in flight plus a small backlog of tasks waiting for
cores or GPUs, never the ensemble. How many tasks wait on a lane (``depth``) follows the
observed task duration: enough to keep about 20 ms of work queued per core, one when
tasks are long.

A cancelled task that waits in the backlog is dropped; one that runs is stopped (a
command: its process group, SIGTERM, kill_grace, SIGKILL; a callable: its runner is
killed and replaced). A task queued behind another in its lane's runner cannot be pulled
back: it is stopped once it heads its lane, and its result, whenever it comes, is
reported cancelled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.loader import requirement_of
from ensemble_launcher.ensemble.programs import command_argv, command_line
from ensemble_launcher.errors import ResourceError
from ensemble_launcher.executors import PoolEvents, WarmPool
from ensemble_launcher.executors.mpi import MpiLaunch, split_per_rank
from ensemble_launcher.executors.pool import DeadLane
from ensemble_launcher.monitor.profiles import NoTimeline, Timeline
from ensemble_launcher.orchestrator.collector import spared_collector
from ensemble_launcher.orchestrator.feeds import CANCELLED_MESSAGE, Feed
from ensemble_launcher.orchestrator.signals import (
    died_of_stop_signal,
    interrupted,
    stop_signal_seen,
)
from ensemble_launcher.resources import NodeResources, check_requirements
from ensemble_launcher.resources.sampling import NodeSampler
from ensemble_launcher.scheduler import NodeSlots, Placement, needs_exclusive
from ensemble_launcher.states import (
    CANCELLED,
    FAILED,
    LOST,
    TIMED_OUT,
    NodeSample,
    RunResult,
    never_ran,
)

_QUEUED_WORK_SECONDS = 0.02
_MAX_DEPTH = 512
_MAX_BACKLOG = 256
_STARVATION_SECONDS = 1.0
#: Tasks at least this long (on average) get no prefetch: a refill's round trip is then
#: under 2% of a task.
_LONG_TASK_SECONDS = 0.05
TICK_SECONDS = 0.1
#: Seconds a task killed by SIGTERM or SIGINT before this node saw a stop signal waits for
#: one: a batch system signals every process of the job at once, and the task may die and
#: be reported before our own signal is handled. Not run if it comes, failed if not.
_STOP_SIGNAL_WAIT = 1.0


class ResultSink(Protocol):
    def record(self, key: int, task: Task, result: RunResult, cpus: str, gpus: str) -> None:
        """One finished task: ``result`` is the runner's result."""

    def held(self, key: int, cpus: list[int], gpus: list[str]) -> None:
        """A reservation for a multi-node task is in place."""

    def after_turn(self) -> None:
        """Called once per loop turn, after a round of results: send or write them."""

    def every_tick(self) -> None:
        """Called about ten times a second: report."""

    def report_running(self, by_ensemble: dict[str, int]) -> None:
        """Called about ten times a second with the tasks running now (started, not queued),
        per ensemble."""

    def report_started(self, keys: list[int]) -> None:
        """Called with a running report: the tasks it is the first to see running (each
        key once; a task that ends between two reports is never named)."""

    def record_samples(self, samples: list[NodeSample]) -> None:
        """Samples of this node's CPU and memory use: sent or written with the results."""

    def final_flush(self) -> None:
        """Called once, when the node stops: everything not sent or written yet."""


class _Dying(NamedTuple):
    key: int
    task: Task
    placement: Placement
    result: RunResult
    until: float


class Reservation(Task):
    """A node's share of a multi-node task: placed like a task, run by nothing; the
    task itself runs later in it (see orchestrator.gangs)."""

    __slots__ = ()


class _Waiting(NamedTuple):
    """A task in the backlog, waiting for room since ``since`` (monotonic)."""

    key: int
    task: Task
    since: float


@dataclass(slots=True)
class _InFlight:
    task: Task
    placement: Placement
    deadline: float | None


class NodeWorker:
    def __init__(self, source: Feed[Task], sink: ResultSink, node: NodeResources,
                 pool: WarmPool, *, gpu_selector: str, capture_stdout: bool, pin: bool,
                 kill_grace: float, check_each_task: bool = False,
                 timeline: Timeline | NoTimeline | None = None,
                 mpi: Callable[[], MpiLaunch] | None = None,
                 sampler: NodeSampler | None = None, in_block: bool = False,
                 tick_seconds: float = TICK_SECONDS) -> None:
        self._source = source
        self._sink = sink
        self._node = node
        self._pool = pool
        self._gpu_selector = gpu_selector
        self._capture = capture_stdout
        self._pin = pin
        self._kill_grace = kill_grace
        self._check_each = check_each_task
        self._slots = NodeSlots(node.cpus, node.gpus, prefer_our_cpu=pin)
        self._inflight: dict[int, _InFlight] = {}
        self._lanes: dict[int, deque[int]] = {}
        """Per lane, the keys submitted to its runner, in the order it runs them: the
        first one is running, the others are queued behind it."""
        self._backlog: deque[_Waiting] = deque()
        self._mean_duration: float | None = None
        self._results_seen = 0
        self._expired: set[int] = set()
        self._dying: list[_Dying] = []
        self._shapes: dict[tuple, str | None] = {}
        self._timeline = timeline or NoTimeline()
        self._make_mpi = mpi
        self._mpi: MpiLaunch | None = None
        self._held: dict[int, Placement] = {}
        self._cancelled: set[int] = set()
        self._skip_posted: set[int] = set()
        """Cancelled keys their runner was told to skip."""
        """Keys cancelled while in a lane: their results are reported cancelled."""
        self._stopping: set[int] = set()
        """Of those, the ones whose stop was started (signal sent or runner killed)."""
        self._last_tick = 0.0
        self._running_due = False
        self._heads: dict[int, int] = {}
        """Per lane, the key at its head when we last reported: a new one has started."""
        self._sampler = sampler
        """Samples this node's CPU and memory: on the first tick, then each interval (asked
        on ticks only), and when the node stops."""
        self._in_block = in_block
        """We run in a provider's block: the batch system's stop signal ends our job, not
        the run, so the tasks it kills run again elsewhere."""
        self._tick_seconds = tick_seconds
        """How often we report what runs (and sample, and flush): a tenth of a second; less
        often for a simulated node that shares its process with thousands."""
        self.stopped = False

    @property
    def running(self) -> int:
        return len(self._inflight)

    def running_by_ensemble(self) -> dict[str, int]:
        """Tasks started and not finished, per ensemble: the first unreported task of each
        lane (a lane runs its tasks one after another; those behind it are queued)."""
        by: dict[str, int] = {}
        for keys in self._lanes.values():
            if keys:
                name = self._inflight[keys[0]].task.ensemble or "tasks"
                by[name] = by.get(name, 0) + 1
        return by

    def _newly_started(self) -> list[int]:
        """The tasks at the head of a lane that no report named yet: a look at each lane,
        nothing per task. A cancelled one is left out: it is being stopped, or skipped."""
        started = []
        heads = self._heads
        for lane, keys in self._lanes.items():
            if keys and heads.get(lane) != keys[0]:
                key = heads[lane] = keys[0]
                if key not in self._cancelled:
                    started.append(key)
        return started

    def _submitted(self, key: int, entry: _InFlight) -> None:
        """A task handed to its lane's runner, which runs them in the order they came."""
        self._inflight[key] = entry
        self._lanes.setdefault(entry.placement.lane, deque()).append(key)

    def _finished(self, key: int) -> _InFlight:
        """Forget a task whose result came: almost always the head of its lane."""
        entry = self._inflight.pop(key)
        keys = self._lanes[entry.placement.lane]
        if keys[0] == key:
            keys.popleft()
        else:
            keys.remove(key)
        return entry

    def _report_running(self) -> None:
        """Once per tick, right after dispatch: a tick follows a round of results, when a
        lane whose task just ended has not yet started its next one."""
        if self._running_due:
            self._running_due = False
            self._sink.report_running(self.running_by_ensemble())
            started = self._newly_started()
            if started:
                self._sink.report_started(started)

    def run(self) -> None:
        with spared_collector():
            while self.dispatch():
                self.settle(self._pool.wait(self.wait_timeout(), self._source.sockets()))
            self.finish()

    def dispatch(self) -> bool:
        """The first half of a loop turn: take messages and tasks, hand tasks out. False
        once nothing is left to do (the source is exhausted and nothing runs)."""
        if self.stopped:
            return False
        mark = self._timeline.mark
        self._source.pump()
        mark("receive")
        self._cancel(self._source.take_cancels())
        self._follow_orders()
        self._fill()
        self._report_running()
        mark("dispatch")
        return bool(self._inflight or self._backlog or self._held or self._dying) or \
            not self._source.exhausted

    def settle(self, events: PoolEvents) -> None:
        """The second half of a loop turn, after the wait: the results and dead lanes the
        pool reported, stops, timeouts, then what the sink sends."""
        mark = self._timeline.mark
        mark("wait")
        self._collect(events)
        self._record_dying()
        self._stop_cancelled()
        self._expire_callables()
        mark("collect")
        self._sink.after_turn()
        self._tick()
        mark("report")

    def finish(self) -> None:
        """Once, when the loop ends: the last results and samples go out."""
        self._record_dying(at_end=True)
        if self._sampler is not None:
            self._sink.record_samples([self._sampler.sample(time.monotonic())])
        self._sink.final_flush()

    # -- dispatch ----------------------------------------------------------------------------

    def _fill(self) -> None:
        if self._source.halted:
            self._backlog.clear()
        for _ in range(len(self._backlog)):
            waiting = self._backlog.popleft()
            key, task, _ = waiting
            placement = self._slots.place(task)
            if placement is None:
                self._backlog.append(waiting)
            else:
                self._dispatch(key, task, placement)
        while len(self._backlog) < _MAX_BACKLOG and not self._starving() and \
                self._slots.has_room():
            item = self._source.take()
            if item is None:
                break
            key, task = item
            if self._check_each and not self._fits(key, task):
                continue
            placement = self._slots.place(task)
            if placement is None:
                self._backlog.append(_Waiting(key, task, time.monotonic()))
                if not needs_exclusive(task):
                    break
            else:
                self._dispatch(key, task, placement)
        self._pool.flush()
        self._source.want(self._slots.room() + self._prefetch() - len(self._backlog))

    def _prefetch(self) -> int:
        """Tasks to hold beyond the free room: enough to hide the parent's round trip
        behind short tasks; none while their length is unknown or long, where that trip is
        nothing next to a task, and a task held here could not be overtaken by one of a
        higher priority that the parent gets later."""
        mean = self._mean_duration
        if mean is None or mean >= _LONG_TASK_SECONDS:
            return 0
        return self._slots.capacity()

    def _starving(self) -> bool:
        """True once a waiting task has waited long enough that new work must not overtake
        it: lanes then drain until it fits."""
        return bool(self._backlog) and \
            time.monotonic() - self._backlog[0].since > _STARVATION_SECONDS

    def _fits(self, key: int, task: Task) -> bool:
        """Check a task from an unsized stream (not checked before the run), once per shape."""
        shape = (task.nnodes, task.ncpus, task.ngpus, tuple(task.cpu_affinity),
                 tuple(task.gpu_affinity), task.is_callable)
        problem = self._shapes.get(shape, "")
        if problem == "":
            try:
                check_requirements([requirement_of(task, "this task")], [self._node])
                problem = None
            except ResourceError as exc:
                problem = str(exc)
            self._shapes[shape] = problem
        if problem is None:
            return True
        self._sink.record(key, task, _never_ran(key, FAILED, "launch", problem), "", "")
        return False

    def _follow_orders(self) -> None:
        for order, key, task in self._source.take_orders():
            placement = self._held.pop(key, None)
            if placement is None:
                if order == "release":
                    self._drop_backlogged(key)
                continue
            if order == "run" and task is not None:
                self._pool.submit_run(placement.lane, key, task.executable,
                                      dict(task.env) if task.env else None, task,
                                      placement.cpus if self._pin else None, self._capture)
                self._submitted(key, _InFlight(task, placement, None))
            else:
                self._slots.release(placement)

    def _dispatch(self, key: int, task: Task, placement: Placement) -> None:
        if isinstance(task, Reservation):
            self._held[key] = placement
            self._sink.held(key, list(placement.cpus), list(placement.gpus))
            return
        env = dict(task.env) if task.env else None
        if task.ppn > 1 and not task.is_callable:
            self._dispatch_mpi(key, task, placement, env)
            return
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
            self._pool.submit_run(placement.lane, key, command_line(task.executable, task.args),
                                  env, task, cpus, self._capture)
        self._submitted(key, _InFlight(task, placement, deadline))

    def _dispatch_mpi(self, key: int, task: Task, placement: Placement,
                      env: dict | None) -> None:
        """A task with ppn > 1: its ranks start under mpiexec/srun, each bound to its share
        of the placement's cores and GPUs."""
        if self._mpi is None:
            if self._make_mpi is None:
                raise RuntimeError("an MPI task reached a node worker without an MPI launcher")
            self._mpi = self._make_mpi()
        cpus = split_per_rank(placement.cpus, task.ppn) if self._pin else []
        gpus = split_per_rank(placement.gpus, task.ppn)
        argv = command_argv(command_line(task.executable, task.args))
        command = self._mpi.command(argv, [self._node.host], task.ppn, cpus, gpus, local=True)
        self._pool.submit_run(placement.lane, key, command, env, task,
                              placement.cpus if self._pin else None, self._capture)
        self._submitted(key, _InFlight(task, placement, None))

    # -- results -----------------------------------------------------------------------------

    # -- cancelling --------------------------------------------------------------------------

    def _cancel(self, keys: list[int]) -> None:
        """A task in the backlog is dropped and reported cancelled; one in a lane is
        stopped (see _stop_cancelled); an unknown key (the task ended) is ignored."""
        for key in keys:
            backlogged = self._drop_backlogged(key)
            if backlogged is not None:
                self._sink.record(key, backlogged, _never_ran(key, CANCELLED, "cancelled",
                                                              CANCELLED_MESSAGE), "", "")
            elif key in self._inflight:
                self._cancelled.add(key)
        if keys:
            self._stop_cancelled()

    def _drop_backlogged(self, key: int) -> Task | None:
        for i, (waiting, task, _) in enumerate(self._backlog):
            if waiting == key:
                del self._backlog[i]
                return task
        return None

    def _stop_cancelled(self) -> None:
        """Each cancelled task in a lane: its runner is told to skip it, which it does if
        it has not started it (and reports it cancelled); once the runner says it runs
        that task, a command's process group is stopped (the runner stays), a callable's
        runner is killed (_lane_died reports it and puts the tasks behind it back)."""
        for key in self._cancelled - self._stopping:
            entry = self._inflight[key]
            lane = entry.placement.lane
            if key not in self._skip_posted:
                self._skip_posted.add(key)
                self._pool.cancel_queued(lane, key)
            if self._pool.running_key(lane) != key:
                continue
            if entry.task.is_callable:
                self._pool.kill(lane)
                self._stopping.add(key)
            elif self._pool.stop_command(lane):
                self._stopping.add(key)

    def _as_cancelled(self, key: int, result: RunResult) -> RunResult:
        self._cancelled.discard(key)
        self._stopping.discard(key)
        self._skip_posted.discard(key)
        return result._replace(state=CANCELLED, reason="cancelled", value=None,
                               exception=CANCELLED_MESSAGE)

    def wait_timeout(self) -> float:
        """How long the pool may wait before the next turn is due."""
        if self._source.has_pending:
            return 0.001
        timeout = self._tick_seconds
        now = time.monotonic()
        for entry in self._inflight.values():
            if entry.deadline is not None:
                timeout = min(timeout, max(0.0, entry.deadline - now))
        return timeout

    def _collect(self, events: PoolEvents) -> None:
        for result in events.results:
            key = result.key
            entry = self._finished(key)
            self._slots.release(entry.placement)
            self._record(key, entry.task, entry.placement, result)
            self._learn_duration(result.end - result.start)
        for dead in events.dead_lanes:
            self._lane_died(dead)

    def _lane_died(self, dead: DeadLane) -> None:
        """The first unreported task of the lane was running. A callable fails (or times
        out, if we killed it for that): it was the runner. A command was stopped by the
        pool and is lost, not failed: the runner's death is the node's fault, so it runs
        again under node_loss_retries. Tasks queued behind it never started: they go back
        to the front of the backlog, in their order."""
        keys = self._lanes.pop(dead.lane, deque())
        running = dead.running_key
        if running in keys:
            while keys[0] != running:
                keys.rotate(-1)
        entries = [(key, self._inflight.pop(key)) for key in keys]
        for _, entry in entries:
            self._slots.release(entry.placement)
        if entries:
            key, entry = entries[0]
            self._record(key, entry.task, entry.placement,
                         self._runner_death_result(key, entry.task, dead))
        behind = [(key, entry) for key, entry in entries[1:] if key not in self._cancelled]
        for key, entry in entries[1:]:
            if key in self._cancelled:
                self._record(key, entry.task, entry.placement,
                             _never_ran(key, CANCELLED, "cancelled", CANCELLED_MESSAGE))
        now = time.monotonic()
        self._backlog.extendleft(_Waiting(key, entry.task, now)
                                 for key, entry in reversed(behind))
        self._pool.replace(dead.lane)

    def _runner_death_result(self, key: int, task: Task, dead: DeadLane) -> RunResult:
        if key in self._expired:
            self._expired.discard(key)
            return _never_ran(key, TIMED_OUT, "timeout",
                              f"TimeoutError: task exceeded its timeout of {task.timeout} s "
                              "and its runner process was killed")
        how = (f"killed by signal {-dead.exitcode}"
               if dead.exitcode is not None and dead.exitcode < 0
               else f"exit status {dead.exitcode}")
        if task.is_callable:
            return _never_ran(key, FAILED, "worker_lost",
                              f"the runner process running this task died ({how})")
        stopped = "; its command was stopped" if dead.stopped_command else ""
        return _never_ran(key, LOST, "worker_lost",
                          f"the runner process that started this command died ({how}){stopped}")

    def _expire_callables(self) -> None:
        """Kill the runner of a callable that ignored its timeout alarm (stuck in C code)."""
        now = time.monotonic()
        for key, entry in self._inflight.items():
            if entry.deadline is not None and now >= entry.deadline and key not in self._expired:
                self._expired.add(key)
                self._pool.kill(entry.placement.lane)

    def _record(self, key: int, task: Task, placement: Placement, result: RunResult) -> None:
        if key in self._cancelled:
            result = self._as_cancelled(key, result)
        elif died_of_stop_signal(result):
            if not self._stopping_now():
                self._dying.append(_Dying(key, task, placement, result,
                                          time.monotonic() + _STOP_SIGNAL_WAIT))
                return
            result = self._stopped(result)
        self._sink.record(key, task, result, placement.cpus_text, placement.gpus_text)

    def _stopping_now(self) -> bool:
        return stop_signal_seen() or self._source.halted

    def _stopped(self, result: RunResult) -> RunResult:
        """A task the stop signal killed: not run, since the run stops; or, in a block
        whose job the batch system stops while the run goes on, lost: it runs again in
        another block, and our master gives us no more tasks."""
        if self._in_block and not self._source.halted:
            return result._replace(
                state=LOST, reason="block_stopped", value=None, traceback=None,
                exception=f"its block's batch job was stopped ({result.exception})")
        return interrupted(result)

    def _record_dying(self, *, at_end: bool = False) -> None:
        """Record the tasks killed by a stop signal that waited for ours: not run if it
        came (the job is stopping), as they ended once it did not within
        _STOP_SIGNAL_WAIT (or when we stop)."""
        stopping, now = self._stopping_now(), time.monotonic()
        waiting = []
        for dying in self._dying:
            if stopping or at_end or now >= dying.until:
                result = self._stopped(dying.result) if stopping else dying.result
                self._sink.record(dying.key, dying.task, result, dying.placement.cpus_text,
                                  dying.placement.gpus_text)
            else:
                waiting.append(dying)
        self._dying = waiting

    def _learn_duration(self, seconds: float) -> None:
        """Size the lanes' queues from the mean task duration: every 32 results, and at
        once after a task longer than the queued work we aim for. Never from one result:
        a first no-op would make this node ask for hundreds of tasks, long ones among
        them, that other nodes then never get."""
        mean = self._mean_duration
        self._mean_duration = seconds if mean is None else 0.9 * mean + 0.1 * seconds
        self._results_seen += 1
        if self._results_seen % 32 == 0 or (seconds > _QUEUED_WORK_SECONDS
                                            and self._slots.depth > 1):
            target = _QUEUED_WORK_SECONDS / max(self._mean_duration, 1e-6)
            depth = 1
            while depth * 2 <= min(target, _MAX_DEPTH):
                depth *= 2
            self._slots.depth = depth

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick >= self._tick_seconds:
            self._last_tick = now
            self._running_due = True
            if self._sampler is not None and self._sampler.due(now):
                self._sink.record_samples([self._sampler.sample(now)])
            self._sink.every_tick()


def _never_ran(key: int, state: str, reason: str, message: str) -> RunResult:
    return never_ran(state, reason, message, time.time())._replace(key=key)
