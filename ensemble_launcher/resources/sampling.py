"""What a node uses now: its CPU and memory, sampled by its worker with psutil.

A worker asks :meth:`NodeSampler.due` once per tick (ten times a second) and samples only
when the interval passed, so sampling costs its loop nothing per task; a sample itself
takes about 0.1 ms.
"""

from __future__ import annotations

import time
from typing import Any

from ensemble_launcher.states import NodeSample


class NodeSampler:
    """The samples of one node, every ``interval`` seconds. CPU use is psutil's whole-node
    ``cpu_percent()`` since the previous sample, never blocking; the first sample, due at
    once, covers only the instant since psutil was imported for it, so that the import
    does not delay the node's first task. Memory used is what is not available (total -
    available, as psutil's percent counts it), so that the page cache does not count as
    used."""

    def __init__(self, node: str, host: str, interval: float) -> None:
        self._psutil: Any = None
        self._node = node
        self._host = host
        self._interval = interval
        self._next = 0.0

    def due(self, now: float) -> bool:
        """Whether the interval passed at ``now`` (monotonic); true until the first sample."""
        return now >= self._next

    def sample(self, now: float) -> NodeSample:
        """A sample now; the next one is due ``interval`` seconds after ``now``."""
        self._next = now + self._interval
        if self._psutil is None:
            import psutil

            self._psutil = psutil
            psutil.cpu_percent()
        memory = self._psutil.virtual_memory()
        return NodeSample(time.time(), self._node, self._host,
                          float(self._psutil.cpu_percent()), memory.total - memory.available,
                          memory.total)
