"""Live counts of a run, per ensemble, kept by the root as results arrive.

A task handed to a node is *queued* there until it starts, then *running*: the root
counts what it handed out, and each node reports what runs on it (see
``NodeWorker.running_by_ensemble``), so the two are told apart without a message per task."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ensemble_launcher.states import BlockRecord


@dataclass(slots=True)
class Counts:
    total: dict[str, int | None]
    done: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    not_run: dict[str, int] = field(default_factory=dict)
    cancelled: dict[str, int] = field(default_factory=dict)
    tagged: dict[tuple[str, str], int] = field(default_factory=dict)
    """Final results of tasks with a tag and no ensemble (a cluster's), by (tag, state):
    what a cluster's first rule starts its counts of tag groups from."""
    retried: dict[str, int] = field(default_factory=dict)
    handed_out: dict[str, int] = field(default_factory=dict)
    """Handed to a node and not finished (kept by the Ledger): running, or queued there."""
    running_now: dict[str, int] = field(default_factory=dict)
    """Running now, as the nodes last reported (about ten times a second)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Finished in an earlier run and not run again by this resume."""
    blocks: dict[int, BlockRecord] = field(default_factory=dict)
    """The blocks (batch jobs) of a provider run by index, each as last recorded."""
    started_at: float = field(default_factory=time.monotonic)

    def submitted(self, ensemble: str | None, count: int = 1) -> None:
        """``count`` more tasks of ``ensemble`` (a cluster's tasks come while it runs)."""
        name = ensemble or "tasks"
        total = self.total.get(name, 0)
        if total is not None:
            self.total[name] = total + count

    @property
    def running_by(self) -> dict[str, int]:
        """Tasks started on a node and not finished, per ensemble."""
        now = self.running_now
        return {name: min(n, now.get(name, 0)) for name, n in self.handed_out.items()}

    @property
    def queued_by(self) -> dict[str, int]:
        """Tasks handed to a node that have not started there yet, per ensemble."""
        now = self.running_now
        return {name: n - min(n, now.get(name, 0)) for name, n in self.handed_out.items()}

    @property
    def running(self) -> int:
        return sum(self.running_by.values())

    def finished(self, ensemble: str | None = None, *, this_run: bool = False) -> int:
        """Tasks with a final result: succeeded, failed, not run, or (unless ``this_run``)
        skipped by a resume."""
        buckets = (self.done, self.failed, self.not_run, self.cancelled) if this_run else \
            (self.done, self.failed, self.not_run, self.cancelled, self.skipped)
        if ensemble is not None:
            return sum(b.get(ensemble, 0) for b in buckets)
        return sum(sum(b.values()) for b in buckets)

    def grand_total(self) -> int | None:
        sizes = list(self.total.values())
        return sum(n for n in sizes if n is not None) if None not in sizes else None

    def rate(self, ensemble: str | None = None) -> float:
        """Tasks finished per second by this run (skipped ones took no time)."""
        elapsed = time.monotonic() - self.started_at
        return self.finished(ensemble, this_run=True) / elapsed if elapsed > 0 else 0.0

    def eta(self, ensemble: str | None = None) -> float | None:
        total = self.grand_total() if ensemble is None else self.total.get(ensemble)
        rate = self.rate(ensemble)
        if total is None or rate <= 0:
            return None
        return max(0.0, (total - self.finished(ensemble)) / rate)

    def line(self, ensemble: str | None = None) -> str:
        """One plain status line (of the run, or of one ensemble): finished/total, failed,
        running, queued on a node (when any), pending, tasks/s, ETA."""
        def of(bucket: dict[str, int]) -> int:
            return sum(bucket.values()) if ensemble is None else bucket.get(ensemble, 0)

        total = self.grand_total() if ensemble is None else self.total.get(ensemble)
        finished, running, queued = self.finished(ensemble), of(self.running_by), \
            of(self.queued_by)
        parts = [f"{finished}/{total if total is not None else '?'} finished",
                 f"{of(self.failed)} failed"]
        if of(self.retried):
            parts.append(f"{of(self.retried)} retried")
        if of(self.not_run):
            parts.append(f"{of(self.not_run)} not run")
        if of(self.cancelled):
            parts.append(f"{of(self.cancelled)} cancelled")
        if of(self.skipped):
            parts.append(f"{of(self.skipped)} skipped (finished earlier)")
        parts.append(f"{running} running")
        if queued:
            parts.append(f"{queued} queued")
        if total is not None:
            parts.append(f"{max(0, total - finished - running - queued)} pending")
        parts.append(f"{self.rate(ensemble):.1f} tasks/s")
        eta = self.eta(ensemble)
        if eta is not None:
            parts.append(f"ETA {clock(eta)}")
        return ", ".join(parts)


def clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
