"""A run's status, read from its run directory: during the run and after it.

    status.json  the live root's counts (done, failed, not run, running, queued, skipped:
                 finished in an earlier run that this resume does not run again, per
                 ensemble), rewritten every report_interval (at most 5 s) by
                 StatusFileReporter; used while the run is alive, so that all figures are
                 one snapshot
    journal.db   final results per ensemble and state, for a run that is over; the
                 firings of the event rules, live (each flush commits them) and after
    meta         ensemble sizes, start and end times

``el status RUNDIR`` prints :func:`read_status`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from ensemble_launcher.monitor.counts import Counts, clock
from ensemble_launcher.monitor.progress import Reporter, Throttle
from ensemble_launcher.store.queries import EnsembleCount, Firing, Span, read_journal

STATUS_NAME = "status.json"

RunState = Literal["running", "finished", "interrupted", "stopped"]

log = logging.getLogger("ensemble_launcher")


class StatusFileReporter(Reporter):
    """Writes the live counts to ``run_dir/status.json`` (atomically) for ``el status``.

    The file is a convenience: when it cannot be written (a full disk) the run goes on
    without it, and the journal stays the record."""

    def __init__(self, run_dir: Path, interval: float) -> None:
        self.path = run_dir / STATUS_NAME
        self._throttle = Throttle(min(interval, 5.0))
        self._warned = False

    def update(self, counts: Counts) -> None:
        if self._throttle.due():
            self._write(counts, live=True)

    def stop(self, counts: Counts) -> None:
        self._write(counts, live=False)

    def _write(self, counts: Counts, live: bool) -> None:
        data = {"pid": os.getpid(), "time": time.time(), "live": live,
                "running": counts.running_by, "done": counts.done, "failed": counts.failed,
                "not_run": counts.not_run, "cancelled": counts.cancelled,
                "skipped": counts.skipped,
                "queued": counts.queued_by, "rate": counts.rate()}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not self._warned:
                self._warned = True
                log.info("cannot write %s (%s); el status reads the journal instead",
                         self.path, exc)


@dataclass
class EnsembleStatus:
    name: str
    total: int | None
    done: int
    failed: int
    not_run: int
    running: int
    """Started on a node and not finished."""
    skipped: int = 0
    """Finished in an earlier run; this resume does not run them again."""
    queued: int = 0
    """Handed out to a node and waiting there for a core to start on."""
    cancelled: int = 0

    @property
    def pending(self) -> int | None:
        if self.total is None:
            return None
        return max(0, self.total - self.finished - self.running - self.queued)

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.not_run + self.cancelled + self.skipped


@dataclass
class RunStatus:
    run_dir: str
    state: RunState
    ensembles: list[EnsembleStatus]
    rate: float
    eta: float | None
    started: float | None
    finished: float | None
    firings: list[Firing] = field(default_factory=list)
    """The most recent firings of the event rules, newest last."""
    firings_total: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        for entry, ensemble in zip(data["ensembles"], self.ensembles, strict=True):
            entry["pending"] = ensemble.pending
        data["firings"] = [{**f._asdict(), "since_start": f.at - self._origin()}
                           for f in self.firings]
        return data

    def _origin(self) -> float:
        """What firing times are counted from: the run's start, else the first firing."""
        if self.started is not None:
            return self.started
        return self.firings[0].at if self.firings else 0.0

    def lines(self) -> list[str]:
        head = f"{self.run_dir}: {self.state}, {self.rate:.1f} tasks/s"
        if self.eta is not None and self.state == "running":
            head += f", ETA {clock(self.eta)}"
        out = [head]
        for e in self.ensembles:
            skipped = f"{e.skipped} skipped (finished earlier), " if e.skipped else ""
            out.append(f"  {e.name}: {e.finished}/"
                       f"{e.total if e.total is not None else '?'} finished: {e.done} done, "
                       f"{e.failed} failed, {e.not_run} not run, "
                       f"{f'{e.cancelled} cancelled, ' if e.cancelled else ''}{skipped}{e.running} "
                       f"running, {f'{e.queued} queued, ' if e.queued else ''}"
                       f"{e.pending if e.pending is not None else '?'} pending")
        return out + self._firing_lines()

    def _firing_lines(self) -> list[str]:
        if not self.firings:
            return []
        shown = len(self.firings)
        which = f"the last {shown}, newest last" if shown < self.firings_total \
            else "newest last"
        out = [f"  rule firings: {self.firings_total} ({which})"]
        for f in self.firings:
            rule = f.rule if f.rule == f.trigger else f"{f.rule} [{f.trigger}]"
            detail = f": {_one_line(f.detail)}" if f.detail else ""
            out.append(f"    {_since(f.at - self._origin()):>9}  {rule} -> {f.action}{detail}")
        return out


