"""The unit of work: one Python callable or one command, with the resources it needs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ensemble_launcher.errors import ConfigError, _short
from ensemble_launcher.values import (
    BadValue,
    cpu_ids,
    environment,
    gpu_ids,
    gpus_per_process,
    path_option,
    seconds,
    whole_number,
)


@dataclass(slots=True, eq=False)
class Task:
    """One task of an ensemble.

    ``executable`` is either a Python callable, called as ``executable(*args, **kwargs)``
    in a warm worker process, or a command line (a string, or a list of arguments) run
    as a subprocess. ``args`` are appended to a command line.

    ``env`` values are strings; numbers are taken as their text (``{"N": 4}`` sets N=4).
    ``cpu_affinity`` and ``gpu_affinity`` pin the task to those ids of its node;
    otherwise the launcher picks free ones. ``timeout`` is in seconds. ``retries``
    overrides LauncherConfig.retries for this task. ``estimated_runtime`` (seconds) lets
    the launcher skip a task that cannot finish before the job's walltime.
    """

    task_id: str
    nnodes: int = 1
    ppn: int = 1
    executable: Callable[..., Any] | str | Sequence[str] | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    ngpus_per_process: int | float = 0
    cpu_affinity: list[int] = field(default_factory=list)
    gpu_affinity: list[str] = field(default_factory=list)
    run_dir: str | None = None
    timeout: float | None = None
    stdout_file: str | None = None
    stderr_file: str | None = None
    estimated_runtime: float = 0.0
    tag: str | None = None
    ensemble: str | None = None
    retries: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ConfigError("Task task_id must be a non-empty string, got "
                              f"{_short(self.task_id)}")
        if self.executable is None:
            raise ConfigError(f"Task {self.task_id!r}: executable is required")
        if not isinstance(self.args, tuple):
            self.args = tuple(self.args)
        try:
            self._check_values()
        except BadValue as exc:
            raise ConfigError(f"Task {_short(self.task_id)}: {exc}") from None

    def _check_values(self) -> None:
        """Normalize and check every option. A sweep builds one Task per task, so values of
        the exact expected type take a short path and only the rest go through the full
        checks."""
        if type(self.nnodes) is not int or self.nnodes < 1:
            self.nnodes = whole_number("nnodes", self.nnodes, 1)
        if type(self.ppn) is not int or self.ppn < 1:
            self.ppn = whole_number("ppn", self.ppn, 1)
        if type(self.ngpus_per_process) is not int or self.ngpus_per_process < 0:
            self.ngpus_per_process = gpus_per_process("ngpus_per_process",
                                                      self.ngpus_per_process)
        if self.retries is not None:
            self.retries = whole_number("retries", self.retries, 0)
        if self.timeout is not None and not (type(self.timeout) is float
                                             and 0 < self.timeout < math.inf):
            self.timeout = seconds("timeout", self.timeout)
        if not (type(self.estimated_runtime) is float and 0 <= self.estimated_runtime < math.inf):
            self.estimated_runtime = seconds("estimated_runtime", self.estimated_runtime,
                                             allow_zero=True)
        if self.cpu_affinity or type(self.cpu_affinity) is not list:
            self.cpu_affinity = [] if self.cpu_affinity is None \
                else cpu_ids("cpu_affinity", self.cpu_affinity)
        if self.gpu_affinity or type(self.gpu_affinity) is not list:
            self.gpu_affinity = [] if self.gpu_affinity is None \
                else gpu_ids("gpu_affinity", self.gpu_affinity)
        self._check_paths()
        if self.env:
            self.env = environment(self.env)

    def _check_paths(self) -> None:
        for key in _PATHS:
            value = getattr(self, key)
            if value is not None and (type(value) is not str or not value or "\0" in value):
                path_option(key, value)

    @property
    def is_callable(self) -> bool:
        return callable(self.executable)

    @property
    def ncpus(self) -> int:
        """Cores this task needs on each of its nodes."""
        return max(self.ppn, len(self.cpu_affinity))

    @property
    def ngpus(self) -> int:
        """GPU slots this task needs on each of its nodes."""
        return max(self.ppn * int(self.ngpus_per_process), len(self.gpu_affinity))


_PATHS = ("run_dir", "stdout_file", "stderr_file")


class _TrustedTask(Task):
    """A Task whose values were validated elsewhere (by the root, before it sent them down
    the tree; by an EnsembleSpec, once for all its tasks): built without repeating the
    checks."""

    __slots__ = ()

    def __post_init__(self) -> None:
        pass


trusted_task = _TrustedTask


class AsyncTask(Task):
    """The original project's name for a Task whose executable is an ``async def``
    function; every Task takes one (its runner runs the coroutine to its end)."""

    __slots__ = ()


def rendered_task(**fields: Any) -> Task:
    """A task of an ensemble file: its options were checked once for the whole ensemble,
    so only what its templates made of its values is checked here (its paths)."""
    task = _TrustedTask(**fields)
    try:
        task._check_paths()
    except BadValue as exc:
        raise ConfigError(f"Task {_short(task.task_id)}: {exc}") from None
    return task


@dataclass(frozen=True, slots=True)
class UnbuildableTask:
    """A task of a lazy ensemble that could not be built when its turn came (checks before
    the run cover each value, not every combination of values). The run records it as
    failed, with ``reason``, and goes on; it never starts."""

    task_id: str
    ensemble: str | None
    reason: str
