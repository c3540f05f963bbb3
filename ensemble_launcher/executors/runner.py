"""The loop of one warm runner process, pinned to one core (a "lane").

    master --[batch of DEFINE/CALL/RUN/STOP]--> runner --[batch of results]--> master

A batch is run in order. Results are sent back when the batch ends, every 64 results, or
as soon as 2 ms have passed since the last send: no-op tasks travel in batches, the lane
is refilled while it still works (a sliding window, not a ping-pong), and a long task's
result is never held back behind the next one. A function arrives once
(DEFINE, cloudpickle, keyed by digest) and is reused by every CALL that names it.

A result is a :class:`~ensemble_launcher.states.RunResult`, sent as a plain tuple (a
NamedTuple pickles by its class, five times slower; the pool rebuilds it); ``value`` is
the pickled return value, or the pickled exception a callable raised (so that a client of
a cluster can raise it again). An ``async def`` callable runs to its end in an event loop
of its own.

With resource accounting on (``LauncherConfig.resource_usage``), each result carries what
its task used (:class:`_Meter`): for a command, the ``wait4`` rusage of its process tree;
for a callable, the runner's CPU time for the call and the runner's peak RSS during it
(which includes the interpreter's own, some tens of MB).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import pickle
import resource
import signal
import time
import traceback
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from ensemble_launcher.executors.command import run_command, stop_all_groups
from ensemble_launcher.executors.pickling import pickle_any
from ensemble_launcher.states import (
    CANCELLED,
    FAILED,
    LOST,
    SUCCEEDED,
    TIMED_OUT,
    UNMEASURED,
    RunResult,
    Usage,
)

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


#: A Usage's fields in its order.
_Used = tuple[float | None, float | None, int | None]


class _Meter:
    """What a task used, as the runner measures it.

    A callable's CPU is the runner's (``RUSAGE_SELF``: precise, where ``RUSAGE_THREAD``
    moves in scheduler ticks, and threads the callable starts count) from the end of the
    previous call to the end of this one, its return value pickled: ``getrusage`` costs a
    runner about 2 us, so consecutive calls share one snapshot, and each call also counts
    the runner's own work on it between the two (about 2 us). Whatever else the runner
    does (a batch received or sent, a function loaded, a command) starts afresh
    (``lapse``). Its peak RSS is the runner's high-water mark (VmHWM) during the call,
    which the runner's own RSS is part of: Linux resets the mark to the current RSS when
    "5" is written to ``/proc/self/clear_refs``, which we do after a call that raised it
    (rarely: a no-op call does not). A call that did not raise the mark reports it as it
    stands, which may be what the runner held when an earlier call ended. Where
    ``clear_refs`` cannot be written, the mark is the runner's peak so far.

    Before a command starts, the mark is reset as well: Linux carries it into the
    command's peak (see ``executors.command``)."""

    __slots__ = ("_before", "_clear_refs", "_chained")

    def __init__(self) -> None:
        try:
            self._clear_refs: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._clear_refs = None
        self._before = _RUSAGE(_SELF)
        self._chained = False
        self.reset_peak()

    def reset_peak(self) -> None:
        if self._clear_refs is not None:
            try:
                os.write(self._clear_refs, b"5")
            except OSError:
                self._clear_refs = None

    def lapse(self) -> None:
        """The runner did other work since the last call: the next one starts afresh."""
        self._chained = False

    def before_command(self) -> None:
        self.reset_peak()
        self._chained = False

    def start(self) -> None:
        if not self._chained:
            self._before = _RUSAGE(_SELF)

    def stop(self) -> _Used:
        """The call's :class:`~ensemble_launcher.states.Usage`, as a plain tuple (building
        the record would cost a fifth of the measurement)."""
        after, before = _RUSAGE(_SELF), self._before
        if after.ru_maxrss > before.ru_maxrss:
            self.reset_peak()
        self._before, self._chained = after, True
        return (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                after.ru_maxrss * 1024)

    @staticmethod
    def of_command(usage: Usage | None) -> Usage:
        return usage if usage is not None else UNMEASURED


