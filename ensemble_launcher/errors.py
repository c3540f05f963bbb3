"""Every error the launcher raises on purpose derives from :class:`EnsembleLauncherError`.

Errors are grouped by kind so that callers can catch what they can handle:

    EnsembleLauncherError
    ├── ConfigError            bad configuration or ensemble input, found before any task starts
    │   ├── EnsembleFileError  a problem located in an ensemble file (file, ensemble, key, value)
    │   └── ResourceError      a task that can never fit on the nodes of the allocation
    ├── ExecutorError          an executor could not be started or stopped
    ├── LaunchError            a child of the tree could not be started or reached
    ├── StoreError             the run directory or its journal cannot be used
    └── LauncherClosedError    a resource was used after it was closed

Task failures are never exceptions: they are results with a state.
"""

from __future__ import annotations

from typing import Any


class EnsembleLauncherError(Exception):
    """Root of every error raised by ensemble_launcher."""


class ConfigError(EnsembleLauncherError):
    """A configuration or ensemble definition is invalid."""


class EnsembleFileError(ConfigError):
    """An ensemble definition is invalid; the message names where and what."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        ensemble: str | None = None,
        key: str | None = None,
        value: Any = None,
        has_value: bool = False,
    ) -> None:
        self.file = file
        self.ensemble = ensemble
        self.key = key
        self.value = value
        self.reason = message
        where = []
        if file:
            where.append(str(file))
        if ensemble is not None:
            where.append(f"ensemble {ensemble!r}")
        if key is not None:
            where.append(f"key {key!r}")
        if has_value or value is not None:
            where.append(f"value {_short(value)}")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ResourceError(ConfigError):
    """A task asks for more than the allocation can ever give it."""


class ExecutorError(EnsembleLauncherError):
    """An executor could not be started, or failed in a way that is not a task's fault."""


class LaunchError(EnsembleLauncherError):
    """A master or worker of the tree could not be started, or never connected."""


class StoreError(EnsembleLauncherError):
    """The run directory or its journal cannot be created, read or written."""


class LauncherClosedError(EnsembleLauncherError):
    """A launcher, executor or store was used after it was closed."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
