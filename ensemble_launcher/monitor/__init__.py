"""Watching a run: live counts, and the reporters that show them."""

from ensemble_launcher.monitor.counts import Counts
from ensemble_launcher.monitor.progress import (
    LogReporter,
    PlainReporter,
    Reporter,
    RichReporter,
    make_reporter,
)

__all__ = ["Counts", "LogReporter", "PlainReporter", "Reporter", "RichReporter",
           "make_reporter"]
