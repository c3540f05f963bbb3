"""Running one command line as a subprocess: argv, output capture, timeout, termination.

See :func:`~ensemble_launcher.ensemble.programs.command_argv` for when a shell is used.
Every task gets its
own session, so a timeout can stop the whole process group, MPI launchers included:
SIGTERM to the group, then up to ``kill_grace`` seconds for every process of the group to
exit, then SIGKILL. The grace is measured on the group, not its leader: a ``/bin/sh -c``
leader dies of SIGTERM at once while the program it runs may still be in its handler.
The same sequence, with another first signal, stops a dead runner's command (the pool)
and a child of the tree (its master): :func:`stop_groups`, or :func:`begin_stop` and
:func:`sweep_stops` in a loop that cannot wait; :func:`stop_processes` for processes of
ours that lead no group (a pool's runners). This is our one termination policy.

The command's leader is reaped with ``wait4``, which also gives its resource use: its own
and that of the descendants it waited for (an MPI launcher: mpiexec or srun, and what it
waited for on this node). Linux carries the RSS of the process that starts a command into
that command's peak across exec, so a command's ``max_rss`` is never below its runner's.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from ensemble_launcher.ensemble.programs import command_argv
from ensemble_launcher.states import Usage

#: Process groups of the commands running in this process, for stop_all_groups().
ACTIVE_GROUPS: set[int] = set()

#: The longest single wait asked of poll()/select(): waits are computed again from their
#: deadline, so a longer timeout only waits in steps (poll() takes at most 2**31 ms).
MAX_WAIT_SECONDS = 3600.0


def poll_ms(timeout: float | None) -> int:
    """``timeout`` seconds (None: no limit) as the milliseconds of one zmq/select poll,
    at most MAX_WAIT_SECONDS: the caller's loop waits again for the rest."""
    seconds = MAX_WAIT_SECONDS if timeout is None else min(timeout, MAX_WAIT_SECONDS)
    return math.ceil(max(0.0, seconds) * 1000)


@dataclass(slots=True)
class Completed:
    returncode: int | None
    stdout: str | None
    stderr_tail: str
    timed_out: bool
    launch_error: str | None = None
    usage: Usage | None = None
    """What the command's process tree used, None when it could not be reaped by us."""


def run_command(
    command: str | Sequence[str],
    *,
    env: Mapping[str, str] | None,
    cwd: str | None,
    timeout: float | None,
    capture_stdout: bool,
    stdout_file: str | None,
    stderr_file: str | None,
    tail_bytes: int,
    kill_grace: float,
    announce: Callable[[int], None] | None = None,
) -> Completed:
    """Run ``command`` to its end or its timeout. ``announce`` is told the command's
    process group once it started, and 0 once it ended, so that another process can stop
    the group if we die."""
    argv = command_argv(command)
    opened: list[IO[bytes]] = []
    try:
        if capture_stdout:
            stdout: int | IO[bytes] = subprocess.PIPE
        elif stdout_file:
            stdout = _open_output(stdout_file, cwd, opened)
        else:
            stdout = subprocess.DEVNULL
        stderr = _open_output(stderr_file, cwd, opened) if stderr_file else subprocess.PIPE
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                env=env, cwd=cwd, start_new_session=True)
    except OSError as exc:
        name = exc.filename if exc.filename else argv[0]
        return Completed(None, None, "", False, f"{name}: {exc.strerror or exc}")
    except (ValueError, TypeError) as exc:
        return Completed(None, None, "", False, f"{argv[0]}: cannot be started: {exc}")
    finally:
        for f in opened:
            f.close()
    ACTIVE_GROUPS.add(proc.pid)
    if announce is not None:
        announce(proc.pid)
    child = _Leader(proc)
    try:
        out, err, timed_out = _drain(child, timeout, tail_bytes, kill_grace)
    finally:
        ACTIVE_GROUPS.discard(proc.pid)
        if announce is not None:
            announce(0)
    if stderr_file:
        err = _file_tail(stderr_file, cwd, tail_bytes)
    return Completed(proc.returncode, out, err, timed_out, usage=child.usage)


