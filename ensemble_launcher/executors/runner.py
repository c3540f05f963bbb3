"""The loop of one warm runner process, pinned to one core (a "lane").

    master --[batch of DEFINE/CALL/RUN/STOP]--> runner --[batch of results]--> master

A batch is run in order. Results are sent back when the batch ends, every 64 results, or
as soon as 2 ms have passed since the last send: no-op tasks travel in batches, the lane
is refilled while it still works (a sliding window, not a ping-pong), and a long task's
result is never held back behind the next one. A function arrives once
(DEFINE, cloudpickle, keyed by digest) and is reused by every CALL that names it.

A result is a :class:`~ensemble_launcher.states.RunResult`; ``value`` is the pickled return
value, or the pickled exception a callable raised (so that a client of a cluster can raise
it again). An ``async def`` callable runs to its end in an event loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from ensemble_launcher.executors.command import run_command, stop_all_groups
from ensemble_launcher.executors.pickling import pickle_any
from ensemble_launcher.states import CANCELLED, FAILED, LOST, SUCCEEDED, TIMED_OUT, RunResult

DEFINE, CALL, RUN, STOP = 0, 1, 2, 3

#: What tells a runner to stop its command (SIGTERM, kill_grace, SIGKILL to its group) and
#: exit: sent by the pool when it cancels, and by Linux when the runner's parent dies. Not
#: SIGTERM: a batch system signals the whole process group at walltime, and the runners
#: must leave that shutdown to the worker.
CANCEL_SIGNAL = signal.SIGRTMIN + 1

#: Callables may not set an interval timer longer than this (setitimer overflows time_t);
#: a longer timeout never expires within any job anyway.
_MAX_ALARM_SECONDS = 1e9

__all__ = ["CALL", "CANCEL_SIGNAL", "DEFINE", "FAILED", "LOST", "RUN", "STOP", "SUCCEEDED",
           "TIMED_OUT", "LaneState", "runner_main"]

_FLUSH_EVERY = 0.002
_FLUSH_COUNT = 64


class _TaskTimeout(BaseException):
    """Raised inside a callable by SIGALRM when its timeout expires."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _TaskTimeout


class LaneState:
    """What a runner shares with its pool, in shared memory: the process group of the
    command it runs (0 when none), so that the pool can stop it if this runner dies; the
    key of the task it runs (-1 when none), so that a cancel stops the right one; and the
    last keys cancelled, which the runner skips if they have not started."""

    SLOTS = 64

    def __init__(self, ctx: Any) -> None:
        self.group = ctx.RawValue("i", 0)
        self.running = ctx.RawValue("q", -1)
        self.cancel_count = ctx.RawValue("q", 0)
        self.cancels = ctx.RawArray("q", self.SLOTS)

    def cancel(self, key: int) -> None:
        """Skip task ``key`` if it has not started (the runner looks before each task)."""
        self.cancels[self.cancel_count.value % self.SLOTS] = key
        self.cancel_count.value += 1

    def cancelled_keys(self) -> frozenset[int]:
        return frozenset(self.cancels[:min(self.cancel_count.value, self.SLOTS)])


def runner_main(conn: Connection, cpu: int | None, tail_bytes: int, kill_grace: float,
                state: LaneState | None = None) -> None:
    """Serve batches until STOP or until the pipe closes, publishing what runs in
    ``state``."""
    _ignore_group_signals()
    group = None if state is None else state.group

    def on_cancel(signum: int, frame: Any) -> None:
        stop_all_groups(kill_grace)
        if group is not None:
            group.value = 0
        os._exit(128 + signum)

    signal.signal(CANCEL_SIGNAL, on_cancel)
    _die_with_parent()
    signal.signal(signal.SIGALRM, _on_alarm)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    own_affinity = os.sched_getaffinity(0)
    functions: dict[bytes, Any] = {}
    announce = None if group is None else partial(setattr, group, "value")
    recv, send = conn.recv_bytes, conn.send_bytes
    running = None if state is None else state.running
    seen_cancels = 0
    cancelled: frozenset[int] = frozenset()
    while True:
        try:
            batch = pickle.loads(recv())
        except EOFError:
            return
        out: list[RunResult] = []
        last_send = time.monotonic()
        for item in batch:
            op = item[0]
            if op in (CALL, RUN):
                if state is not None and state.cancel_count.value != seen_cancels:
                    seen_cancels = state.cancel_count.value
                    cancelled = state.cancelled_keys()
                if item[1] in cancelled:
                    out.append(_skipped(item[1]))
                    continue
                if running is not None:
                    running.value = item[1]
                out.append(_call(item, functions) if op == CALL else
                           _run(item, own_affinity, tail_bytes, kill_grace, announce))
                if running is not None:
                    running.value = -1
            elif op == DEFINE:
                functions[item[1]] = pickle.loads(item[2])
                continue
            else:
                if out:
                    send(pickle.dumps(out, 5))
                return
            now = time.monotonic()
            if now - last_send >= _FLUSH_EVERY or len(out) >= _FLUSH_COUNT:
                send(pickle.dumps(out, 5))
                out = []
                last_send = now
        if out:
            send(pickle.dumps(out, 5))


