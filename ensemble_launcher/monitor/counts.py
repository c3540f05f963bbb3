"""Live counts of a run, per ensemble."""

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
    running: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def finished(self, ensemble: str | None = None) -> int:
        """Tasks with a final result: succeeded, failed, or not run."""
        buckets = (self.done, self.failed, self.not_run)
        if ensemble is not None:
            return sum(b.get(ensemble, 0) for b in buckets)
        return sum(sum(b.values()) for b in buckets)

    def grand_total(self) -> int | None:
        sizes = list(self.total.values())
        return sum(n for n in sizes if n is not None) if None not in sizes else None

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started_at
        return self.finished() / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        total, rate = self.grand_total(), self.rate()
        if total is None or rate <= 0:
            return None
        return max(0.0, (total - self.finished()) / rate)

    def line(self) -> str:
        """One plain status line, as printed every report_interval when not on a terminal."""
        total = self.grand_total()
        failed = sum(self.failed.values())
        parts = [f"{self.finished()}/{total if total is not None else '?'} finished",
                 f"{failed} failed", f"{self.running} running", f"{self.rate():.1f} tasks/s"]
        not_run, retried = sum(self.not_run.values()), sum(self.retried.values())
        if not_run:
            parts.insert(2, f"{not_run} not run")
        if retried:
            parts.insert(2, f"{retried} retried")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {_clock(eta)}")
        return ", ".join(parts)


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
