"""Process helpers: polling with deadlines, stopping daemons by pid file, namespace members."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path


class ClusterError(RuntimeError):
    """Setting up, using or tearing down the test cluster failed."""


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    max_interval: float = 0.5,
) -> None:
    """Poll `ready` until it returns True; raise ClusterError naming `what` on timeout.

    `ready` may itself raise ClusterError to give up early (e.g. a daemon died).
    """
    deadline = time.monotonic() + timeout
    interval = 0.02
    while not ready():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{details()}")
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"--- {path}: unreadable ({exc.strerror})"
    return f"--- last {lines} lines of {path}:\n" + "\n".join(text.splitlines()[-lines:])


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    """True unless `pid` is gone or a zombie (a zombie holds no resources and runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`, to tell a process from a later one reusing its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_daemon(child: subprocess.Popen, grace: float = 5.0) -> dict[int, str | None]:
    """SIGTERM a daemon we started, SIGKILL it after `grace` s, reap it, kill its helpers.

    Daemons are stopped by pid, never by name, because other clusters run the same programs.
    Returns the helpers (direct children, e.g. slurmctld's slurmscriptd) with their start
    times, so that the caller can check later that they are gone.
    """
    if child.poll() is not None:
        return {}
    pid = child.pid
    helpers = children_of(pid)
    send_signal(pid, signal.SIGTERM)
    with contextlib.suppress(ClusterError):
        wait_until(lambda: not is_alive(pid), grace, f"pid {pid} to exit")
    if is_alive(pid):
        send_signal(pid, signal.SIGKILL)
    reap(child)
    for helper, started in helpers.items():
        if start_time(helper) == started:
            send_signal(helper, signal.SIGKILL)
    return helpers


def same_process_alive(pid: int, started: str | None) -> bool:
    return started is not None and start_time(pid) == started and is_alive(pid)


def children_of(pid: int) -> dict[int, str | None]:
    """Direct children of `pid` (e.g. slurmctld's slurmscriptd), with their start times."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if stat[1] == str(pid):
                children[int(entry.name)] = stat[19]
    return children


def reap(child: subprocess.Popen, timeout: float = 5.0) -> None:
    if child.poll() is None:
        with contextlib.suppress(OSError):
            child.kill()
        child.wait(timeout)


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def namespace_inode(ns_path: str) -> int | None:
    """The inode that identifies a namespace, from /run/netns/NAME or /proc/PID/ns/KIND."""
    try:
        return os.stat(ns_path).st_ino
    except OSError:
        return None


def pids_in_namespaces(inodes: Iterable[int], kinds: Iterable[str] = ("net", "uts")) -> set[int]:
    """Every live process that is in one of the namespaces `inodes` (of the given kinds)."""
    wanted = set(inodes)
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        for kind in kinds:
            if namespace_inode(f"/proc/{entry.name}/ns/{kind}") in wanted:
                found.add(int(entry.name))
                break
    return {pid for pid in found if pid != os.getpid() and is_alive(pid)}


def pids_with_env(name: str, value: str) -> set[int]:
    """Live processes whose environment has name=value (e.g. clients of one cluster)."""
    needle = f"{name}={value}".encode()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.add(int(entry.name))
    return {pid for pid in found if is_alive(pid)}


def kill_namespace_members(inodes: Iterable[int], timeout: float = 10.0) -> None:
    """SIGKILL every process in the namespaces, repeatedly, since members may still fork.

    A crashed host stops all at once; signalling its processes one by one would not: a
    task killed first would let its runner and worker live long enough to report it
    "killed by SIGKILL" before they die too. So every member is frozen (SIGSTOP, until no
    new one appears) before any is killed."""
    inodes = set(inodes)
    frozen: set[int] = set()
    for _ in range(20):
        members = pids_in_namespaces(inodes) - frozen
        if not members:
            break
        for pid in members:
            send_signal(pid, signal.SIGSTOP)
        frozen |= members

    def all_gone() -> bool:
        members = pids_in_namespaces(inodes)
        for pid in members:
            send_signal(pid, signal.SIGKILL)
        return not members

    wait_until(all_gone, timeout, "processes in the host namespaces to die")
