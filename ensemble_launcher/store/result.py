"""The result of one task, as users read it."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import msgpack


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What happened to one task.

    ``state`` is ``succeeded``, ``failed``, ``timed_out`` or ``lost``; for anything but
    success ``reason`` says why (``exit_code``, ``signal``, ``exception``, ``launch``,
    ``timeout``, ``worker_lost``) and ``exception`` says it in words. ``value`` is a
    callable's return value; ``returncode`` a command's exit status. ``stderr`` holds
    the tail of the task's standard error.

    ``cpu_user`` and ``cpu_system`` are the CPU seconds the task used, ``max_rss`` its peak
    resident set size in bytes: for a command, those of its process tree (an MPI task's:
    its launcher's, mpiexec or srun, and what that waited for on its node); for a
    callable, those of its runner during the call. None when not measured (the task did
    not run, ``LauncherConfig.resource_usage`` was off, or the journal predates them).

    In a provider run, ``Results.block_of(task_id)`` says which block (batch job) ran it.
    """

    task_id: str
    state: str
    ensemble: str | None = None
    attempt: int = 1
    reason: str | None = None
    returncode: int | None = None
    signal: int | None = None
    value_blob: bytes | None = None
    exception: str | None = None
    traceback: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    host: str | None = None
    cpus: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()
    cpu_user: float | None = None
    cpu_system: float | None = None
    max_rss: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def value(self) -> Any:
        """The callable's return value (unpickled on access)."""
        return None if self.value_blob is None else pickle.loads(self.value_blob)

    @property
    def duration(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    @classmethod
    def from_row(cls, row: tuple) -> TaskResult:
        (task_id, ensemble, attempt, state, reason, returncode, value, start, end, host, cpus,
         gpus, detail, cpu_user, cpu_system, max_rss) = row
        signal, exception, tb, stdout, stderr = msgpack.unpackb(detail) if detail \
            else (None, None, None, None, "")
        return cls(task_id=task_id, state=state, ensemble=ensemble, attempt=attempt,
                   reason=reason, returncode=returncode, signal=signal, value_blob=value,
                   exception=exception, traceback=tb, stdout=stdout, stderr=stderr,
                   start_time=start, end_time=end, host=host,
                   cpus=tuple(int(c) for c in cpus.split(",")) if cpus else (),
                   gpus=tuple(gpus.split(",")) if gpus else (), cpu_user=cpu_user,
                   cpu_system=cpu_system, max_rss=max_rss)

    def to_dict(self) -> dict[str, Any]:
        try:
            value = self.value
        except Exception as exc:  # noqa: BLE001 - a value we cannot load is still reported
            value = f"<unloadable value: {exc}>"
        return {
            "task_id": self.task_id, "ensemble": self.ensemble, "state": self.state,
            "reason": self.reason, "attempt": self.attempt, "returncode": self.returncode,
            "signal": self.signal, "value": value, "exception": self.exception,
            "traceback": self.traceback, "stdout": self.stdout, "stderr": self.stderr,
            "start_time": self.start_time, "end_time": self.end_time,
            "duration": self.duration, "host": self.host, "cpus": list(self.cpus),
            "gpus": list(self.gpus), "cpu_user": self.cpu_user,
            "cpu_system": self.cpu_system, "max_rss": self.max_rss,
        }
