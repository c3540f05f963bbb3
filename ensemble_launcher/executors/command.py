"""Running one command line as a subprocess: argv, output capture, timeout, termination.

See :func:`~ensemble_launcher.ensemble.programs.command_argv` for when a shell is used.
Every task gets its
own session, so a timeout can stop the whole process group, MPI launchers included:
SIGTERM, then ``kill_grace`` seconds, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from ensemble_launcher.ensemble.programs import command_argv

#: Process groups of the commands running in this process, for stop_all_groups().
ACTIVE_GROUPS: set[int] = set()


@dataclass(slots=True)
class Completed:
    returncode: int | None
    stdout: str | None
    stderr_tail: str
    timed_out: bool
    launch_error: str | None = None


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
) -> Completed:
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
    finally:
        for f in opened:
            f.close()
    ACTIVE_GROUPS.add(proc.pid)
    try:
        out, err, timed_out = _drain(proc, timeout, tail_bytes, kill_grace)
    finally:
        ACTIVE_GROUPS.discard(proc.pid)
    if stderr_file:
        err = _file_tail(stderr_file, cwd, tail_bytes)
    return Completed(proc.returncode, out, err, timed_out)


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


def _drain(proc: subprocess.Popen, timeout: float | None, tail_bytes: int,
           kill_grace: float) -> tuple[str | None, str, bool]:
    """Read the child's pipes until they close, keeping all of stdout and the tail of
    stderr, and enforce the timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    out_chunks: list[bytes] = []
    err = bytearray()
    pipes = [p for p in (proc.stdout, proc.stderr) if p is not None]
    timed_out = False
    if pipes:
        with selectors.PollSelector() as sel:
            for pipe in pipes:
                sel.register(pipe.fileno(), selectors.EVENT_READ, pipe)
            while sel.get_map():
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(wait):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fd)
                    elif key.data is proc.stdout:
                        out_chunks.append(data)
                    else:
                        err += data
                        if len(err) > 2 * tail_bytes:
                            del err[:-tail_bytes]
    if not timed_out:
        try:
            proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        terminate_group(proc, kill_grace)
    for pipe in pipes:
        pipe.close()
    stdout = b"".join(out_chunks).decode(errors="replace") if proc.stdout is not None else None
    return stdout, bytes(err[-tail_bytes:] if tail_bytes else b"").decode(errors="replace"), \
        timed_out


def terminate_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the task's process group, wait ``grace`` seconds, then SIGKILL it."""
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_all_groups(grace: float) -> None:
    """Stop every running command's process group (SIGTERM, grace, SIGKILL)."""
    groups = list(ACTIVE_GROUPS)
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        groups = [g for g in groups if _group_alive(g)]
        time.sleep(0.02)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        pid, _ = os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        return True
    return pid == 0
