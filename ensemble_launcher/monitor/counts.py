"""Live counts of a run, per ensemble, kept by the root as results arrive."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Counts:
    total: dict[str, int | None]
    done: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    not_run: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    running_by: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> int:
        """Tasks handed out and not finished (running, or queued on a node)."""
        return sum(self.running_by.values())

    def finished(self, ensemble: str | None = None) -> int:
        """Tasks with a final result: succeeded, failed, or not run."""
        buckets = (self.done, self.failed, self.not_run)
        if ensemble is not None:
            return sum(b.get(ensemble, 0) for b in buckets)
        return sum(sum(b.values()) for b in buckets)

    def grand_total(self) -> int | None:
        sizes = list(self.total.values())
        return sum(n for n in sizes if n is not None) if None not in sizes else None

    def rate(self, ensemble: str | None = None) -> float:
        elapsed = time.monotonic() - self.started_at
        return self.finished(ensemble) / elapsed if elapsed > 0 else 0.0

    def eta(self, ensemble: str | None = None) -> float | None:
        total = self.grand_total() if ensemble is None else self.total.get(ensemble)
        rate = self.rate(ensemble)
        if total is None or rate <= 0:
            return None
        return max(0.0, (total - self.finished(ensemble)) / rate)

    def line(self, ensemble: str | None = None) -> str:
        """One plain status line (of the run, or of one ensemble): finished/total, failed,
        running, pending, tasks/s, ETA."""
        def of(bucket: dict[str, int]) -> int:
            return sum(bucket.values()) if ensemble is None else bucket.get(ensemble, 0)

        total = self.grand_total() if ensemble is None else self.total.get(ensemble)
        finished, running = self.finished(ensemble), of(self.running_by)
        parts = [f"{finished}/{total if total is not None else '?'} finished",
                 f"{of(self.failed)} failed"]
        if of(self.retried):
            parts.append(f"{of(self.retried)} retried")
        if of(self.not_run):
            parts.append(f"{of(self.not_run)} not run")
        parts.append(f"{running} running")
        if total is not None:
            parts.append(f"{max(0, total - finished - running)} pending")
        parts.append(f"{self.rate(ensemble):.1f} tasks/s")
        eta = self.eta(ensemble)
        if eta is not None:
            parts.append(f"ETA {clock(eta)}")
        return ", ".join(parts)


def clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
