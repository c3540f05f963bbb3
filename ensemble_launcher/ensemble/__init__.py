"""Tasks and ensembles: the Task model, ensemble files, parameter sweeps.

This layer knows nothing of processes or sockets: it turns what the user wrote into a
validated, lazily generated stream of :class:`Task`.
"""

from ensemble_launcher.ensemble.loader import Requirement, TaskStream, load_tasks
from ensemble_launcher.ensemble.spec import EnsembleSpec
from ensemble_launcher.ensemble.task import AsyncTask, Task

__all__ = ["AsyncTask", "EnsembleSpec", "Requirement", "Task", "TaskStream", "load_tasks"]
