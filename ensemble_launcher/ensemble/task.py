"""The unit of work: one Python callable or one command, with the resources it needs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ensemble_launcher.errors import ConfigError


@dataclass(slots=True, eq=False)
class Task:
    """One task of an ensemble.

    ``executable`` is either a Python callable, called as ``executable(*args, **kwargs)``
    in a warm worker process, or a command line (a string, or a list of arguments) run
    as a subprocess. ``args`` are appended to a command line.

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
            raise ConfigError(f"Task task_id must be a non-empty string, got {self.task_id!r}")
        if self.executable is None:
            raise ConfigError(f"Task {self.task_id!r}: executable is required")
        if not isinstance(self.args, tuple):
            self.args = tuple(self.args)
        if isinstance(self.cpu_affinity, str):
            self.cpu_affinity = parse_id_list(self.cpu_affinity, int)
        if isinstance(self.gpu_affinity, str):
            self.gpu_affinity = parse_id_list(self.gpu_affinity, str)
        elif self.gpu_affinity:
            self.gpu_affinity = [str(g) for g in self.gpu_affinity]
        for name in ("nnodes", "ppn"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"Task {self.task_id!r}: {name} must be an integer >= 1, "
                                  f"got {value!r}")
        ngpus = self.ngpus_per_process
        if isinstance(ngpus, float) and ngpus.is_integer():
            self.ngpus_per_process = ngpus = int(ngpus)
        if not isinstance(ngpus, int) or ngpus < 0:
            raise ConfigError(
                f"Task {self.task_id!r}: ngpus_per_process must be a whole number >= 0, got "
                f"{ngpus!r}; to share a GPU between processes, list its id several times in "
                "SystemConfig.gpus"
            )
        if self.retries is not None and (not isinstance(self.retries, int) or self.retries < 0):
            raise ConfigError(f"Task {self.task_id!r}: retries must be a whole number >= 0, "
                              f"got {self.retries!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"Task {self.task_id!r}: timeout must be > 0 seconds, "
                              f"got {self.timeout!r}")

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


class _TrustedTask(Task):
    """A Task whose values were validated elsewhere (by the root, before it sent them down
    the tree): built without repeating the checks."""

    __slots__ = ()

    def __post_init__(self) -> None:
        pass


trusted_task = _TrustedTask


def parse_id_list(text: str, kind: type) -> list:
    """``"0,1,4-7"`` -> ids; ranges only for integer ids."""
    ids: list = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if kind is int and "-" in part:
            lo, hi = part.split("-", 1)
            ids.extend(range(int(lo), int(hi) + 1))
        else:
            ids.append(kind(part))
    return ids
