"""The one registry of executor names."""

from __future__ import annotations

from ensemble_launcher.errors import ConfigError

#: name -> what it is; a name is usable when it is present here.
EXECUTORS: dict[str, str] = {
    "multiprocessing": "warm pinned runner processes on each node (callables and commands)",
}


def executor_for(name: str) -> str:
    """Check that ``name`` is an executor we can run here; return it."""
    if name not in EXECUTORS:
        raise ConfigError(
            f"task_executor_name {name!r} is not available in this build; available: "
            f"{', '.join(sorted(EXECUTORS))}")
    return name
