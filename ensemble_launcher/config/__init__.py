"""Typed, validated configuration: :class:`SystemConfig` and :class:`LauncherConfig`.

Field names and defaults follow the original ensemble_launcher so that existing
scripts run unchanged. Unknown keys are rejected, and values are checked when the
object is built, not when a task first needs them.
"""

from ensemble_launcher.config.files import load_config_file
from ensemble_launcher.config.models import LauncherConfig, SystemConfig

__all__ = ["LauncherConfig", "SystemConfig", "load_config_file"]
