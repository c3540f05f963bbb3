"""The run directory: the journal of results (SQLite), read back as a Mapping, and export."""

from ensemble_launcher.store.journal import (
    JOURNAL_NAME,
    Results,
    RunStore,
    write_results_to_json,
)
from ensemble_launcher.store.result import TaskResult

__all__ = ["JOURNAL_NAME", "Results", "RunStore", "TaskResult", "write_results_to_json"]
