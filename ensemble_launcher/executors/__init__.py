"""How a placed task runs on a node.

``multiprocessing`` (the default) runs Python callables in warm runner processes pinned
one per core, and commands as subprocesses started from those runners, so each inherits
its core. The registry lists every executor by the name users give in LauncherConfig.
"""

from ensemble_launcher.executors.pool import PoolEvents, WarmPool
from ensemble_launcher.executors.registry import EXECUTORS, executor_for, make_pool

__all__ = ["EXECUTORS", "PoolEvents", "WarmPool", "executor_for", "make_pool"]
