"""The two configuration models users build: what the nodes have, and how to launch."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ensemble_launcher.config.defaults import usable_cpu_count, usable_cpu_ids
from ensemble_launcher.values import MAX_IDS, BadValue, cpu_ids, gpu_ids, is_env_name


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
    ncpus: int = Field(default_factory=usable_cpu_count, ge=1, le=MAX_IDS)
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
            object.__setattr__(self, "cpus", usable_cpu_ids(self.ncpus))
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
ProviderName = Literal["slurm", "pbs", "local"]
BlockLauncherName = Literal["srun", "mpiexec"]

#: What every scheduler_options line of a provider starts with.
DIRECTIVE_PREFIX = {"slurm": "#SBATCH", "pbs": "#PBS"}

_WALLTIME = re.compile(r"(?:(?P<days>\d+)-(?P<dh>\d{1,2})|(?P<hours>\d+)):(?P<hm>\d{2}):"
                       r"(?P<hs>\d{2})|(?P<minutes>\d+):(?P<ms>\d{2})")


def walltime_to_seconds(text: str) -> int:
    """Seconds in ``[D-]HH:MM:SS`` or ``MM:SS`` (what sbatch --time and qsub -l walltime
    both read); ValueError naming the forms otherwise."""
    match = _WALLTIME.fullmatch(text.strip())
    forms = "use [D-]HH:MM:SS or MM:SS, e.g. 00:30:00 or 1-12:00:00"
    if match is None:
        raise ValueError(f"walltime must be a duration; {forms}")
    part = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if part.get("hm", 0) > 59 or part.get("hs", 0) > 59 or part.get("ms", 0) > 59 \
            or part.get("dh", 0) > 23:
        raise ValueError(f"walltime has minutes or seconds over 59 (or hours over 23 after a "
                         f"day count); {forms}")
    if "minutes" in part:
        seconds = part["minutes"] * 60 + part["ms"]
    else:
        hours = part.get("hours", part.get("days", 0) * 24 + part.get("dh", 0))
        seconds = hours * 3600 + part["hm"] * 60 + part["hs"]
    if seconds <= 0:
        raise ValueError("walltime must be longer than 0 seconds")
    return seconds


class ProviderConfig(_Strict):
    """Blocks (batch jobs) whose workers connect back to the root, with Parsl's names.

    A block asks for ``nodes_per_block`` whole nodes for ``walltime``; between
    ``min_blocks`` and ``max_blocks`` of them run at a time, ``init_blocks`` at start.
    """

    name: ProviderName
    nodes_per_block: int = Field(default=1, ge=1)
    init_blocks: int = Field(default=1, ge=0)
    min_blocks: int = Field(default=0, ge=0)
    max_blocks: int = Field(default=1, ge=1)
    parallelism: float = Field(default=1.0, gt=0, le=1, description="blocks per pending "
                               "task's worth of nodes: 1 asks for all the blocks the work "
                               "can use, 0.5 for half")
    walltime: str = Field(default="00:30:00", description="each block's time limit, "
                          "[D-]HH:MM:SS or MM:SS")
    partition: str | None = None
    queue: str | None = None
    account: str | None = None
    qos: str | None = None
    scheduler_options: str = Field(default="", description="extra directive lines for "
                                   "each block's job script (#SBATCH ... or #PBS ...)")
    worker_init: str = Field(default="", description="shell lines each block runs before "
                             "its workers start (e.g. source env/bin/activate)")
    launcher: BlockLauncherName | None = Field(
        default=None, description="what starts one worker per node in a block (default: "
        "srun for slurm, mpiexec for pbs; the local provider starts them itself)")
    max_idletime: float = Field(default=120.0, gt=0, description="seconds a block may idle "
                                "before it is cancelled (down to min_blocks)")
    address: str | None = Field(
        default=None, description="where workers reach the root: an IP address of this host "
        "or an interface name (default: the address of this host's name, else the one "
        "routing to the default route)")
    submit_retries: int = Field(default=3, ge=1, description="consecutive failed blocks "
                                "(rejected, or ended before any worker connected) before "
                                "the run fails")
    exclusive: bool = Field(default=True, description="blocks ask for whole nodes")

    @field_validator("walltime")
    @classmethod
    def _walltime_is_a_duration(cls, value: str) -> str:
        walltime_to_seconds(value)
        return value.strip()

    @field_validator("partition", "queue", "account", "qos")
    @classmethod
    def _fits_in_a_directive(cls, value: str | None, info: ValidationInfo) -> str | None:
        """These go into directive lines of the job script: a newline would add a line of
        its own, a quote would end the value early."""
        if value is None:
            return None
        if not value.strip():
            raise ValueError(f"{info.field_name} must not be empty; leave it unset for the "
                             "scheduler's default")
        if any(c in value for c in "\n\r\0'\"`"):
            raise ValueError(f"{info.field_name} must not contain newlines, NUL or quote "
                             "characters")
        return value

    @field_validator("worker_init")
    @classmethod
    def _no_nul_in_worker_init(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("worker_init must not contain a NUL character")
        return value

    @field_validator("address")
    @classmethod
    def _address_is_one_interface(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _address_of_this_host("provider.address", value, info,
                                     "workers reach the root at the default address")

    @model_validator(mode="after")
    def _consistent(self) -> ProviderConfig:
        for low in ("min_blocks", "init_blocks"):
            if self.max_blocks < getattr(self, low):
                raise FieldConflict("max_blocks", self.max_blocks,
                                    f"must be at least {low} ({getattr(self, low)})")
        if self.name == "pbs" and self.launcher == "srun":
            raise FieldConflict("launcher", self.launcher,
                                "srun needs Slurm; a pbs block starts its workers with "
                                "mpiexec")
        if self.name == "pbs" and self.qos is not None:
            raise FieldConflict("qos", self.qos, "qos is a Slurm setting; a pbs block goes to "
                                "the queue you name in queue")
        if self.name == "local" and self.launcher is not None:
            raise FieldConflict("launcher", self.launcher, "the local provider starts its "
                                "processes itself; leave launcher unset")
        self._check_directives()
        return self

    def _check_directives(self) -> None:
        prefix = DIRECTIVE_PREFIX.get(self.name)
        for line in self.directive_lines:
            if prefix is None:
                raise FieldConflict("scheduler_options", line, "the local provider has no "
                                    "scheduler; leave scheduler_options empty")
            if "\0" in line or not line.startswith(prefix + " "):
                raise FieldConflict("scheduler_options", line, f"each line must start with "
                                    f"'{prefix} ' for the {self.name} provider")

    @property
    def directive_lines(self) -> list[str]:
        """The non-blank lines of scheduler_options, stripped."""
        return [line.strip() for line in self.scheduler_options.splitlines() if line.strip()]

    @property
    def walltime_seconds(self) -> int:
        return walltime_to_seconds(self.walltime)

    @property
    def block_launcher(self) -> Literal["srun", "mpiexec", "local"]:
        """What starts a block's workers: the configured launcher, else the scheduler's."""
        if self.name == "local":
            return "local"
        if self.launcher is not None:
            return self.launcher
        return "srun" if self.name == "slurm" else "mpiexec"
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
    simulated_nodes_per_process: int = Field(
        default=1, ge=1, description="with task_executor_name 'simulate': how many logical "
        "nodes one worker process hosts, each with its own connection to its master, so "
        "that one machine runs a tree of thousands of nodes")
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

    provider: ProviderConfig | None = Field(
        default=None, description="run the workers in batch jobs (blocks) that this root "
        "submits and that connect back to it: one ensemble over many jobs, from a login node")

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

    @model_validator(mode="after")
    def _only_simulated_nodes_share_a_process(self) -> LauncherConfig:
        if self.simulated_nodes_per_process > 1 and self.task_executor_name != "simulate":
            raise FieldConflict("simulated_nodes_per_process", self.simulated_nodes_per_process,
                                "only the 'simulate' task executor hosts several nodes in one "
                                "process; real nodes each run their own worker")
        return self

    @model_validator(mode="after")
    def _provider_tree_is_flat(self) -> LauncherConfig:
        """Blocks' workers connect to the root's one master over TCP: a tree of depth 1 over
        zmq, whatever the node count."""
        if self.provider is None:
            return self
        if self.nlevels is None:
            object.__setattr__(self, "nlevels", 1)
        elif self.nlevels != 1:
            raise FieldConflict("nlevels", self.nlevels, "provider runs need nlevels=1 (the "
                                "root's master and the blocks' workers)")
        if self.comm_name is None:
            object.__setattr__(self, "comm_name", "zmq")
        elif self.comm_name != "zmq":
            raise FieldConflict("comm_name", self.comm_name, "provider runs need comm_name "
                                "zmq: blocks' workers connect back over TCP")
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
        return _address_of_this_host("bind_address", value, info, "masters listen on the "
                                     "address that routes to their children")

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


def _address_of_this_host(key: str, value: str | None, info: ValidationInfo,
                          instead: str) -> str | None:
    """On this host, one of its addresses. A config recorded by a run (read back with
    ``context=recorded_context()``) may name another host's: a resume in a new job runs
    elsewhere, so that address is dropped for the default, with a note."""
    from ensemble_launcher.comm.addresses import check_bind_address, check_not_wildcard

    if value is None:
        return None
    notes = info.context.get(RECORDED_NOTES) if isinstance(info.context, dict) else None
    try:
        if notes is None:
            return check_bind_address(value)
        check_not_wildcard(value)
    except ValueError as exc:
        raise ValueError(str(exc).replace("bind_address", key)) from None
    try:
        return check_bind_address(value)
    except ValueError:
        notes.append(f"the recorded {key} {value!r} is not an address or an interface of "
                     f"this host; {instead} instead")
        return None


#: Where validation with ``context=recorded_context()`` leaves notes on what it changed.
RECORDED_NOTES = "recorded_notes"


def recorded_context() -> dict[str, list[str]]:
    """The validation context for a config a run recorded and a resume reads back: checks
    that hold only on the host that recorded it are relaxed, and what they change is noted
    under RECORDED_NOTES."""
    return {RECORDED_NOTES: []}