def _skipped(key: int) -> RunResult:
    now = time.time()
    return RunResult(key, CANCELLED, "cancelled", None, None, None, "cancelled by a client",
                     None, None, "", now, now)


def _ignore_group_signals() -> None:
    """SIGTERM and SIGINT sent to the whole process group (a batch system at walltime,
    `timeout`, Ctrl-C) are for the worker, which drains and then stops us; a runner that
    died of them would lose its running task. A handler that does nothing, not SIG_IGN:
    commands would inherit SIG_IGN across exec and could no longer be stopped gracefully."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _left_to_the_worker)


def _left_to_the_worker(signum: int, frame: Any) -> None:
    pass


def _die_with_parent() -> None:
    """Ask Linux to cancel this runner if its worker dies, so that no task outlives it."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, CANCEL_SIGNAL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), CANCEL_SIGNAL)


def _call(item: tuple, functions: dict[bytes, Any]) -> RunResult:
    _, key, digest, args, kwargs, env, cwd, timeout, capture = item
    fn = functions[digest]
    saved_env = _push_env(env) if env else None
    saved_cwd = os.getcwd() if cwd else None
    buffer = io.StringIO() if capture else None
    start = time.time()
    try:
        if cwd:
            os.chdir(cwd)
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, min(timeout, _MAX_ALARM_SECONDS))
        with contextlib.redirect_stdout(buffer) if buffer else contextlib.nullcontext():
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
        end = time.time()
        blob = None if value is None else pickle_any(value)
        return RunResult(key, SUCCEEDED, None, None, None, blob, None, None,
                         buffer.getvalue() if buffer else None, "", start, end)
    except _TaskTimeout:
        return RunResult(key, TIMED_OUT, "timeout", None, None, None,
                         f"TimeoutError: task exceeded its timeout of {timeout} s", None,
                         buffer.getvalue() if buffer else None, "", start, time.time())
    except BaseException as exc:  # noqa: BLE001 - a task's failure is a result, whatever it is
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        name = type(exc).__qualname__
        module = type(exc).__module__
        if module not in ("builtins", "__main__"):
            name = f"{module}.{name}"
        return RunResult(key, FAILED, "exception", None, None, _dump_exception(exc),
                         f"{name}: {exc}", tb, buffer.getvalue() if buffer else None, "",
                         start, time.time())
    finally:
        if saved_cwd:
            os.chdir(saved_cwd)
        if saved_env is not None:
            _pop_env(saved_env)


def _dump_exception(exc: BaseException) -> bytes | None:
    """The exception, pickled without its traceback (the text travels beside it); None
    when it cannot be pickled or would not load again (a client then gets a TaskError)."""
    exc.__traceback__ = None
    try:
        blob = pickle_any(exc)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 - any exception may refuse to pickle or load
        return None
    return blob




def _push_env(env: dict[str, str]) -> dict[str, str | None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return saved


def _pop_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _run(item: tuple, own_affinity: set[int], tail_bytes: int, kill_grace: float,
         announce: Callable[[int], None] | None) -> RunResult:
    _, key, command, env, cwd, timeout, cpus, capture, stdout_file, stderr_file = item
    if env:
        env = {**os.environ, **env}
    start = time.time()
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:
            return RunResult(key, FAILED, "launch", None, None, None,
                             f"cannot pin to cpus {sorted(cpus)}: {exc.strerror}", None, None,
                             "", start, time.time())
    try:
        done = run_command(command, env=env, cwd=cwd, timeout=timeout, capture_stdout=capture,
                           stdout_file=stdout_file, stderr_file=stderr_file,
                           tail_bytes=tail_bytes, kill_grace=kill_grace, announce=announce)
    finally:
        if cpus:
            os.sched_setaffinity(0, own_affinity)
    end = time.time()
    if done.launch_error is not None:
        return RunResult(key, FAILED, "launch", None, None, None, done.launch_error, None,
                         None, "", start, end)
    rc = done.returncode
    out, tail = done.stdout, done.stderr_tail
    if done.timed_out:
        return RunResult(key, TIMED_OUT, "timeout", rc, None, None,
                         f"TimeoutError: task exceeded its timeout of {timeout} s", None, out,
                         tail, start, end)
    if rc == 0:
        return RunResult(key, SUCCEEDED, None, 0, None, None, None, None, out, tail, start, end)
    if rc is not None and rc < 0:
        return RunResult(key, FAILED, "signal", rc, -rc, None, f"killed by {_signal_name(-rc)}",
                         None, out, tail, start, end)
    return RunResult(key, FAILED, "exit_code", rc, None, None, f"exited with status {rc}", None,
                     out, tail, start, end)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
