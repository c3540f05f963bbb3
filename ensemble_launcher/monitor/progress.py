"""Reporters: how the live counts reach the user.

The CLI uses a rich progress display on a terminal and plain lines otherwise; the Python
API logs a line every ``report_interval`` seconds through :mod:`logging`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, TextIO

from ensemble_launcher.monitor.counts import Counts

if TYPE_CHECKING:
    from rich.progress import TaskID

log = logging.getLogger("ensemble_launcher")


class Reporter:
    """Called with the counts about ten times a second; shows them as it sees fit."""

    def start(self, counts: Counts) -> None:
        pass

    def update(self, counts: Counts) -> None:
        pass

    def stop(self, counts: Counts) -> None:
        pass


class MultiReporter(Reporter):
    """Several reporters as one."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def start(self, counts: Counts) -> None:
        for r in self.reporters:
            r.start(counts)

    def update(self, counts: Counts) -> None:
        for r in self.reporters:
            r.update(counts)

    def stop(self, counts: Counts) -> None:
        for r in self.reporters:
            r.stop(counts)


class Throttle:
    """Says yes at most once per ``interval`` seconds, the first time at once: reporters are
    called about ten times a second and show or write less often."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True


class _Periodic(Reporter):
    def __init__(self, interval: float) -> None:
        self._throttle = Throttle(interval)

    def update(self, counts: Counts) -> None:
        if self._throttle.due():
            self._emit_all(counts)

    def stop(self, counts: Counts) -> None:
        self._emit_all(counts)

    def _emit_all(self, counts: Counts) -> None:
        """One line for the run; with several ensembles, one more for each."""
        self.emit(counts.line())
        if len(counts.total) > 1:
            for name in counts.total:
                self.emit(f"  {name}: {counts.line(name)}")

    def emit(self, line: str) -> None:
        raise NotImplementedError


class PlainReporter(_Periodic):
    def __init__(self, interval: float, stream: TextIO | None = None) -> None:
        super().__init__(interval)
        self.stream = stream or sys.stderr

    def emit(self, line: str) -> None:
        print(f"[el] {line}", file=self.stream, flush=True)


class LogReporter(_Periodic):
    def emit(self, line: str) -> None:
        log.info("%s", line)


class RichReporter(Reporter):
    """One progress bar per ensemble, with failures, rate and ETA."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[running]} running"),
            TextColumn("{task.fields[queued]} queued"),
            TextColumn("{task.fields[rate]:.1f}/s"), TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream or sys.stderr), transient=False)
        self._bars: dict[str, TaskID] = {}

    def start(self, counts: Counts) -> None:
        for name, total in counts.total.items():
            self._bars[name] = self._progress.add_task(name, total=total, failed=0, running=0,
                                                       queued=0, rate=0.0)
        self._progress.start()

    def update(self, counts: Counts) -> None:
        for name, bar in self._bars.items():
            self._progress.update(bar, completed=counts.finished(name),
                                  failed=counts.failed.get(name, 0),
                                  running=counts.running_by.get(name, 0),
                                  queued=counts.queued_by.get(name, 0),
                                  rate=counts.rate(name))

    def stop(self, counts: Counts) -> None:
        self.update(counts)
        self._progress.stop()


def make_reporter(interval: float, *, interactive: bool | None = None) -> Reporter:
    """A rich display on a terminal, plain periodic lines otherwise."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return RichReporter() if interactive else PlainReporter(interval)
