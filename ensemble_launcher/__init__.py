"""ensemble_launcher: launch and orchestrate ensembles of tasks across the nodes of an HPC job.

    from ensemble_launcher import EnsembleLauncher, write_results_to_json

    results = EnsembleLauncher("config.json").run()
    write_results_to_json(results, "results.json")

Public names load on first use, so that ``el --help`` does not pay for pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ensemble_launcher._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "ensemble_launcher.errors",
    "EnsembleFileError": "ensemble_launcher.errors",
    "EnsembleLauncherError": "ensemble_launcher.errors",
    "ExecutorError": "ensemble_launcher.errors",
    "LauncherClosedError": "ensemble_launcher.errors",
    "ResourceError": "ensemble_launcher.errors",
    "RunAbortedError": "ensemble_launcher.errors",
    "StoreError": "ensemble_launcher.errors",
    "LauncherConfig": "ensemble_launcher.config",
    "SystemConfig": "ensemble_launcher.config",
    "Task": "ensemble_launcher.ensemble",
    "EnsembleLauncher": "ensemble_launcher.launcher",
    "Results": "ensemble_launcher.store",
    "TaskResult": "ensemble_launcher.store",
    "write_results_to_json": "ensemble_launcher.store",
}

__all__ = [
    "ConfigError", "EnsembleFileError", "EnsembleLauncher", "EnsembleLauncherError",
    "ExecutorError", "LauncherClosedError", "LauncherConfig", "ResourceError", "Results",
    "RunAbortedError", "StoreError", "SystemConfig", "Task", "TaskResult", "write_results_to_json",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from ensemble_launcher.config import LauncherConfig, SystemConfig
    from ensemble_launcher.ensemble import Task
    from ensemble_launcher.errors import (
        ConfigError,
        EnsembleFileError,
        EnsembleLauncherError,
        ExecutorError,
        LauncherClosedError,
        ResourceError,
        RunAbortedError,
        StoreError,
    )
    from ensemble_launcher.launcher import EnsembleLauncher
    from ensemble_launcher.store import Results, TaskResult, write_results_to_json
