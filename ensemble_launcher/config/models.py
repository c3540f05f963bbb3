"""The two configuration models users build: what the nodes have, and how to launch."""

from __future__ import annotations

import itertools
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ensemble_launcher.values import MAX_IDS, BadValue, cpu_ids, gpu_ids, is_env_name


def _usable_cpu_count() -> int:
    """CPUs this process may run on (respects cgroup/cpuset limits, unlike cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _usable_cpu_ids(n: int) -> list[int]:
    try:
        ids = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        ids = list(range(os.cpu_count() or 1))
    return ids[:n] if n <= len(ids) else list(range(n))


class FieldConflict(ValueError):
    """A value that disagrees with another field: raised by a model validator, which
    pydantic reports without a key, so the key travels with the error."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        self.key, self.value, self.reason = key, value, reason
        super().__init__(reason)


def _is_number_field(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    return bool not in members and any(m in (int, float) for m in members)


class _Strict(BaseModel):
    """Unknown keys, NaN and infinity are refused (every comparison with NaN is false, so
    a NaN would pass every bound), and so are true/false for numbers."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None \
                and _is_number_field(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true or false")
        return value


class SystemConfig(_Strict):
    """What one compute node offers to tasks.

    ``cpus`` and ``gpus`` list the ids handed to tasks. A GPU id may appear more than
    once to overload it: ``gpus=['0', '0', '1', '1', '2', '3']`` is six GPU slots.
    When only ``ncpus`` is given, the first ``ncpus`` CPUs this process may use are taken.
    """

    name: str = "local"
    ncpus: int = Field(default_factory=_usable_cpu_count, ge=1, le=MAX_IDS)
    ngpus: int = Field(default=0, ge=0, le=MAX_IDS)
    cpus: list[int] = Field(default_factory=list)
    gpus: list[str | int] = Field(default_factory=list)

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpu_ids(cls, cpus: Any) -> list[int]:
        """Distinct whole numbers >= 0, the checks a task's cpu_affinity gets."""
        return _ids(cpu_ids, "cpus", cpus)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_ids(cls, gpus: Any) -> list[str]:
        """Ids as strings; checked here so that a bad one gets one message, not one per
        member of the ``str | int`` union."""
        return _ids(gpu_ids, "gpus", gpus)

    @model_validator(mode="after")
    def _fill_ids(self) -> SystemConfig:
        fields_set = self.model_fields_set
        if self.cpus:
            if "ncpus" in fields_set and self.ncpus != len(self.cpus):
                raise FieldConflict("ncpus", self.ncpus,
                                    f"disagrees with the {len(self.cpus)} ids in cpus")
            object.__setattr__(self, "ncpus", len(self.cpus))
        else:
            object.__setattr__(self, "cpus", _usable_cpu_ids(self.ncpus))
        if self.gpus:
            if "ngpus" in fields_set and self.ngpus != len(self.gpus):
                raise FieldConflict("ngpus", self.ngpus,
                                    f"disagrees with the {len(self.gpus)} ids in gpus")
            object.__setattr__(self, "ngpus", len(self.gpus))
            object.__setattr__(self, "gpus", [str(g) for g in self.gpus])
        else:
            object.__setattr__(self, "gpus", [str(g) for g in range(self.ngpus)])
        return self


def _ids(check: Callable[[str, Any], list], key: str, value: Any) -> list:
    try:
        return check(key, value)
    except BadValue as exc:
        raise ValueError(exc.reason) from None


ExecutorName = Literal["multiprocessing", "mpi", "dragon", "simulate"]
CommName = Literal["multiprocessing", "zmq", "dragon"]
ChildLauncherName = Literal["auto", "local", "srun", "mpiexec"]
MpiFlavor = Literal["auto", "hydra", "pals", "openmpi"]


#: Names the original project's configs use, and ours for them.
_ORIGINAL_NAMES = {
    "task_executor_name": {"async_processpool": "multiprocessing",
                           "processpool": "multiprocessing"},
    "child_executor_name": {"async_processpool": "multiprocessing",
                            "processpool": "multiprocessing", "async_mpi": "mpi"},
    "comm_name": {"async_zmq": "zmq"},
}

RetryReason = Literal["exit_code", "signal", "exception", "timeout", "worker_lost", "launch"]


def _default_retry_on() -> list[RetryReason]:
    return ["exit_code", "signal", "exception", "timeout", "worker_lost"]


class LauncherConfig(_Strict):
    """How the launcher runs: executors, communication, tree depth, reporting.

    ``nlevels=None`` picks the depth from the node count (1 node: 0; 2-64: 1;
    65-2048: 2; more: 3). ``comm_name=None`` picks ``zmq`` for a tree.
    ``child_executor_name=None`` picks ``multiprocessing`` (local processes) when every
    child is on this host and ``mpi`` (the site's launcher: ``child_launcher``) otherwise.
    """

    child_executor_name: ExecutorName | None = None
    task_executor_name: ExecutorName = "multiprocessing"
    comm_name: CommName | None = None
    report_interval: float = Field(default=10.0, gt=0)
    nlevels: int | None = Field(default=None, ge=0, le=3)
    return_stdout: bool = False
    worker_logs: bool = False
    master_logs: bool = False
    nchildren: int | None = Field(default=None, ge=1)
    profile: Literal["basic", "timeline"] | None = None
    gpu_selector: str = "ZE_AFFINITY_MASK"
    kill_grace: float = Field(
        default=5.0, ge=0, description="seconds between SIGTERM and SIGKILL when a task is stopped"
    )
    stderr_tail_bytes: int = Field(
        default=4096, ge=0, description="how much of a task's stderr is kept in its result"
    )
    resource_usage: bool = Field(
        default=True, description="record each task's CPU time (user, system) and peak RSS "
        "in its result: a command's process tree (wait4), a callable's call in its runner")
    heartbeat_interval: float = Field(
        default=1.0, gt=0, description="seconds between heartbeats; a child silent for 2.5 "
        "intervals is lost")
    child_start_timeout: float = Field(
        default=60.0, gt=0, description="seconds a child of the tree may take to connect")
    child_launcher: ChildLauncherName = Field(
        default="auto", description="how children reach other nodes: srun in Slurm, else "
        "mpiexec; local for one host")
    child_launcher_args: list[str] = Field(
        default_factory=list, description="extra arguments for srun/mpiexec when starting "
        "children")
    mpi_flavor: MpiFlavor = Field(default="auto", description="which mpiexec this is "
                                  "(for children and MPI tasks); auto asks mpiexec --version")
    mpi_launcher: Literal["auto", "mpiexec", "srun"] = Field(
        default="auto", description="what starts the ranks of a task with ppn > 1 or nnodes > "
        "1: mpiexec when on PATH, else srun inside Slurm")
    mpi_args: list[str] = Field(default_factory=list, description="extra arguments for the "
                                "mpiexec/srun that starts an MPI task's ranks")
    child_step: Literal["per_child", "shared"] = Field(
        default="per_child", description="one srun/mpiexec per child (a lost node ends only "
        "its own child), or one for all workers of a master (fewer launcher processes)")
    retries: int = Field(default=0, ge=0, description="attempts after the first, for a "
                         "task whose failure reason is in retry_on")
    retry_on: list[RetryReason] = Field(default_factory=_default_retry_on)
    node_loss_retries: int = Field(default=3, ge=0, description="how often a task whose node "
                                   "was lost runs again elsewhere")
    shutdown_grace: float = Field(default=30.0, ge=0, description="seconds running tasks "
                                  "may finish after SIGTERM/SIGINT before they are stopped")
    node_sample_interval: float = Field(
        default=5.0, ge=0, description="seconds between two samples of each node's CPU and "
        "memory use (journaled, plotted by el report); 0: no samples")
    walltime: float | None = Field(default=None, gt=0, description="seconds the job has "
                                   "left (default: asked of Slurm or PBS); tasks whose "
                                   "estimated_runtime does not fit are not started")
    bind_address: str | None = Field(
        default=None, description="where masters listen: an IP address of this host, or the "
        "name of a network interface (e.g. ib0), never a wildcard (default: the address "
        "that routes to their children)")

    cluster: bool = Field(default=False, description="run as a long-lived cluster that "
                          "clients submit to (start()/stop(), el start/el stop)")
    checkpoint_dir: str | None = Field(
        default=None, description="a cluster's directory (made 0700): how clients find and "
        "prove themselves to it, and its run directory (journal, status, logs)")
    cluster_address: str | None = Field(
        default=None, description="where a cluster listens for clients: an IP address of "
        "this host or an interface name (default: ipc in checkpoint_dir when every node is "
        "this host, else the address that routes to the nodes)")

    @model_validator(mode="before")
    @classmethod
    def _original_names(cls, data: Any) -> Any:
        """The original project's executor and comm names mean ours."""
        if isinstance(data, dict):
            for key, names in _ORIGINAL_NAMES.items():
                value = data.get(key)
                if isinstance(value, str) and value in names:
                    data = {**data, key: names[value]}
        return data

    @model_validator(mode="after")
    def _cluster_has_a_directory(self) -> LauncherConfig:
        if self.cluster and not self.checkpoint_dir:
            raise ValueError("cluster=True needs checkpoint_dir: the directory where clients "
                             "find the cluster")
        return self

    @field_validator("cluster_address")
    @classmethod
    def _cluster_address_is_one_interface(cls, value: str | None) -> str | None:
        from ensemble_launcher.comm.addresses import check_bind_address

        return None if value is None else check_bind_address(value)

    @field_validator("checkpoint_dir")
    @classmethod
    def _checkpoint_dir_is_a_path(cls, value: str | None) -> str | None:
        if value is not None and (not value or "\0" in value):
            raise ValueError("checkpoint_dir must be a non-empty path")
        return value

    @field_validator("bind_address")
    @classmethod
    def _bind_address_is_one_interface(cls, value: str | None,
                                       info: ValidationInfo) -> str | None:
        """On this host, one of its addresses. A config recorded by a run (read back with
        ``context=recorded_context()``) may name another host's: a resume in a new job runs
        elsewhere, so that address is dropped for the default, with a note."""
        from ensemble_launcher.comm.addresses import check_bind_address, check_not_wildcard

        if value is None:
            return None
        notes = info.context.get(RECORDED_NOTES) if isinstance(info.context, dict) else None
        if notes is None:
            return check_bind_address(value)
        check_not_wildcard(value)
        try:
            return check_bind_address(value)
        except ValueError:
            notes.append(f"the recorded bind_address {value!r} is not an address or an "
                         "interface of this host; masters listen on the address that "
                         "routes to their children instead")
            return None

    @field_validator("gpu_selector")
    @classmethod
    def _selector_is_env_name(cls, value: str) -> str:
        if not is_env_name(value):
            raise ValueError("gpu_selector must be an environment variable name (letters, "
                             "digits and _, not starting with a digit)")
        return value

    @field_validator("child_launcher_args", "mpi_args")
    @classmethod
    def _no_nul_in_arguments(cls, args: list[str]) -> list[str]:
        if any("\0" in a for a in args):
            raise ValueError("an argument must not contain a NUL character")
        return args


#: Where validation with ``context=recorded_context()`` leaves notes on what it changed.
RECORDED_NOTES = "recorded_notes"


def recorded_context() -> dict[str, list[str]]:
    """The validation context for a config a run recorded and a resume reads back: checks
    that hold only on the host that recorded it are relaxed, and what they change is noted
    under RECORDED_NOTES."""
    return {RECORDED_NOTES: []}


def auto_nlevels(nnodes: int) -> int:
    """The seed's rule for the tree depth when the user does not set ``nlevels``."""
    if nnodes <= 1:
        return 0
    if nnodes <= 64:
        return 1
    if nnodes <= 2048:
        return 2
    return 3


_run_dirs_made = itertools.count(1)


def default_run_dir(label: str = "run") -> Path:
    """``el-runs/<label>-<date>-<time>.<ms>-<pid>-<n>``: unique for every call, also for
    several launchers made in one second by one process (n counts them)."""
    from datetime import datetime

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S.%f")[:-3]
    return Path("el-runs") / f"{label}-{stamp}-{os.getpid()}-{next(_run_dirs_made)}"
