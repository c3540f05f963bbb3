"""Watching a run: live counts, and the reporters that show them."""

from ensemble_launcher.monitor.counts import Counts
from ensemble_launcher.monitor.progress import (
    LogReporter,
    MultiReporter,
    PlainReporter,
    Reporter,
    RichReporter,
    make_reporter,
)

__all__ = ["Counts", "LogReporter", "MultiReporter", "PlainReporter", "Reporter",
           "RichReporter", "make_reporter"]
