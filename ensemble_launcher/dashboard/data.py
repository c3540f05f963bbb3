"""What the dashboard shows, as one JSON-ready snapshot of a run, read from its directory
without writing anything there.

    journal.db   final results per ensemble and state (the progress figures, live: every
                 flush of the root commits results), when each ran and on which node (busy
                 cores over time), the failures, the slowest and the largest tasks, the
                 node samples and the rule firings
    status.json  while the run is alive: what runs and what waits on the nodes now, and
                 the run's rate (see :mod:`ensemble_launcher.monitor.status`)

Finished, succeeded and failed come from the journal even during the run, so that the page
never shows a task finished that the journal does not hold. Busy cores and node samples are
read incrementally (rows after the last one seen), so a poll of a long run reads only what
is new.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble_launcher.monitor.status import read_status
from ensemble_launcher.states import NodeSample
from ensemble_launcher.store import queries
from ensemble_launcher.store.queries import JournalReader, read_journal
from ensemble_launcher.store.result import TaskResult

#: Rows of each task table on the page.
TABLE_ROWS = 50
#: Rows of the slowest and the largest tasks.
TOP_ROWS = 15
#: Points of a time series sent to the page (busy cores; node samples per node).
POINTS = 160
#: More nodes than this are drawn as their sum.
MAX_NODES = 12
_TEXT_TAIL = 2000
_FAILED_STATES = ("failed", "timed_out", "lost")


def task_record(result: TaskResult) -> dict[str, Any]:
    """A task as the page shows it. The value is left out: unpickling it would run the
    task's code in the dashboard."""
    return {
        "task_id": result.task_id, "ensemble": result.ensemble, "state": result.state,
        "reason": result.reason, "attempt": result.attempt, "returncode": result.returncode,
        "signal": result.signal, "exception": (result.exception or "")[:_TEXT_TAIL],
        "stderr": (result.stderr or "")[-_TEXT_TAIL:], "start_time": result.start_time,
        "end_time": result.end_time, "duration": result.duration, "host": result.host,
        "cpu_user": result.cpu_user, "cpu_system": result.cpu_system,
        "max_rss": result.max_rss,
    }


@dataclass
class _BusyHistory:
    """The busy periods read so far, per host, and the last journal row read."""

    after_seq: int = 0
    periods: dict[str, list[tuple[float, float, int]]] = field(
        default_factory=lambda: defaultdict(list))

    def read_new(self, journal: JournalReader) -> None:
        for period in journal.busy_periods(self.after_seq):
            self.periods[period.host or "?"].append(
                (period.start_time, period.end_time, period.cores))
            self.after_seq = period.seq

    def series(self) -> dict[str, Any]:
        """Mean busy cores per time bin, per host (or their sum beyond MAX_NODES)."""
        import numpy as np

        hosts = sorted(self.periods)
        if not hosts:
            return {"origin": None, "width": 0.0, "series": []}
        groups = {h: self.periods[h] for h in hosts} if len(hosts) <= MAX_NODES else \
            {"all nodes": [p for h in hosts for p in self.periods[h]]}
        arrays = {name: np.array(rows, dtype=float) for name, rows in groups.items()}
        origin = min(float(a[:, 0].min()) for a in arrays.values())
        end = max(float(a[:, 1].max()) for a in arrays.values())
        width = max((end - origin) / POINTS, 1e-3)
        edges = origin + width * np.arange(POINTS + 1)
        return {"origin": origin, "width": width,
                "series": [{"name": name, "values": _mean_busy(a, edges).round(3).tolist()}
                           for name, a in arrays.items()]}


def _mean_busy(periods: Any, edges: Any) -> Any:
    """The mean of the busy-cores step function over each bin between ``edges``: the
    integral of busy cores is piecewise linear between events, so interpolating it at
    the edges is exact."""
    import numpy as np

    times = np.concatenate([periods[:, 0], periods[:, 1]])
    steps = np.concatenate([periods[:, 2], -periods[:, 2]])
    order = np.argsort(times, kind="stable")
    times, busy = times[order], np.cumsum(steps[order])
    integral = np.concatenate([[0.0], np.cumsum(busy[:-1] * np.diff(times))])
    at_edges = np.interp(edges, times, integral)
    return np.diff(at_edges) / np.diff(edges)


#: How far before the last sample seen a live read starts: samples reach the journal a
#: tick or two after their node took them, and nodes' clocks differ a little.
_SAMPLE_LAG = 2.0


