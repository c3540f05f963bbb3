"""What a run uses when it is given no config, without importing pydantic.

Importing pydantic and building the two models takes about 0.1 s, more than the rest of
``el run FILE`` until its first task starts. A run given no config has nothing to
validate, so it works from these defaults as plain attributes (as a child of the tree
does with the configs its root validated); :class:`LauncherConfig` and
:class:`SystemConfig` are built only when a config is given or asked for.
``tests/test_pieces.py`` checks that these are the models' defaults.
"""

from __future__ import annotations

import copy
import itertools
import os
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ensemble_launcher.config.models import LauncherConfig, SystemConfig

#: ``LauncherConfig().model_dump()``.
LAUNCHER_DEFAULTS: dict[str, Any] = {
    "child_executor_name": None, "task_executor_name": "multiprocessing", "comm_name": None,
    "report_interval": 10.0, "nlevels": None, "return_stdout": False, "worker_logs": False,
    "master_logs": False, "nchildren": None, "profile": None,
    "gpu_selector": "ZE_AFFINITY_MASK", "kill_grace": 5.0, "stderr_tail_bytes": 4096,
    "resource_usage": True, "heartbeat_interval": 1.0, "child_start_timeout": 60.0,
    "child_launcher": "auto", "child_launcher_args": [], "mpi_flavor": "auto",
    "mpi_launcher": "auto", "mpi_args": [], "child_step": "per_child",
    "simulated_nodes_per_process": 1, "retries": 0,
    "retry_on": ["exit_code", "signal", "exception", "timeout", "worker_lost"],
    "node_loss_retries": 3, "shutdown_grace": 30.0, "node_sample_interval": 5.0,
    "walltime": None, "bind_address": None, "provider": None, "cluster": False,
    "checkpoint_dir": None, "cluster_address": None,
}


def usable_cpu_count() -> int:
    """CPUs this process may run on (respects cgroup/cpuset limits, unlike cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def usable_cpu_ids(n: int) -> list[int]:
    try:
        ids = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        ids = list(range(os.cpu_count() or 1))
    return ids[:n] if n <= len(ids) else list(range(n))


def launcher_defaults() -> LauncherConfig:
    """``LauncherConfig()``'s values as plain attributes."""
    values: Any = SimpleNamespace(**copy.deepcopy(LAUNCHER_DEFAULTS))
    return values


def system_defaults() -> SystemConfig:
    """``SystemConfig()``'s values as plain attributes: every CPU this process may use,
    no GPU."""
    ncpus = usable_cpu_count()
    values: Any = SimpleNamespace(name="local", ncpus=ncpus, ngpus=0,
                                  cpus=usable_cpu_ids(ncpus), gpus=[])
    return values


def config_dump(config: Any) -> dict[str, Any]:
    """``model_dump()`` of a config model, or of the defaults that stand for one."""
    if isinstance(config, SimpleNamespace):
        return copy.deepcopy(vars(config))
    result: dict[str, Any] = config.model_dump()
    return result


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
