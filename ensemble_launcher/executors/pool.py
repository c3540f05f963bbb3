"""The warm pool: one pinned runner process per lane (core) of a node, fed in batches.
A lane's runner is forked when the lane gets its first task, so that the node's first
task does not wait for a runner per core; it then stays, warm, for the lane's next ones.

    orchestrator --submit(lane, task)--> per-lane buffer --flush()--> runner pipe
    orchestrator <--wait(): results / dead lanes-- runner pipes + process sentinels

Pipes and process sentinels are waited on together, so a runner that dies is seen at
once. Each runner publishes the process group of the command it runs in shared memory, so
that the command of a runner that died is stopped, not left running unmanaged, and so
that a cancelled command can be stopped while its runner lives on (``stop_command``). A function
is serialized once per run (cloudpickle, keyed by digest) and sent to a runner the first
time that runner needs it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import ExecutorError, LauncherClosedError
from ensemble_launcher.executors.command import (
    GroupStop,
    begin_stop,
    poll_ms,
    stop_groups,
    stop_processes,
    sweep_stops,
    wait_processes,
)
from ensemble_launcher.executors.pickling import pickle_any, pickle_callable
from ensemble_launcher.executors.runner import (
    CALL,
    CANCEL_SIGNAL,
    DEFINE,
    RUN,
    STOP,
    LaneState,
    runner_main,
)
from ensemble_launcher.states import RunResult

if TYPE_CHECKING:
    import zmq

#: Callables kept serialized, by object: past this many, or this many bytes (a new lambda
#: per task), we start afresh; runners keep what they were sent, by digest.
_FUNCTIONS_KEPT = 1024
_FUNCTION_BYTES_KEPT = 64 * 1024 * 1024


@dataclass(slots=True)
class _Lane:
    cpu: int | None
    process: Any = None
    conn: Connection | None = None
    pending: list = field(default_factory=list)
    known: set = field(default_factory=set)
    state: LaneState | None = None

    @property
    def running_group(self) -> int:
        """The process group of the command the runner runs now, 0 when none."""
        return self.state.group.value if self.state is not None else 0


@dataclass(slots=True)
class DeadLane:
    """A runner that died. ``stopped_command``: it was running a command, which we
    stopped (it would otherwise go on unmanaged)."""

    lane: int
    exitcode: int | None
    stopped_command: bool
    running_key: int = -1
    """The task it was running when it died, -1 when none (or unknown)."""


@dataclass(slots=True)
class PoolEvents:
    results: list[RunResult] = field(default_factory=list)
    dead_lanes: list[DeadLane] = field(default_factory=list)


class WarmPool:
    """Runner processes for the lanes ``cpus``; pinned to them when ``pin`` is true; with
    ``usage``, each result says what its task used (CPU time, peak RSS)."""

    def __init__(self, cpus: Sequence[int], *, pin: bool, tail_bytes: int,
                 kill_grace: float, usage: bool = True) -> None:
        self._lanes = [_Lane(cpu if pin else None) for cpu in cpus]
        self._tail_bytes = tail_bytes
        self._kill_grace = kill_grace
        self._usage = usage
        self._ctx = multiprocessing.get_context("fork")
        self._functions: dict[int, tuple[Callable, bytes, bytes]] = {}
        self._function_bytes = 0
        self._waitables: dict[int, tuple[int, bool]] = {}
        self._poller: zmq.Poller | None = None
        self._polled_extra: tuple = ()
        self._stopping: list[GroupStop] = []
        """Process groups being stopped: dead runners' commands, cancelled commands."""
        self._closed = False

    def __enter__(self) -> WarmPool:
        self.start()
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(cancel=exc_type is not None)

    def start(self) -> None:
        if self._closed:
            raise LauncherClosedError("the pool was closed")

    def _started(self, index: int) -> _Lane:
        """Lane ``index``, its runner forked if this is its first task."""
        lane = self._lanes[index]
        if lane.process is None:
            self._spawn(index)
        return lane

    def _spawn(self, index: int) -> None:
        lane = self._lanes[index]
        parent, child = self._ctx.Pipe(duplex=True)
        lane.state = LaneState(self._ctx)
        proc = self._ctx.Process(target=runner_main, name=f"el-runner-{index}", daemon=True,
                                 args=(child, lane.cpu, self._tail_bytes, self._kill_grace,
                                       lane.state, self._usage))
        try:
            proc.start()
        except OSError as exc:
            raise ExecutorError(f"cannot start runner process for lane {index}: {exc}") from exc
        child.close()
        lane.process, lane.conn, lane.known = proc, parent, set()
        self._waitables[parent.fileno()] = (index, False)
        self._waitables[proc.sentinel] = (index, True)
        self._poller = None

    # -- submitting --------------------------------------------------------------------------

    def submit_call(self, lane_index: int, key: int, task: Task, env: dict | None,
                    capture: bool) -> None:
        lane = self._started(lane_index)
        digest = self._define(task.executable, lane)
        lane.pending.append((CALL, key, digest, task.args, task.kwargs, env, task.run_dir,
                             task.timeout, capture))

    def submit_run(self, lane_index: int, key: int, command: Any, env: dict | None,
                   task: Task, cpus: tuple[int, ...] | None, capture: bool) -> None:
        self._started(lane_index).pending.append(
            (RUN, key, command, env, task.run_dir, task.timeout, cpus, capture,
             task.stdout_file, task.stderr_file))

    def _define(self, fn: Any, lane: _Lane) -> bytes:
        entry = self._functions.get(id(fn))
        if entry is None:
            entry = (fn, *pickle_callable(fn))
            if len(self._functions) >= _FUNCTIONS_KEPT or \
                    self._function_bytes > _FUNCTION_BYTES_KEPT:
                self._functions.clear()
                self._function_bytes = 0
            self._functions[id(fn)] = entry
            self._function_bytes += len(entry[2])
        digest = entry[1]
        if digest not in lane.known:
            lane.known.add(digest)
            lane.pending.append((DEFINE, digest, entry[2]))
        return digest

    def flush(self) -> None:
        for lane in self._lanes:
            if lane.pending:
                batch, lane.pending = lane.pending, []
                data = pickle_any(batch)
                # A dead runner's pipe refuses the batch; its sentinel reports the death.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    lane.conn.send_bytes(data)  # type: ignore[union-attr]

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, timeout: float | None,
             extra: tuple[zmq.Socket | int, ...] = ()) -> PoolEvents:
        """Wait for runner results, runner deaths, or input on the ``extra`` sockets (the
        caller reads those itself)."""
        self._sweep_stops()
        if self._poller is None or extra != self._polled_extra:
            import zmq

            self._poller = zmq.Poller()
            for fd in self._waitables:
                self._poller.register(fd, zmq.POLLIN)
            for sock in extra:
                self._poller.register(sock, zmq.POLLIN)
            self._polled_extra = extra
        ready = [obj for obj, _ in self._poller.poll(poll_ms(timeout))]
        events = PoolEvents()
        for obj in ready:
            lane = self._waitables.get(obj) if isinstance(obj, int) else None
            if lane is not None and not lane[1]:
                self._drain(self._lanes[lane[0]].conn, events)  # type: ignore[arg-type]
        for obj in ready:
            lane = self._waitables.get(obj) if isinstance(obj, int) else None
            if lane is not None and lane[1]:
                events.dead_lanes.append(self._reap(lane[0]))
        return events

    @staticmethod
    def _drain(conn: Connection, events: PoolEvents) -> None:
        try:
            while conn.poll():
                events.results.extend(map(RunResult._make, pickle.loads(conn.recv_bytes())))
        except (EOFError, OSError):
            pass  # the runner is gone; its sentinel reports it

    def _reap(self, index: int) -> DeadLane:
        lane = self._lanes[index]
        lane.process.join(0.5)
        self._waitables.pop(lane.conn.fileno(), None)  # type: ignore[union-attr]
        self._waitables.pop(lane.process.sentinel, None)
        self._poller = None
        lane.conn.close()  # type: ignore[union-attr]
        lane.pending = []
        running = lane.state.running.value if lane.state is not None else -1
        return DeadLane(index, lane.process.exitcode, self._stop_orphan(lane), running)

    def _stop_orphan(self, lane: _Lane) -> bool:
        """Start stopping the command a dead runner left running (SIGTERM now, SIGKILL
        after kill_grace, without blocking the loop); True if there was one."""
        pgid = lane.running_group
        if not pgid:
            return False
        lane.state.group.value = 0  # type: ignore[union-attr]
        self._stopping.append(begin_stop(pgid, self._kill_grace))
        return True

    def running_key(self, index: int) -> int:
        """The key of the task lane ``index``'s runner runs now, -1 when none."""
        state = self._lanes[index].state
        return state.running.value if state is not None else -1

    def cancel_queued(self, index: int, key: int) -> None:
        """Lane ``index``'s runner skips task ``key`` if it has not started it."""
        state = self._lanes[index].state
        if state is not None:
            state.cancel(key)

    def stop_command(self, index: int) -> bool:
        """Start stopping the command lane ``index`` runs now (SIGTERM, kill_grace,
        SIGKILL, without blocking; the runner reports its result and goes on); False
        when it runs none. The caller must know which task that is: the runner may have
        moved on to the next one queued behind while a result is on its way."""
        pgid = self._lanes[index].running_group
        if not pgid:
            return False
        self._stopping.append(begin_stop(pgid, self._kill_grace))
        return True

    def _sweep_stops(self) -> None:
        if self._stopping:
            self._stopping = sweep_stops(self._stopping)

    def replace(self, index: int) -> None:
        """Start a fresh runner for a lane whose runner died or was killed."""
        if not self._closed:
            self._spawn(index)

    def kill(self, index: int) -> None:
        """Kill a runner (e.g. a callable past its timeout); wait() then reports it dead."""
        proc = self._lanes[index].process
        if proc is not None and proc.is_alive():
            proc.kill()

    # -- closing -----------------------------------------------------------------------------

    def close(self, cancel: bool = False) -> None:
        """Stop every runner. Normally: STOP after its queued work, then CANCEL_SIGNAL after
        the grace period. With ``cancel``: CANCEL_SIGNAL at once, so each runner stops its
        running command (SIGTERM, grace, SIGKILL to the task's group). SIGKILL is the last
        resort; a command whose runner we had to kill is stopped here."""
        if self._closed:
            return
        self._closed = True
        procs = [lane.process for lane in self._lanes if lane.process is not None]
        for lane in self._lanes:
            if lane.conn is not None and not lane.conn.closed:
                with contextlib.suppress(OSError):
                    lane.conn.send_bytes(pickle.dumps([(STOP,)]))
        if not cancel:
            wait_processes(procs, self._kill_grace)
        stop_processes(procs, self._kill_grace + 1.0, CANCEL_SIGNAL)
        orphans = [lane.running_group for lane in self._lanes if lane.running_group]
        orphans += [o.pgid for o in self._stopping]
        if orphans:
            stop_groups(orphans, self._kill_grace)
        for lane in self._lanes:
            if lane.conn is not None and not lane.conn.closed:
                lane.conn.close()
        self._waitables.clear()
