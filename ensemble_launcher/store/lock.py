"""One launcher per run directory: an exclusive ``flock`` on ``run_dir/lock``, held for the
whole run (and the whole resume).

Checking that the directory holds no journal is not enough: two launchers started at once
both pass the check and then run every task twice into one journal. The kernel drops the
lock when the holder exits, however it exits, so a stale lock never blocks a resume. The
file keeps the holder's pid, for the message the second launcher gets; it is never
removed (unlinking a lock file lets a third launcher lock a new file while the second
waits on the old one). Forked processes (the warm runners) close their copy of the lock's
descriptor at once: a flock belongs to the open file, so a runner that outlives the
launcher by a moment would otherwise hold the directory against the resume that follows.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from ensemble_launcher.errors import StoreError

LOCK_NAME = "lock"

log = logging.getLogger("ensemble_launcher")

#: Filesystems without flock (some NFS or Lustre mounts) answer with one of these.
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}

#: Descriptors of the locks this process holds, closed in every forked child.
_held: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunDirLock:
    """``with RunDirLock(run_dir):`` creates ``run_dir`` and holds it for this process, or
    raises StoreError naming the directory and the pid of the launcher that holds it."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunDirLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create run directory {self.run_dir}: {exc}") from exc
        try:
            _lock_soon(fd)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise in_use(self.run_dir, holder) from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                os.close(fd)
                raise StoreError(f"cannot lock run directory {self.run_dir}: {exc}") from exc
            log.warning("cannot lock %s (%s): a second launcher on this run directory would "
                        "not be stopped", self.path, exc)
        _write_pid(fd)
        self._fd = fd
        _held.add(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            _held.discard(self._fd)
            os.close(self._fd)
            self._fd = None


def _lock_soon(fd: int, mode: int = fcntl.LOCK_EX, wait: float = 1.0) -> None:
    """The exclusive lock, waiting up to ``wait`` seconds for a holder that just died (the
    kernel lets go of a dead process's lock a moment after it exits): a cluster started
    again at once after its head was killed is not refused."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def in_use(run_dir: Path, holder: int | None) -> StoreError:
    return StoreError(
        f"run directory {run_dir} is in use by another launcher "
        f"({f'pid {holder}' if holder else 'pid unknown'}, see {run_dir / LOCK_NAME}); wait "
        "for it to end, or choose another output directory")


def check_not_in_use(run_dir: str | os.PathLike) -> None:
    """StoreError when a live launcher holds ``run_dir``; creates and changes nothing."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        _lock_soon(fd, fcntl.LOCK_SH)
    except BlockingIOError:
        raise in_use(Path(run_dir), _holder(fd)) from None
    except OSError:
        return
    finally:
        os.close(fd)


def _write_pid(fd: int) -> None:
    """A full disk leaves the file without a pid; the lock holds all the same."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(fd: int, wait: float = 1.0) -> int | None:
    """The pid the holder wrote; it writes it just after taking the lock, so wait a moment."""
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