class _Leader:
    """A command's leader, reaped with ``wait4`` instead of ``Popen.wait`` so that its
    resource use is kept; ``proc.returncode`` is set as ``Popen`` sets it."""

    __slots__ = ("proc", "usage")

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.usage: Usage | None = None

    def poll(self) -> int | None:
        self._reap(os.WNOHANG)
        return self.proc.returncode

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever), as ``Popen.wait`` does (a
        blocking wait, or polls at most 50 ms apart); False if it still runs."""
        if timeout is None:
            self._reap(0)
            return True
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while not self._reap(os.WNOHANG):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            delay = min(delay * 2, left, 0.05)
            time.sleep(delay)
        return True

    def _reap(self, flags: int) -> bool:
        proc = self.proc
        if proc.returncode is not None:
            return True
        try:
            pid, status, rusage = os.wait4(proc.pid, flags)
        except ChildProcessError:
            proc.returncode = 0  # reaped by someone else: Popen says 0 then too
            return True
        if pid == 0:
            return False
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.usage = Usage(rusage.ru_utime, rusage.ru_stime, rusage.ru_maxrss * 1024)
        return True


def _open_output(path: str, cwd: str | None, opened: list[IO[bytes]]) -> IO[bytes]:
    full = path if os.path.isabs(path) or not cwd else os.path.join(cwd, path)
    parent = os.path.dirname(full)
    if parent:
        os.makedirs(parent, exist_ok=True)
    f = open(full, "ab")  # noqa: SIM115 - closed by the caller once the child has it
    opened.append(f)
    return f


def _file_tail(path: str, cwd: str | None, tail_bytes: int) -> str:
    full = path if os.path.isabs(path) or not cwd else os.path.join(cwd, path)
    try:
        with open(full, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _drain(child: _Leader, timeout: float | None, tail_bytes: int,
           kill_grace: float) -> tuple[str | None, str, bool]:
    """Read the child's pipes until they close, keeping all of stdout and the tail of
    stderr, and enforce the timeout."""
    proc = child.proc
    deadline = None if timeout is None else time.monotonic() + timeout
    out_chunks: list[bytes] = []
    err = bytearray()
    pipes = [p for p in (proc.stdout, proc.stderr) if p is not None]
    timed_out = False
    with selectors.PollSelector() as sel:
        for pipe in pipes:
            sel.register(pipe.fileno(), selectors.EVENT_READ, pipe)

        def read(wait: float | None) -> bool:
            """Read what the pipes have within ``wait`` seconds; False once all closed."""
            for key, _ in sel.select(wait):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                elif key.data is proc.stdout:
                    out_chunks.append(data)
                else:
                    err.extend(data)
                    if len(err) > 2 * tail_bytes:
                        del err[:-tail_bytes]
            return bool(sel.get_map())

        while sel.get_map():
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                timed_out = True
                break
            read(min(wait, MAX_WAIT_SECONDS) if wait is not None else MAX_WAIT_SECONDS)
        if not timed_out:
            timed_out = not child.wait(
                None if deadline is None else max(0.0, deadline - time.monotonic()))
        if timed_out:
            stop_groups([proc.pid], kill_grace, reap=child.poll)
            child.wait(None)
            while sel.get_map() and read(0):
                pass
    for pipe in pipes:
        pipe.close()
    stdout = b"".join(out_chunks).decode(errors="replace") if proc.stdout is not None else None
    return stdout, bytes(err[-tail_bytes:] if tail_bytes else b"").decode(errors="replace"), \
        timed_out


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group that may be gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_groups(pgids: Sequence[int], grace: float,
                reap: Callable[[], object] | None = None,
                first: int = signal.SIGTERM) -> None:
    """Send ``first`` (SIGTERM) to each process group, give every process in them up to
    ``grace`` seconds in all to exit, then SIGKILL what is left. ``reap`` collects exited
    leaders that are our own children (an unreaped leader keeps its group alive)."""
    for pgid in pgids:
        signal_group(pgid, first)
    for pgid in wait_groups(pgids, grace, reap):
        signal_group(pgid, signal.SIGKILL)


def wait_groups(pgids: Sequence[int], seconds: float,
                reap: Callable[[], object] | None = None) -> list[int]:
    """Wait up to ``seconds`` for every process of the groups to exit; the groups left."""
    deadline = time.monotonic() + seconds
    alive = list(pgids)
    while True:
        if reap is not None:
            reap()
        alive = [g for g in alive if group_alive(g)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


@dataclass(slots=True)
class GroupStop:
    """A process group being stopped without blocking the caller's loop (see
    begin_stop): signalled already, SIGKILL due at ``kill_at`` (monotonic)."""

    pgid: int
    kill_at: float


def begin_stop(pgid: int, grace: float, first: int = signal.SIGTERM) -> GroupStop:
    """stop_groups for a loop that cannot wait: ``first`` now, SIGKILL from sweep_stops
    once ``grace`` is over."""
    signal_group(pgid, first)
    return GroupStop(pgid, time.monotonic() + grace)


def sweep_stops(stops: list[GroupStop]) -> list[GroupStop]:
    """SIGKILL the groups whose grace is over; the stops still under way."""
    now = time.monotonic()
    for stop in stops:
        if stop.kill_at <= now:
            signal_group(stop.pgid, signal.SIGKILL)
    return [s for s in stops if s.kill_at > now and group_alive(s.pgid)]


class OwnProcess(Protocol):
    """A process we started that leads no process group of its own (a pool's runner, a
    ``multiprocessing.Process``): stopped by pid, reaped by ``join``."""

    @property
    def pid(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def kill(self) -> None: ...


def wait_processes(procs: Sequence[OwnProcess], seconds: float) -> None:
    """Wait up to ``seconds`` in all (one deadline, not one per process) for them to exit."""
    deadline = time.monotonic() + seconds
    for proc in procs:
        while proc.is_alive() and (left := deadline - time.monotonic()) > 0:
            proc.join(min(left, MAX_WAIT_SECONDS))


def stop_processes(procs: Sequence[OwnProcess], grace: float,
                   first: int = signal.SIGTERM) -> None:
    """:func:`stop_groups` for processes that lead no group: ``first`` to each one alive,
    up to ``grace`` seconds in all for them to exit, then SIGKILL, and reap them."""
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, first)
    wait_processes(procs, grace)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()


def stop_all_groups(grace: float) -> None:
    """Stop every running command's process group (SIGTERM, grace, SIGKILL)."""
    stop_groups(list(ACTIVE_GROUPS), grace, reap=_reap_children)


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (an unreaped zombie counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
