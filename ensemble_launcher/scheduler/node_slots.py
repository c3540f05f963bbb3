"""Placement of tasks on one node's cores ("lanes") and GPU slots.

Every core is a lane, served by one warm runner process pinned to it. A task that needs
one core and nothing else is *queued* on a lane: up to ``depth`` such tasks may wait
there, which hides the round trip for very short tasks. Any other task (several cores,
GPUs, explicit affinity) is *exclusive*: it needs idle lanes, holds them all while it
runs, and runs through the runner of its first lane.

    place(task) -> Placement | None        release(placement)

Placement of a queued task is O(1): lanes with room sit in a round-robin deque.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ensemble_launcher.ensemble import Task


@dataclass(frozen=True, slots=True)
class Placement:
    lane: int
    cpus: tuple[int, ...]
    gpus: tuple[str, ...]
    lanes: tuple[int, ...]
    gpu_slots: tuple[int, ...] = ()
    exclusive: bool = False
    cpus_text: str = ""
    gpus_text: str = ""

    @classmethod
    def make(cls, lane: int, cpus: tuple[int, ...], gpus: tuple[str, ...],
             lanes: tuple[int, ...], gpu_slots: tuple[int, ...] = (),
             exclusive: bool = False) -> Placement:
        return cls(lane, cpus, gpus, lanes, gpu_slots, exclusive,
                   ",".join(map(str, cpus)), ",".join(gpus))


def needs_exclusive(task: Task) -> bool:
    """Tasks that cannot wait in a lane's queue: several cores, GPUs, explicit affinity, or
    a callable with a timeout (its runner may have to be killed, so it runs alone)."""
    return (task.ppn > 1 or bool(task.cpu_affinity) or bool(task.gpu_affinity)
            or task.ngpus_per_process > 0 or (task.timeout is not None and task.is_callable))


def spread_gpu_slots(gpus: Sequence[str], free: Sequence[int], need: int,
                     in_use: Sequence[int] = ()) -> list[int] | None:
    """``need`` of the ``free`` slots (indices into ``gpus``, a device id per slot), each on
    the device with the fewest slots in use (``in_use`` and those picked so far), lowest
    slot first; None when too few are free. A device id listed twice is two slots: tasks
    get devices of their own while any is idle, and a task asking for several gets
    distinct devices where there are."""
    if len(free) < need:
        return None
    busy = dict.fromkeys(gpus, 0)
    for slot in in_use:
        busy[gpus[slot]] += 1
    left, picked = list(free), []
    for _ in range(need):
        slot = min(left, key=lambda s: (busy[gpus[s]], s))
        left.remove(slot)
        busy[gpus[slot]] += 1
        picked.append(slot)
    return sorted(picked)


def spread_gpu_ids(gpus: Sequence[str], need: int) -> list[str]:
    """``need`` ids of an idle node's GPU slots (all of them if fewer), spread over
    distinct devices as :func:`spread_gpu_slots` does."""
    slots = spread_gpu_slots(gpus, range(len(gpus)), min(need, len(gpus))) or []
    return [gpus[s] for s in slots]


def _libc_sched_getcpu() -> Callable[[], int]:
    try:
        return ctypes.CDLL(None, use_errno=True).sched_getcpu  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return lambda: -1


#: The CPU this thread runs on now (-1 where the system does not say).
current_cpu: Callable[[], int] = _libc_sched_getcpu()


class NodeSlots:
    """``prefer_our_cpu``: an idle lane on the CPU this process runs on takes a one-core
    task before other idle lanes. Where lanes are pinned runners, that runner wakes on our
    CPU as we go back to waiting; one on another, idle, CPU needs a cross-CPU wake-up,
    which on a virtual machine adds hundreds of microseconds to a task's round trip."""

    def __init__(self, cpus: Sequence[int], gpus: Sequence[str], depth: int = 1, *,
                 prefer_our_cpu: bool = False) -> None:
        self.cpus = tuple(cpus)
        self._our_cpu = current_cpu if prefer_our_cpu else None
        self.gpus = tuple(gpus)
        self._lane_of_cpu = {cpu: lane for lane, cpu in enumerate(self.cpus)}
        n = len(self.cpus)
        self.queued = [0] * n
        self._held = [False] * n
        self._gpu_free = [True] * len(self.gpus)
        self._depth = max(1, depth)
        self._open: deque[int] = deque(range(n))
        self._in_open = [True] * n
        self._single = [Placement.make(lane, (cpu,), (), (lane,))
                        for lane, cpu in enumerate(self.cpus)]
        self._room = self._depth * n
        """What :meth:`room` says, kept up to date as tasks come and go: a node asks for it
        on every turn of its loop."""

    @property
    def depth(self) -> int:
        return self._depth

    @depth.setter
    def depth(self, value: int) -> None:
        value = max(1, value)
        if value != self._depth:
            self._depth = value
            for lane in range(len(self.cpus)):
                self._maybe_open(lane)
            self._room = sum(map(self._share, range(len(self.cpus))))

    def room(self) -> int:
        """How many more one-core tasks the lanes would queue now."""
        return self._room

    def _share(self, lane: int) -> int:
        """How many more one-core tasks ``lane`` would queue now."""
        queued = self.queued[lane]
        return self._depth - queued if not self._held[lane] and queued < self._depth else 0

    def capacity(self) -> int:
        """How many one-core tasks the lanes hold when full: the prefetch a node asks for
        on top of its free room, about 20 ms of work per core (one task per core when
        tasks are long)."""
        return self._depth * len(self.cpus)

    def has_room(self) -> bool:
        """Whether a lane would queue one more one-core task now. A node takes work only
        then: what it cannot start yet waits in its source, in priority order, where a
        task of a higher priority that comes later still overtakes it."""
        open_lanes = self._open
        while open_lanes:
            lane = open_lanes[0]
            if not self._held[lane] and self.queued[lane] < self._depth:
                return True
            open_lanes.popleft()
            self._in_open[lane] = False
        return False

    def place(self, task: Task) -> Placement | None:
        if needs_exclusive(task):
            return self._place_exclusive(task)
        return self._place_queued()

    def _place_queued(self) -> Placement | None:
        open_lanes = self._open
        while open_lanes:
            lane = open_lanes.popleft()
            if self._held[lane] or self.queued[lane] >= self._depth:
                self._in_open[lane] = False
                continue
            if self._our_cpu is not None and self.queued[lane] == 0:
                lane = self._idle_lane_on(self._our_cpu(), lane)
            self.queued[lane] += 1
            self._room -= 1
            if self.queued[lane] < self._depth:
                open_lanes.append(lane)
            else:
                self._in_open[lane] = False
            return self._single[lane]
        return None

    def _idle_lane_on(self, cpu: int, lane: int) -> int:
        """The idle open lane of ``cpu`` if there is one (``lane``, taken from the open
        ones for this task, then goes back to their front); else ``lane``."""
        other = self._lane_of_cpu.get(cpu)
        if other is None or other == lane or self.queued[other] or self._held[other] or \
                not self._in_open[other]:
            return lane
        self._open.remove(other)
        self._open.appendleft(lane)
        return other

    def _place_exclusive(self, task: Task) -> Placement | None:
        if task.cpu_affinity:
            lanes = [self._lane_of_cpu[c] for c in task.cpu_affinity]
            if not all(self._lane_idle(lane) for lane in lanes):
                return None
        else:
            lanes = [lane for lane in range(len(self.cpus)) if self._lane_idle(lane)][:task.ncpus]
            if len(lanes) < task.ncpus:
                return None
        gpu_slots = self._pick_gpus(task)
        if gpu_slots is None:
            return None
        for lane in lanes:
            self._room -= self._share(lane)
            self._held[lane] = True
        for slot in gpu_slots:
            self._gpu_free[slot] = False
        self.queued[lanes[0]] += 1
        return Placement.make(lanes[0], tuple(self.cpus[lane] for lane in lanes),
                         tuple(self.gpus[s] for s in gpu_slots), tuple(lanes), tuple(gpu_slots),
                         exclusive=True)

    def _lane_idle(self, lane: int) -> bool:
        return not self._held[lane] and self.queued[lane] == 0

    def _pick_gpus(self, task: Task) -> list[int] | None:
        if task.gpu_affinity:
            slots: list[int] = []
            for gpu in task.gpu_affinity:
                slot = next((s for s, g in enumerate(self.gpus)
                             if g == gpu and self._gpu_free[s] and s not in slots), None)
                if slot is None:
                    return None
                slots.append(slot)
            return slots
        return self._spread_gpus(task.ngpus)

    def _spread_gpus(self, need: int) -> list[int] | None:
        free = [s for s, ok in enumerate(self._gpu_free) if ok]
        in_use = [s for s, ok in enumerate(self._gpu_free) if not ok]
        return spread_gpu_slots(self.gpus, free, need, in_use)

    def release(self, placement: Placement) -> None:
        lane = placement.lane
        if placement.exclusive:
            self.queued[lane] -= 1
            for lane in placement.lanes:
                self._held[lane] = False
                self._room += self._share(lane)
            for slot in placement.gpu_slots:
                self._gpu_free[slot] = True
            for lane in placement.lanes:
                self._maybe_open(lane)
        else:
            before = self._share(lane)
            self.queued[lane] -= 1
            self._room += self._share(lane) - before
            self._maybe_open(lane)

    def _maybe_open(self, lane: int) -> None:
        if not self._in_open[lane] and not self._held[lane] and self.queued[lane] < self._depth:
            self._in_open[lane] = True
            self._open.append(lane)