@dataclass
class _NodeHistory:
    """The node samples read so far, per node (journals without them have none)."""

    last_at: float | None = None
    samples: dict[str, dict[float, NodeSample]] = field(default_factory=lambda: defaultdict(dict))

    def read_new(self, journal: JournalReader) -> None:
        since = None if self.last_at is None else self.last_at - _SAMPLE_LAG
        for sample in journal.node_samples(since):
            self.samples[sample.node][sample.at] = sample
            self.last_at = sample.at if self.last_at is None else max(self.last_at, sample.at)

    def series(self) -> list[dict[str, Any]]:
        """Per node (the first MAX_NODES by name), at most about POINTS samples, the
        last one always among them."""
        out = []
        for node in sorted(self.samples)[:MAX_NODES]:
            rows = sorted(self.samples[node].values())
            shown = rows[::max(1, len(rows) // POINTS)]
            if shown[-1] is not rows[-1]:
                shown.append(rows[-1])
            out.append({"node": node, "host": rows[-1].host, "at": [r.at for r in shown],
                        "cpu": [r.cpu_percent for r in shown],
                        "mem": [100.0 * r.mem_used / r.mem_total if r.mem_total else None
                                for r in shown],
                        "mem_total": rows[-1].mem_total})
        return out


class RunView:
    """Snapshots of one run directory, for the page's polls (thread-safe: the server
    answers each request on a thread of its own)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()
        self._busy = _BusyHistory()
        self._nodes = _NodeHistory()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            status = read_status(self.run_dir, firings=TABLE_ROWS)
            with read_journal(self.run_dir) as journal:
                counts = journal.counts()
                cluster = bool(journal.meta().get("launcher_config", {}).get("cluster"))
                spans = {s.ensemble or "tasks": s for s in journal.ensemble_spans()}
                self._busy.read_new(journal)
                self._nodes.read_new(journal)
                failures = journal.failed_results(TABLE_ROWS)
                slowest = journal.slowest_results(TOP_ROWS)
                largest = journal.largest_results(TOP_ROWS)
            live = status.state == "running"
            return {
                "run": {"dir": str(self.run_dir.resolve()), "state": status.state,
                        "started": status.started, "finished": status.finished,
                        "now": time.time(), "rate": status.rate, "eta": status.eta},
                "ensembles": _progress(status, counts, spans, live, cluster),
                "busy": self._busy.series(),
                "nodes": self._nodes.series(),
                "failures": [task_record(r) for r in failures],
                "failures_total": sum(n for _, state, n in counts if state in _FAILED_STATES),
                "slowest": [task_record(r) for r in slowest],
                "largest": [task_record(r) for r in largest],
                "firings": [f._asdict() for f in status.firings],
                "firings_total": status.firings_total,
            }

    def search(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        with read_journal(self.run_dir) as journal:
            return [task_record(r) for r in journal.results_matching(text, TABLE_ROWS)]


def _progress(status: Any, counts: list[queries.EnsembleCount],
              spans: dict[str, queries.EnsembleSpan], live: bool,
              cluster: bool) -> list[dict[str, Any]]:
    """Per ensemble: finished figures from the journal, what runs and waits now from the
    live status (nothing once the run is over). A cluster's total is unknown: clients
    submit while it runs."""
    by_state: dict[str, dict[str, int]] = defaultdict(dict)
    for ensemble, state, n in counts:
        by_state[ensemble or "tasks"][state] = n
    out = []
    for ensemble in status.ensembles:
        states = by_state.get(ensemble.name, {})
        finished = sum(states.values())
        running, queued = (ensemble.running, ensemble.queued) if live else (0, 0)
        total = None if cluster else ensemble.total
        span = spans.get(ensemble.name)
        out.append({
            "name": ensemble.name, "total": total, "finished": finished,
            "succeeded": states.get("succeeded", 0),
            "failed": sum(states.get(s, 0) for s in _FAILED_STATES),
            "not_run": states.get("not_run", 0), "cancelled": states.get("cancelled", 0),
            "running": running, "queued": queued,
            "pending": None if total is None else max(0, total - finished - running - queued),
            "rate": _rate(span),
        })
    return out


def _rate(span: queries.EnsembleSpan | None) -> float:
    if span is None or not span.number or span.first_start is None or span.last_end is None \
            or span.last_end <= span.first_start:
        return 0.0
    return span.number / (span.last_end - span.first_start)
