"""Profiles of a run, written to ``run_dir/profiles/``.

``profile="basic"``    basic.json: task runtimes and communication latencies (from the
                       root handing a task out to its start; from its end to its result
                       reaching the root), as count/mean/std/min/max/sum.
``profile="timeline"`` timeline-<name>.json per master and worker: the same statistics
                       for each step of their loops (receive, assign, fill, wait, ...).
Both                   trace.json: a Chrome/Perfetto trace of every task, one process
                       track per node and one thread track per core (ui.perfetto.dev).

The trace is built from the journal after the run, so it costs the run nothing; the
statistics are running sums (Welford), so they cost O(1) memory.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


class Stats:
    __slots__ = ("count", "mean", "_m2", "total", "low", "high")

    def __init__(self) -> None:
        self.count, self.mean, self._m2, self.total = 0, 0.0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)

    def to_dict(self) -> dict[str, float]:
        std = math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else 0.0
        return {"count": self.count, "mean": self.mean, "std": std, "sum": self.total,
                "min": self.low if self.count else 0.0, "max": self.high if self.count else 0.0}


class BasicProfile:
    """Task runtimes and the latencies around them, seen from the root."""

    def __init__(self) -> None:
        self.stats: dict[str, Stats] = defaultdict(Stats)

    def task_done(self, handed_out: float, start: float, end: float, arrived: float) -> None:
        self.stats["task_runtime_s"].add(end - start)
        self.stats["dispatch_latency_s"].add(max(0.0, start - handed_out))
        self.stats["result_latency_s"].add(max(0.0, arrived - end))
        self.stats["overhead_per_task_s"].add(max(0.0, (arrived - handed_out) - (end - start)))

    def write(self, directory: Path) -> Path:
        return _write_json(directory / "basic.json",
                           {name: s.to_dict() for name, s in sorted(self.stats.items())})


class Timeline:
    """Time spent in each named step of a loop: ``mark(step)`` closes the step that
    started at the previous mark."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats: dict[str, Stats] = defaultdict(Stats)
        self._last = time.perf_counter()

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.stats[step].add(now - self._last)
        self._last = now

    def write(self, directory: Path) -> Path:
        return _write_json(directory / f"timeline-{self.name}.json",
                           {"name": self.name, "unit": "s",
                            "events": {k: s.to_dict() for k, s in sorted(self.stats.items())}})


class NoTimeline:
    """Stand-in when profiling is off: marks cost one empty call."""

    def mark(self, step: str) -> None:
        pass

    def write(self, directory: Path) -> None:
        pass


def timeline_for(name: str, profile: str | None) -> Timeline | NoTimeline:
    return Timeline(name) if profile == "timeline" else NoTimeline()


def write_trace(run_dir: Path, path: Path) -> Path:
    """A Chrome/Perfetto trace of every attempt in the journal: pid = node, tid = core.
    The root writes it after the run; the tree's processes, which import this module for
    their timelines, never load the store."""
    from ensemble_launcher.store.queries import read_journal

    events: list[dict[str, Any]] = []
    hosts: dict[str, int] = {}
    slots: set[tuple[int, int]] = set()
    with read_journal(run_dir) as journal:
        origin = journal.first_start() or 0
        for task_id, ensemble, attempt, state, reason, start, end, host, cpus, gpus in \
                journal.ran(attempts=True):
            pid = hosts.setdefault(host or "?", len(hosts) + 1)
            tid = int(cpus.split(",")[0]) if cpus else -1
            slots.add((pid, tid))
            events.append({
                "name": task_id, "cat": state, "ph": "X", "pid": pid, "tid": tid,
                "ts": round((start - origin) * 1e6, 3),
                "dur": round(max(0.0, end - start) * 1e6, 3),
                "args": {"ensemble": ensemble, "attempt": attempt, "state": state,
                         "reason": reason, "cpus": cpus, "gpus": gpus}})
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": host}}
            for host, pid in hosts.items()]
    meta += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
              "args": {"name": f"core {tid}" if tid >= 0 else "no core"}}
             for pid, tid in sorted(slots)]
    return _write_json(path, {"traceEvents": meta + events, "displayTimeUnit": "ms",
                              "otherData": {"origin_unix_time": origin}})


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path
