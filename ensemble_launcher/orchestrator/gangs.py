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

from ensemble_launcher.comm import Hold, Message, Release, RunHeld
from ensemble_launcher.ensemble.programs import command_argv
from ensemble_launcher.executors.mpi import MpiLaunch, split_per_rank
from ensemble_launcher.orchestrator.wire import WireTask
from ensemble_launcher.scheduler import spread_gpu_ids

log = logging.getLogger("ensemble_launcher")


@dataclass
class _Gang:
    key: int
    wire: WireTask
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
        self._queue: deque[tuple[int, WireTask]] = deque()
        self._current: _Gang | None = None
        self._next_member = 0

    @staticmethod
    def wants(wire: WireTask) -> bool:
        return wire.nnodes > 1

    def offer(self, key: int, wire: WireTask) -> None:
        self._queue.append((key, wire))

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    def advance(self, workers: dict[bytes, tuple[str, list[int], list[str]]]
                ) -> tuple[int, WireTask] | None:
        """Start reserving the next task if none is being reserved. ``workers`` maps the
        live workers to (host, cpus, gpus). Returns a task that can never run here (fewer
        live workers than its nnodes), to be reported as failed."""
        if self._current is not None or not self._queue:
            return None
        key, wire = self._queue[0]
        nnodes = wire.nnodes
        names = list(workers)
        if len(names) < nnodes:
            return self._queue.popleft()
        start = self._next_member % len(names)
        members = (names[start:] + names[:start])[:nnodes]
        self._next_member += 1
        host, cpus, gpus = workers[members[0]]
        need_cpus = max(wire.ppn, len(wire.cpu_affinity or []))
        need_gpus = max(wire.ppn * int(wire.ngpus_per_process), len(wire.gpu_affinity or []))
        gang = _Gang(key, wire, members, list(wire.cpu_affinity or cpus[:need_cpus]),
                     list(wire.gpu_affinity or spread_gpu_ids(gpus, need_gpus)))
        self._queue.popleft()
        self._current = gang
        for member in members:
            self._send(member, Hold(key, gang.cpus, gang.gpus))
        return None

    def held(self, member: bytes, key: int,
             hosts: dict[bytes, str]) -> tuple[bytes, int, WireTask] | None:
        """A member reserved its share; when all have, return (leader, key, task) to run."""
        gang = self._current
        if gang is None or gang.key != key:
            return None
        gang.held.add(member)
        if len(gang.held) < len(gang.members) or gang.running:
            return None
        gang.running = True
        gang.hosts = [hosts[m] for m in gang.members]
        wire = gang.wire._replace(command=self._command(gang.wire, gang.hosts, gang))
        self._send(gang.members[0], RunHeld(key, wire))
        return gang.members[0], key, wire

    def _command(self, wire: WireTask, hosts: list[str], gang: _Gang) -> list[str]:
        if self._mpi is None:
            self._mpi = self._make_mpi()
        ppn = wire.ppn
        return self._mpi.command(command_argv(wire.command), hosts, ppn,
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

    def cancel(self, key: int) -> bool:
        """Drop a task queued or being reserved here (its members free their share);
        True if it was. A task that runs already is the leader's to stop."""
        for i, (queued, _) in enumerate(self._queue):
            if queued == key:
                del self._queue[i]
                return True
        gang = self._current
        if gang is None or gang.key != key or gang.running:
            return False
        for member in gang.members:
            self._send(member, Release(key))
        self._current = None
        return True
