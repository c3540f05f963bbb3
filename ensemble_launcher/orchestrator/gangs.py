"""Multi-node tasks (``nnodes > 1``): reserve cores on several workers, then run once.

    master                                       workers (one per node of the task)
      queue the task --Hold(key, cpus, gpus)-->  each places a reservation like a task and,
                     <--Held(key, cpus, gpus)--  once its cores are free, reports it
      all held:      --RunHeld(key, task)----->  the first (leader) runs the MPI command,
                                                 whose ranks reach the others' nodes
      result back:   --Release(key)----------->  the others free their reservation

One task is reserved at a time, so two multi-node tasks can never each hold part of what
the other waits for. The same core and GPU ids are asked of every node, so one binding
list fits all of them (nodes of a job are alike).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ensemble_launcher.comm import Hold, Message, Release, RunHeld
from ensemble_launcher.ensemble.programs import command_argv
from ensemble_launcher.executors.mpi import MpiLaunch, split_per_rank
from ensemble_launcher.scheduler import spread_gpu_ids

log = logging.getLogger("ensemble_launcher")

NNODES, PPN, NGPUS, CPU_AFFINITY, GPU_AFFINITY, COMMAND = 6, 7, 8, 9, 10, 3


@dataclass
class _Gang:
    key: int
    wire: list[Any]
    members: list[bytes]
    cpus: list[int]
    gpus: list[str]
    held: set[bytes] = field(default_factory=set)
    running: bool = False
    hosts: list[str] = field(default_factory=list)


class GangScheduler:
    """The master's book of multi-node tasks; ``send`` delivers a message to a child."""

    def __init__(self, send: Callable[[bytes, Message], None],
                 mpi: Callable[[], MpiLaunch]) -> None:
        self._send = send
        self._make_mpi = mpi
        self._mpi: MpiLaunch | None = None
        self._queue: deque[tuple[int, list[Any]]] = deque()
        self._current: _Gang | None = None
        self._next_member = 0

    @staticmethod
    def wants(wire: list[Any]) -> bool:
        return wire[NNODES] > 1

    def offer(self, key: int, wire: list[Any]) -> None:
        self._queue.append((key, wire))

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    def advance(self, workers: dict[bytes, tuple[str, list[int], list[str]]]
                ) -> tuple[int, list[Any]] | None:
        """Start reserving the next task if none is being reserved. ``workers`` maps the
        live workers to (host, cpus, gpus). Returns a task that can never run here (fewer
        live workers than its nnodes), to be reported as failed."""
        if self._current is not None or not self._queue:
            return None
        key, wire = self._queue[0]
        nnodes = wire[NNODES]
        names = list(workers)
        if len(names) < nnodes:
            return self._queue.popleft()
        start = self._next_member % len(names)
        members = (names[start:] + names[:start])[:nnodes]
        self._next_member += 1
        host, cpus, gpus = workers[members[0]]
        need_cpus = max(wire[PPN], len(wire[CPU_AFFINITY] or []))
        need_gpus = max(wire[PPN] * int(wire[NGPUS]), len(wire[GPU_AFFINITY] or []))
        gang = _Gang(key, wire, members, list(wire[CPU_AFFINITY] or cpus[:need_cpus]),
                     list(wire[GPU_AFFINITY] or spread_gpu_ids(gpus, need_gpus)))
        self._queue.popleft()
        self._current = gang
        for member in members:
            self._send(member, Hold(key, gang.cpus, gang.gpus))
        return None

    def held(self, member: bytes, key: int,
             hosts: dict[bytes, str]) -> tuple[bytes, int, list[Any]] | None:
        """A member reserved its share; when all have, return (leader, key, task) to run."""
        gang = self._current
        if gang is None or gang.key != key:
            return None
        gang.held.add(member)
        if len(gang.held) < len(gang.members) or gang.running:
            return None
        gang.running = True
        gang.hosts = [hosts[m] for m in gang.members]
        wire = list(gang.wire)
        wire[COMMAND] = self._command(wire, gang.hosts, gang)
        self._send(gang.members[0], RunHeld(key, wire))
        return gang.members[0], key, wire

    def _command(self, wire: list[Any], hosts: list[str], gang: _Gang) -> list[str]:
        if self._mpi is None:
            self._mpi = self._make_mpi()
        ppn = wire[PPN]
        return self._mpi.command(command_argv(wire[COMMAND]), hosts, ppn,
                                 split_per_rank(gang.cpus, ppn), split_per_rank(gang.gpus, ppn))

    def finished(self, key: int) -> str | None:
        """The task's result arrived: the other members free their share. Returns the
        task's hosts, comma-separated, to record."""
        gang = self._current
        if gang is None or gang.key != key:
            return None
        for member in gang.members[1:]:
            self._send(member, Release(key))
        self._current = None
        return ",".join(gang.hosts)

    def member_lost(self, member: bytes) -> int | None:
        """A member is gone: give up the reservation; return the key if it had not started
        (the caller reports it lost, so that it runs again)."""
        gang = self._current
        if gang is None or member not in gang.members:
            return None
        for other in gang.members:
            if other != member:
                self._send(other, Release(gang.key))
        self._current = None
        return None if gang.running else gang.key
