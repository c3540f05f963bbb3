"""Log files of the launcher's processes (the root's and the tree's), safe on a full disk."""

from __future__ import annotations

import logging
from pathlib import Path


class DroppingFileHandler(logging.FileHandler):
    """A log line that cannot be written (a full disk) is dropped: the run ends with one
    clear message, not a traceback on the terminal for every line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def open_log_file(path: Path) -> DroppingFileHandler | None:
    """A handler appending to ``path``, its directory created; None when the file cannot
    be opened (a full disk, a read-only directory), so that the caller logs elsewhere."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return DroppingFileHandler(path)
    except OSError:
        return None