class _NoMeter:
    """Resource accounting off: nothing measured, None in every result."""

    __slots__ = ()

    def lapse(self) -> None:
        pass

    def before_command(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> _Used:
        return UNMEASURED

    @staticmethod
    def of_command(usage: Usage | None) -> Usage:
        return UNMEASURED


_RUSAGE, _SELF = resource.getrusage, resource.RUSAGE_SELF


def runner_main(conn: Connection, cpu: int | None, tail_bytes: int, kill_grace: float,
                state: LaneState | None = None, usage: bool = False) -> None:
    """Serve batches until STOP or until the pipe closes, publishing what runs in
    ``state``; with ``usage``, measuring what each task uses."""
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
    meter = _Meter() if usage else _NoMeter()
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
        meter.lapse()
        out: list[tuple] = []
        last_send = time.monotonic()
        for item in batch:
            op = item[0]
            if op in (CALL, RUN):
                if state is not None and state.cancel_count.value != seen_cancels:
                    seen_cancels = state.cancel_count.value
                    cancelled = state.cancelled_keys()
                if item[1] in cancelled:
                    out.append(tuple(_skipped(item[1])))
                    continue
                if running is not None:
                    running.value = item[1]
                out.append(tuple(_call(item, functions, meter) if op == CALL else
                                 _run(item, own_affinity, tail_bytes, kill_grace, announce,
                                      meter)))
                if running is not None:
                    running.value = -1
            elif op == DEFINE:
                functions[item[1]] = pickle.loads(item[2])
                meter.lapse()
                continue
            else:
                if out:
                    send(pickle.dumps(out, 5))
                return
            now = time.monotonic()
            if now - last_send >= _FLUSH_EVERY or len(out) >= _FLUSH_COUNT:
                send(pickle.dumps(out, 5))
                meter.lapse()
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


def _call(item: tuple, functions: dict[bytes, Any], meter: _Meter | _NoMeter) -> RunResult:
    _, key, digest, args, kwargs, env, cwd, timeout, capture = item
    fn = functions[digest]
    saved_env = _push_env(env) if env else None
    saved_cwd = os.getcwd() if cwd else None
    buffer = io.StringIO() if capture else None
    start = time.time()
    meter.start()
    try:
        if cwd:
            os.chdir(cwd)
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, min(timeout, _MAX_ALARM_SECONDS))
        with contextlib.redirect_stdout(buffer) if buffer else contextlib.nullcontext():
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):
                import asyncio

                value = asyncio.run(value)
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
        end = time.time()
        blob = None if value is None else pickle_any(value)
        used = meter.stop()
        return RunResult(key, SUCCEEDED, None, None, None, blob, None, None,
                         buffer.getvalue() if buffer else None, "", start, end, *used)
    except _TaskTimeout:
        return RunResult(key, TIMED_OUT, "timeout", None, None, None,
                         f"TimeoutError: task exceeded its timeout of {timeout} s", None,
                         buffer.getvalue() if buffer else None, "", start, time.time(),
                         *meter.stop())
    except BaseException as exc:  # noqa: BLE001 - a task's failure is a result, whatever it is
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        name = type(exc).__qualname__
        module = type(exc).__module__
        if module not in ("builtins", "__main__"):
            name = f"{module}.{name}"
        blob = _dump_exception(exc)
        return RunResult(key, FAILED, "exception", None, None, blob, f"{name}: {exc}", tb,
                         buffer.getvalue() if buffer else None, "", start, time.time(),
                         *meter.stop())
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
         announce: Callable[[int], None] | None, meter: _Meter | _NoMeter) -> RunResult:
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
    meter.before_command()
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
    used = meter.of_command(done.usage)
    if done.timed_out:
        return RunResult(key, TIMED_OUT, "timeout", rc, None, None,
                         f"TimeoutError: task exceeded its timeout of {timeout} s", None, out,
                         tail, start, end, *used)
    if rc == 0:
        return RunResult(key, SUCCEEDED, None, 0, None, None, None, None, out, tail, start, end,
                         *used)
    if rc is not None and rc < 0:
        return RunResult(key, FAILED, "signal", rc, -rc, None, f"killed by {_signal_name(-rc)}",
                         None, out, tail, start, end, *used)
    return RunResult(key, FAILED, "exit_code", rc, None, None, f"exited with status {rc}", None,
                     out, tail, start, end, *used)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
