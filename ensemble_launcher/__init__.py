"""ensemble_launcher: launch and orchestrate ensembles of tasks across the nodes of an HPC job.

    from ensemble_launcher import EnsembleLauncher, write_results_to_json

    results = EnsembleLauncher("config.json").run()
    write_results_to_json(results, "results.json")
"""

from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import (
    ConfigError,
    EnsembleFileError,
    EnsembleLauncherError,
    ExecutorError,
    LauncherClosedError,
    ResourceError,
    StoreError,
)
from ensemble_launcher.launcher import EnsembleLauncher
from ensemble_launcher.store import Results, TaskResult, write_results_to_json

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EnsembleFileError",
    "EnsembleLauncher",
    "EnsembleLauncherError",
    "ExecutorError",
    "LauncherClosedError",
    "LauncherConfig",
    "ResourceError",
    "Results",
    "StoreError",
    "SystemConfig",
    "Task",
    "TaskResult",
    "write_results_to_json",
]