def _one_line(text: str, most: int = 120) -> str:
    """A custom action's detail may span lines or pages; a status line holds the start."""
    text = " ".join(text.split())
    return text if len(text) <= most else text[:most - 1] + "…"


def _since(seconds: float) -> str:
    """Time since the start: tenths of a second in the first minute, then H:MM:SS."""
    if abs(seconds) < 60:
        return f"{seconds:+.1f}s"
    return ("-" if seconds < 0 else "+") + clock(abs(seconds))


def read_status(run_dir: str | os.PathLike, firings: int = 10) -> RunStatus:
    """The status of the run in ``run_dir`` with its ``firings`` most recent rule firings;
    StoreError when its journal is not one we can read (see
    :func:`~ensemble_launcher.store.journal.check_journal`)."""
    run_dir = Path(run_dir)
    journal = _read_journal(run_dir, firings)
    meta, rows, span = journal.meta, journal.counts, journal.span
    live = _live_status(run_dir, meta)
    totals: dict[str, int | None] = meta.get("ensembles", {})
    counts: dict[str, dict[str, int]] = {name: {} for name in totals}
    for ensemble, state, n in rows:
        counts.setdefault(ensemble or "tasks", {})[state] = n
    if live is not None:
        ensembles = [EnsembleStatus(name, totals.get(name), *(
            int(live.get(key, {}).get(name, 0)) for key in ("done", "failed", "not_run",
                                                            "running", "skipped",
                                                            "queued", "cancelled")))
            for name in counts]
    else:
        ensembles = [EnsembleStatus(
            name, totals.get(name), c.get("succeeded", 0),
            sum(v for s, v in c.items() if s not in ("succeeded", "not_run", "cancelled")),
            c.get("not_run", 0), 0, cancelled=c.get("cancelled", 0))
            for name, c in counts.items()]
    state = _run_state(meta, live)
    rate = _rate(span, live, state)
    remaining = sum((e.pending or 0) + e.running + e.queued for e in ensembles)
    eta = remaining / rate if rate > 0 and state == "running" else None
    return RunStatus(str(run_dir), state, ensembles, rate, eta, meta.get("started"),
                     meta.get("finished"), journal.firings, journal.firings_total)


class _JournalView(NamedTuple):
    meta: dict
    counts: list[EnsembleCount]
    span: Span
    firings: list[Firing]
    firings_total: int


def _read_journal(run_dir: Path, firings: int) -> _JournalView:
    """The run's metadata, its final results per ensemble and state, the time span of its
    results, its ``firings`` most recent rule firings and how many there are, read on the
    one connection that checked the journal, creating nothing."""
    with read_journal(run_dir, read_all=True) as journal:
        return _JournalView(journal.meta(), journal.counts(), journal.span(),
                            journal.firings(firings), journal.firing_count())


def _live_status(run_dir: Path, meta: dict) -> dict | None:
    path = run_dir / STATUS_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("live") and _pid_alive(data.get("pid", -1)) else None


def _run_state(meta: dict, live: dict | None) -> RunState:
    if live is not None and "finished" not in meta:
        return "running"
    if meta.get("interrupted"):
        return "interrupted"
    if "finished" in meta:
        return "finished"
    return "stopped"


def _rate(span: Span, live: dict | None, state: str) -> float:
    if live is not None and state == "running":
        return float(live.get("rate", 0.0))
    first, last, n = span
    return n / (last - first) if n and last and first and last > first else 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
