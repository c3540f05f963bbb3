"""Typed, validated configuration: :class:`SystemConfig` and :class:`LauncherConfig`.

Field names and defaults follow the original ensemble_launcher so that existing
scripts run unchanged. Unknown keys are rejected, and values are checked when the
object is built, not when a task first needs them.

Names load on first use: a child process of the tree imports modules that mention these
models only in annotations, and must not pay for pydantic (see orchestrator.child).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ensemble_launcher._lazy import lazy_exports

_EXPORTS = {
    "LauncherConfig": "ensemble_launcher.config.models",
    "ProviderConfig": "ensemble_launcher.config.models",
    "SystemConfig": "ensemble_launcher.config.models",
    "load_config_file": "ensemble_launcher.config.files",
}

__all__ = ["LauncherConfig", "ProviderConfig", "SystemConfig", "load_config_file"]

__getattr__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from ensemble_launcher.config.files import load_config_file
    from ensemble_launcher.config.models import LauncherConfig, ProviderConfig, SystemConfig
