"""Every error the launcher raises on purpose derives from :class:`EnsembleLauncherError`.

Errors are grouped by kind so that callers can catch what they can handle:

    EnsembleLauncherError
    ├── ConfigError            bad configuration or ensemble input, found before any task starts
    │   ├── EnsembleFileError  a problem located in an ensemble file (file, ensemble, key, value)
    │   └── ResourceError      a task that can never fit on the nodes of the allocation
    ├── ExecutorError          an executor could not be started or stopped
    ├── LaunchError            a child of the tree could not be started or reached
    ├── ProviderError          a batch scheduler refused or lost a block (its own message)
    ├── StoreError             the run directory or its journal cannot be used
    ├── RunAbortedError        the run started but could not go on (el exits 4; resume continues)
    └── LauncherClosedError    a resource was used after it was closed

Task failures are never exceptions: they are results with a state.
"""

from __future__ import annotations

import concurrent.futures
import reprlib
from typing import Any


class EnsembleLauncherError(Exception):
    """Root of every error raised by ensemble_launcher."""


class ConfigError(EnsembleLauncherError):
    """A configuration or ensemble definition is invalid."""


class EnsembleFileError(ConfigError):
    """An ensemble definition is invalid; the message names where and what."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        ensemble: str | None = None,
        key: str | None = None,
        value: Any = None,
        has_value: bool = False,
    ) -> None:
        self.file = file
        self.ensemble = ensemble
        self.key = key
        self.value = value
        self.reason = message
        where = []
        if file:
            where.append(str(file))
        if ensemble is not None:
            where.append(f"ensemble {_short(ensemble)}")
        if key is not None:
            where.append(f"key {_short(key)}")
        if has_value or value is not None:
            where.append(f"value {_short(value)}")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ResourceError(ConfigError):
    """A task asks for more than the allocation can ever give it."""


class ExecutorError(EnsembleLauncherError):
    """An executor could not be started, or failed in a way that is not a task's fault."""


class LaunchError(EnsembleLauncherError):
    """A master or worker of the tree could not be started, or never connected."""


class ProviderError(EnsembleLauncherError):
    """A provider could not submit, query or cancel a block: the message quotes the batch
    scheduler's own words (sbatch's, qsub's)."""


class StoreError(EnsembleLauncherError):
    """The run directory or its journal cannot be created, read or written."""


class RunAbortedError(EnsembleLauncherError):
    """The run started but cannot go on: the only worker was lost, or the journal cannot be
    written (a full disk). Raise it from inside the run; ``EnsembleLauncher.run`` records
    the tasks still out as not run, marks the run interrupted, and re-raises it, so that
    ``el`` exits 4 with its message and ``el resume`` continues the run."""


class LauncherClosedError(EnsembleLauncherError):
    """A launcher, executor or store was used after it was closed."""


class ClusterLost(EnsembleLauncherError):
    """A cluster's orchestrator is gone (killed, its host lost, or stopped): every future
    still pending in a client fails with this, within three heartbeats."""


class TaskError(EnsembleLauncherError):
    """A task of a cluster did not succeed, as its future raises it when the task's own
    exception cannot be raised (a command; a type the client cannot rebuild).

    ``exception_type`` and ``message`` are the task's error in words, ``remote_traceback``
    its traceback where it ran, ``stderr`` the tail of its standard error."""

    def __init__(self, task_id: str, message: str, *, state: str = "failed",
                 reason: str | None = None, exception_type: str | None = None,
                 remote_traceback: str | None = None, stderr: str = "") -> None:
        named = message.startswith(f"task {task_id!r}")
        super().__init__(message if named else f"task {task_id!r}: {message}")
        self.task_id = task_id
        self.state = state
        self.reason = reason
        self.exception_type = exception_type
        self.message = message
        self.remote_traceback = remote_traceback
        self.stderr = stderr

    def __reduce__(self) -> tuple:
        return (_rebuild_task_error, (type(self), self.task_id, self.message, self.__dict__))


def _rebuild_task_error(cls: type[TaskError], task_id: str, message: str,
                        state: dict[str, Any]) -> TaskError:
    error = cls.__new__(cls)
    TaskError.__init__(error, task_id, message)
    error.__dict__.update(state)
    return error


class CommandFailed(TaskError):
    """A command exited with a nonzero status (``returncode``) or died of ``signal``."""

    def __init__(self, task_id: str, message: str, *, returncode: int | None = None,
                 signal: int | None = None, **details: Any) -> None:
        super().__init__(task_id, message, **details)
        self.returncode = returncode
        self.signal = signal


class TaskTimedOut(TaskError):
    """A task ran past its ``timeout`` and was stopped."""


class TaskLost(TaskError):
    """A task's node (or its runner) was lost more often than ``node_loss_retries``."""


class TaskNotRun(TaskError):
    """A task was not run to its end because the cluster stopped (``el resume`` or a new
    ``el start`` on its checkpoint directory runs it)."""


class InvalidTask(TaskError):
    """A task the cluster refused before it started: bad options, an unknown executable,
    resources no node has."""


class TaskCancelled(TaskError, concurrent.futures.CancelledError):
    """A task was cancelled (``future.cancel()``, a tag): what its future raises. It is a
    ``concurrent.futures.CancelledError`` too."""


class DependencyFailed(TaskError):
    """A task did not run because a task it depends on failed or was cancelled."""


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel = 3
    short.maxlist = short.maxtuple = short.maxset = short.maxfrozenset = short.maxdeque = 8
    short.maxdict = 6
    short.maxstring = short.maxother = 60
    short.maxlong = 40
    return short


_SHORT_REPR = _short_repr()


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters without building the whole repr, so that
    a message about a million-element list or a value nested 20,000 deep stays one short
    line."""
    try:
        text = _SHORT_REPR.repr(value)
    except Exception:  # noqa: BLE001 - a user object whose __repr__ fails still gets a message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
