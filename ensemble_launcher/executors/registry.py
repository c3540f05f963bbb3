"""The one registry of executor names."""

from __future__ import annotations

from ensemble_launcher.errors import ConfigError

#: name -> what it is; a name is usable when it is present here.
EXECUTORS: dict[str, str] = {
    "multiprocessing": "warm pinned runner processes on each node (callables and commands)",
    "mpi": "the same warm runners; the original launcher's name for running MPI tasks, which "
           "every executor here runs under mpiexec/srun (tasks with ppn or nnodes > 1)",
    "simulate": "no process: a task completes after its estimated_runtime (for scale tests)",
}


def make_pool(name: str, cpus, *, pin: bool, tail_bytes: int, kill_grace: float,
              usage: bool = True):
    """The pool that runs tasks for executor ``name`` on one node; ``usage``: measure what
    each task uses."""
    if name == "simulate":
        from ensemble_launcher.executors.simulated import SimulatedPool

        return SimulatedPool(cpus)
    from ensemble_launcher.executors.pool import WarmPool

    return WarmPool(cpus, pin=pin, tail_bytes=tail_bytes, kill_grace=kill_grace,
                    usage=usage)


def executor_for(name: str) -> str:
    """Check that ``name`` is an executor we can run here; return it."""
    if name not in EXECUTORS:
        raise ConfigError(
            f"task_executor_name {name!r} is not available in this build; available: "
            f"{', '.join(sorted(EXECUTORS))}")
    return name
