"""A master of the tree (``main``, or a sub-master such as ``main.m0``).

    upstream (the task stream at the root; the parent link below it)
        --take()--> Master._assign --Tasks--> children (by credit, and by route)
        --take_cancels()--> Master._cancel --Cancel--> the child that has the task
        <--record_rows()/node_lost()-- Master._receive <--ResultBatch/NodeLost-- children
        <--record_samples()-- passed up unchanged <--NodeSamples-- children

The loop is a short ``run()`` over named steps, waiting on the children's socket, the
upstream's sockets, and the launcher steps that started the children, so a child that
dies or never connects is seen within a bounded time. Children pull: each gets at most
the credit it asked for, so tasks wait at the master, not on a busy node. A task with a
``route`` goes only to the child whose subtree the route names; while that child has no
credit it waits here, parked, and the tasks behind it go on to the others.

At a provider's root the children come and go with the blocks (batch jobs) that its
``BlockPool`` decides on (``_tend_blocks``): each block's workers are added as it is
submitted, drained before its walltime, stopped when idle, and lost when its job ends.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq

from ensemble_launcher.comm import (
    Bye,
    Cancel,
    CurveKeys,
    Define,
    Drain,
    Failed,
    Halt,
    Heartbeat,
    Held,
    Hello,
    Message,
    NodeLost,
    NodeSamples,
    ParentEndpoint,
    ParentSide,
    PipeParentEndpoint,
    Request,
    ResultBatch,
    Stop,
    Tasks,
)
from ensemble_launcher.errors import LaunchError, RunAbortedError
from ensemble_launcher.executors.command import (
    GroupStop,
    begin_stop,
    stop_groups,
    sweep_stops,
    wait_groups,
)
from ensemble_launcher.executors.mpi import MpiLaunch
from ensemble_launcher.executors.runner import CANCEL_SIGNAL
from ensemble_launcher.launchers import ChildLauncher
from ensemble_launcher.launchers.base import log_tail, start_process
from ensemble_launcher.monitor.profiles import NoTimeline, Timeline
from ensemble_launcher.orchestrator.blocks import TEND_SECONDS, BlockPool
from ensemble_launcher.orchestrator.boot import (
    BLOCK_ENV,
    BOOT_ENV,
    HOSTED_ENV,
    PARENT_ENV,
    TREE_ENV,
    BootDir,
    child_environment,
)
from ensemble_launcher.orchestrator.collector import spared_collector
from ensemble_launcher.orchestrator.feeds import CANCELLED_MESSAGE, Feed, never_ran_row
from ensemble_launcher.orchestrator.gangs import GangScheduler
from ensemble_launcher.orchestrator.tree import TreeNode
from ensemble_launcher.orchestrator.wire import FunctionTable, WireTask
from ensemble_launcher.providers import BlockRequest
from ensemble_launcher.states import CANCELLED, FAILED, LOST, NOT_RUN, NodeSample, ResultRow

log = logging.getLogger("ensemble_launcher")

_TURN_SECONDS = 0.1
#: Tasks per message: small enough that a child starts on the first batch while the next
#: is on its way, large enough to amortize a message.
_BATCH = 256
#: What a worker told to stop needs besides kill_grace: to see the Stop, cancel its runners,
#: reap them and close its sockets.
_STOP_MARGIN = 3.0
#: Routed tasks parked for busy children, at most: past it we take no new task until one
#: leaves, so that a stream of tasks routed to one node cannot fill our memory.
_MAX_PARKED = 4 * _BATCH


class Upstream(Feed[WireTask], Protocol):
    """A master's feed (wire tasks), which also takes its results. ``functions`` holds the
    callables its tasks name by digest."""

    functions: FunctionTable

    def record_rows(self, rows: list[ResultRow]) -> None: ...

    def node_lost(self, name: str, host: str, keys: list[int], why: str) -> None: ...

    def report_running(self, by_ensemble: dict[str, int]) -> None: ...

    def report_started(self, keys: list[int]) -> None:
        """Tasks our subtree saw start, passed up as they come, before the results that
        came with them: a task starts before it ends."""

    def record_samples(self, samples: list[NodeSample]) -> None:
        """Our subtree's samples of its nodes' CPU and memory use, passed up unchanged."""

    def tick(self) -> None: ...


@dataclass
class _Child:
    node: TreeNode
    step: int
    host: str = ""
    ready: bool = False
    done: bool = False
    lost: bool = False
    credit: int = 0
    inflight: dict[int, WireTask] = field(default_factory=dict)
    parked: deque[tuple[int, WireTask]] = field(default_factory=deque)
    """Tasks routed to its subtree, waiting for its credit."""
    known: set[bytes] = field(default_factory=set)
    last_heard: float = field(default_factory=time.monotonic)
    cpus: list[int] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    """Tasks running in its subtree now, per ensemble, as it last reported."""
    closing: bool = False
    """Its block nears its end, or its job was stopped: it gets no more tasks."""

    @property
    def live(self) -> bool:
        return not self.done and not self.lost


def _no_mpi() -> MpiLaunch:
    raise LaunchError("this master has no MPI launcher configured for multi-node tasks")


@dataclass
class TreeSettings:
    """What every master needs to start and watch its children. ``child_env`` holds the
    settings every child gets (``boot.SETTINGS``), in its start-up file."""

    launcher: ChildLauncher
    bind: str
    heartbeat_interval: float
    start_timeout: float
    run_dir: Path
    child_env: dict[str, str]
    shared_step: bool = False
    mpi: Callable[[], MpiLaunch] = _no_mpi
    kill_grace: float = 5.0
    """The tasks' grace between SIGTERM and SIGKILL: a child being stopped needs it to stop
    its commands."""
    hosted_workers: int = 1
    """Simulated workers per process (``simulated_nodes_per_process``): above 1, our
    workers start on this host in groups of that many, one process each."""


class Master:
    def __init__(self, node: TreeNode, upstream: Upstream, ctx: zmq.Context,
                 settings: TreeSettings, keys: CurveKeys | None,
                 timeline: Timeline | NoTimeline | None = None,
                 blocks: BlockPool | None = None) -> None:
        self.node = node
        self._upstream = upstream
        self._settings = settings
        self._keys = keys
        self._pipes = PipeParentEndpoint() if settings.bind == "pipe" else None
        """Set when we start our children ourselves, each with its end of a socket pair."""
        self._endpoint: ParentSide = self._pipes or ParentEndpoint(ctx, settings.bind, keys)
        log.info("%s: children connect to %s", node.name, self._endpoint.address)
        self._boot = BootDir(settings.run_dir / f".boot-{node.name}")
        self._children = {c.name.encode(): _Child(c, 0) for c in node.children}
        self._steps: list[tuple[subprocess.Popen, list[bytes], Path]] = []
        self._stopping: list[GroupStop] = []
        """Launcher steps of lost children, given the cancel signal, SIGKILL due later."""
        self._drained = False
        self._halted = False
        self._started_at = time.monotonic()
        self._last_beat = 0.0
        self._poller: zmq.Poller | None = None
        self._timeline = timeline or NoTimeline()
        self._gangs = GangScheduler(self._send, settings.mpi)
        self._passed_over: list[tuple[int, WireTask]] = []
        self._parked = 0
        self._running: dict[str, int] = {}
        self._running_changed = False
        self._running_sent = 0.0
        self._blocks = blocks
        """Set at a provider's root: our workers come and go with the blocks it submits."""
        self._next_worker = len(node.children)
        self._returned: deque[tuple[int, WireTask]] = deque()
        """Tasks that did not fit the time left in the block of the child asking."""
        self._longest = 0.0
        self._tended = 0.0

    @property
    def inflight(self) -> int:
        return sum(len(c.inflight) for c in self._children.values())

    def run(self) -> None:
        with spared_collector():
            self._run()

    def _run(self) -> None:
        try:
            self._start_children()
            mark = self._timeline.mark
            mark("start")
            while not self._finished():
                self._upstream.pump()
                self._cancel(self._upstream.take_cancels())
                self._receive()
                mark("receive")
                self._assign()
                self._upstream.want(sum(c.credit for c in self._children.values() if c.live))
                mark("assign")
                self._watch_children()
                self._tend_blocks()
                self._halt_when_asked()
                self._drain_when_done()
                mark("watch")
                self._report_running()
                self._upstream.tick()
                mark("record")
                self._wait()
                mark("wait")
        except BaseException:
            self.stop("the master stopped")
            raise
        finally:
            self._close()

    # -- starting ----------------------------------------------------------------------------

    def _start_children(self) -> None:
        """One launcher step per child, so that a node lost takes down only its own child
        (srun and mpiexec may end a whole step when one of its nodes dies); with
        ``shared_step``, one step for all workers of this master."""
        workers = [c for c in self.node.children if c.role == "worker"]
        masters = [c for c in self.node.children if c.role == "master"]
        per_process = self._settings.hosted_workers
        if per_process > 1 and workers:
            for first in range(0, len(workers), per_process):
                self._start_step(workers[first:first + per_process], hosted=True)
            groups = [[m] for m in masters]
        elif self._settings.shared_step and workers:
            groups = [workers] + [[m] for m in masters]
        else:
            groups = [[c] for c in self.node.children]
        for group in groups:
            self._start_step(group)

    def _start_step(self, group: list[TreeNode], hosted: bool = False) -> None:
        """Start ``group`` with our launcher; ``hosted``: as one local process that runs
        every (simulated) worker of the group, each with its own connection to us."""
        import json

        index = len(self._steps)
        path = self._settings.run_dir / "logs" / f"launch-{self.node.name}-{index}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        env = child_environment({BOOT_ENV: str(self._boot.path),
                                 TREE_ENV: json.dumps([c.to_dict() for c in group]),
                                 **({HOSTED_ENV: "1"} if hosted else {})})
        argv = [sys.executable, "-m", "ensemble_launcher.orchestrator.child"]
        hosts = [c.host for c in group]
        with open(path, "ab") as log_file:
            if self._pipes is not None and not hosted:
                procs = [self._start_over_pipe(argv, child, env, log_file) for child in group]
            else:
                for child in group:
                    self._write_boot(child, self._endpoint.address)
                procs = [start_process(argv, env, log_file)] if hosted else \
                    self._settings.launcher.start(argv, hosts, env, log_file)
        names = [c.name.encode() for c in group]
        if len(procs) == len(names) > 1:
            self._steps.extend((proc, [name], path) for proc, name in zip(procs, names,
                                                                         strict=True))
        else:
            self._steps.extend((proc, names, path) for proc in procs)
        for name in names:
            self._children[name].step = index
        log.info("%s: started %s on %s with %s", self.node.name,
                 ", ".join(c.name for c in group), ",".join(hosts), self._settings.launcher.name)

    def _write_boot(self, child: TreeNode, address: str, block: int | None = None) -> None:
        """The child's start-up file: the settings, our address, and the keys its role
        uses (see ``orchestrator.boot``); a block's worker learns its block."""
        keys = self._keys_for(child, address)
        values = {**self._settings.child_env, PARENT_ENV: address,
                  **(keys.to_env() if keys is not None else {})}
        if block is not None:
            values[BLOCK_ENV] = str(block)
        self._boot.write(child.name, values)

    def _keys_for(self, child: TreeNode, address: str) -> CurveKeys | None:
        """A master gets all four keys (it serves its children and connects to us); a
        worker what connecting over TCP takes, and nothing over ipc or a pipe."""
        if self._keys is None or child.role == "master":
            return self._keys
        return self._keys.for_client() if address.startswith("tcp://") else None

    def _start_over_pipe(self, argv: list[str], child: TreeNode, env: dict[str, str],
                         log_file: Any) -> subprocess.Popen:
        """A local child that talks to us over its end of a socket pair."""
        assert self._pipes is not None
        end = self._pipes.pair_for(child.name.encode())
        try:
            self._write_boot(child, f"fd://{end.fileno()}")
            return subprocess.Popen(argv, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    pass_fds=(end.fileno(),))
        finally:
            end.close()

    # -- messages ----------------------------------------------------------------------------

    def _receive(self) -> None:
        now = time.monotonic()
        for identity, message in self._endpoint.receive(self._children):
            child = self._children.get(identity)
            if child is None or child.lost:
                continue
            child.last_heard = now
            self._handle(child, message)

    def _handle(self, child: _Child, message: Message) -> None:
        if isinstance(message, ResultBatch):
            if message.started:
                self._upstream.report_started(message.started)
            rows = list(map(ResultRow._make, message.rows))
            for row in rows:
                child.inflight.pop(row.key, None)
            if self._gangs.busy:
                rows = [self._with_gang_hosts(row) for row in rows]
            if rows:
                if self._blocks is not None:
                    self._learn_from_rows(child, rows)
                self._upstream.record_rows(rows)
            if message.running:
                self._child_running(child, _running_report(message.running))
        elif isinstance(message, Request):
            child.credit += message.credit
        elif isinstance(message, NodeSamples):
            self._upstream.record_samples(message.rows)
        elif isinstance(message, Held):
            started = self._gangs.held(child.node.name.encode(), message.key,
                                       {n: c.host for n, c in self._children.items()})
            if started is not None:
                leader, key, wire = started
                self._children[leader].inflight[key] = wire
        elif isinstance(message, Hello):
            child.ready, child.host = True, message.host
            child.cpus, child.gpus = message.cpus, message.gpus
            self._catch_up(child)
            if self._blocks is not None:
                self._blocks.connected(child.node.name.encode(), message.host,
                                       len(message.cpus))
            log.info("%s: %s connected from %s (pid %d, %d cpus, %d gpus)", self.node.name,
                     message.name, message.host, message.pid, len(message.cpus),
                     len(message.gpus))
        elif isinstance(message, NodeLost):
            for key in message.keys:
                child.inflight.pop(key, None)
            self._upstream.node_lost(message.name, message.host, message.keys, message.why)
        elif isinstance(message, Bye):
            child.done = True
            self._child_running(child, {})
        elif isinstance(message, Failed):
            self._lose(child, f"{message.name} failed: {message.why}")
        elif not isinstance(message, Heartbeat):
            log.warning("%s: unexpected %s from %s", self.node.name, type(message).__name__,
                        child.node.name)

    def _with_gang_hosts(self, row: ResultRow) -> ResultRow:
        """A multi-node task ran on all its gang's hosts, not only on its leader's."""
        hosts = self._gangs.finished(row.key)
        return row._replace(host=hosts) if hosts else row

    def _child_running(self, child: _Child, by_ensemble: dict[str, int]) -> None:
        """Keep the sum over our children of what runs now (one update per report)."""
        total = self._running
        for name, n in child.running.items():
            total[name] -= n
        for name, n in by_ensemble.items():
            total[name] = total.get(name, 0) + n
        child.running = by_ensemble
        self._running_changed = True

    def _report_running(self) -> None:
        """Pass the sum up when it changed, at most ten times a second."""
        now = time.monotonic()
        if self._running_changed and now - self._running_sent >= _TURN_SECONDS:
            self._running_changed = False
            self._running_sent = now
            self._upstream.report_running(dict(self._running))

    def _catch_up(self, child: _Child) -> None:
        """A child that connects after we drained or halted (messages to a child not yet
        connected are dropped) is told now."""
        identity = child.node.name.encode()
        if self._halted:
            self._send(identity, Halt())
        elif self._drained:
            self._send(identity, Drain())

    def _assign(self) -> None:
        """Give each child up to its credit. A multi-node task is reserved here when our
        children are workers, else passed down to a child whose subtree has a master with
        enough workers of its own (held back until such a child has credit)."""
        for identity, child in self._children.items():
            if not child.ready or not child.live or child.credit <= 0 or self._drained \
                    or child.closing:
                continue
            batch = []
            while child.credit > 0:
                item = self._next_for(child)
                if item is None:
                    break
                key, wire = item
                if self._gangs.wants(wire):
                    if child.node.role == "worker":
                        self._gangs.offer(key, wire)
                        continue
                    if child.node.gang_capacity() < wire.nnodes:
                        self._passed_over.append(item)
                        continue
                digest = wire.digest
                if digest is not None and digest not in child.known:
                    child.known.add(digest)
                    self._send(identity, Define(digest, self._upstream.functions.blobs[digest]))
                batch.append(wire)
                child.inflight[key] = wire
                child.credit -= 1
                if len(batch) == _BATCH:
                    self._send(identity, Tasks(batch))
                    batch = []
            if batch:
                self._send(identity, Tasks(batch))
        self._advance_gangs()

    def _next_for(self, child: _Child) -> tuple[int, WireTask] | None:
        """A task routed to this child's subtree comes first, then (in blocks) one given
        back that fits its time left, then a multi-node task passed over by a child too
        small for it, then the upstream's next task for anywhere or for this child; one
        routed elsewhere is parked for its child."""
        if child.parked:
            self._parked -= 1
            return child.parked.popleft()
        if self._blocks is not None:
            return self._next_in_time(child)
        return self._next_routed(child)

    def _next_routed(self, child: _Child) -> tuple[int, WireTask] | None:
        for i, (key, wire) in enumerate(self._passed_over):
            if child.node.gang_capacity() >= wire.nnodes:
                del self._passed_over[i]
                return key, wire
        while self._parked < _MAX_PARKED:
            item = self._upstream.take()
            if item is None or not item[1].route:
                return item
            target = self._route_target(item, child)
            if target is child:
                return item
            if target is not None:
                target.parked.append(item)
                self._parked += 1
        return None

    def _next_in_time(self, child: _Child) -> tuple[int, WireTask] | None:
        """The next task that can finish before the child's block ends: a task whose
        estimated_runtime does not fit waits here for a child with more time left."""
        left = self._time_left(child)
        for i, (key, wire) in enumerate(self._returned):
            if _fits(wire, left):
                del self._returned[i]
                return key, wire
        while len(self._returned) < _MAX_PARKED:
            item = self._next_routed(child)
            if item is None or _fits(item[1], left):
                return item
            if not self._runs_in_any_block(*item):
                continue
            self._returned.append(item)
        return None

    def _time_left(self, child: _Child) -> float | None:
        """Seconds until the child's block ends, less what we keep free before it."""
        assert self._blocks is not None
        held = self._blocks.block_of(child.node.name.encode())
        end = None if held is None else self._blocks.ends_at(held)
        return None if end is None else end - time.time() - self._blocks.safety

    def _runs_in_any_block(self, key: int, wire: WireTask) -> bool:
        """False, after recording it not run, for a task declared longer than a block's
        whole walltime: no block can ever run it."""
        assert self._blocks is not None
        room = self._blocks.elastic.walltime - self._blocks.safety
        if wire.estimated_runtime <= room:
            return True
        self._upstream.record_rows([never_ran_row(
            key, NOT_RUN, "walltime", f"not started: its estimated_runtime of "
            f"{wire.estimated_runtime} s exceeds the {room:.0f} s a block's walltime leaves "
            "(provider walltime less our safety margin)", "")])
        return False

    def _route_target(self, item: tuple[int, WireTask], asking: _Child) -> _Child | None:
        """The live child whose subtree the task's route names (``asking`` for a route
        that names us); None after failing a task whose route names no live node here."""
        key, wire = item
        route = wire.route
        for child in self._children.values():
            name = child.node.name
            if route == name or route.startswith(name + "."):
                if child.live:
                    return child
                self._fail_route(key, wire, f"{name} is gone")
                return None
        if route == self.node.name:
            return asking
        self._fail_route(key, wire, f"no node of {self.node.name}'s subtree has that name")
        return None

    def _fail_route(self, key: int, wire: WireTask, why: str) -> None:
        self._upstream.record_rows([never_ran_row(
            key, FAILED, "launch", f"task {wire.task_id!r} cannot run at its route "
            f"{wire.route!r}: {why}", "")])

    def _advance_gangs(self) -> None:
        """Reserve nodes for the next multi-node task once every worker has connected."""
        workers = [c for c in self._children.values() if c.live and c.node.role == "worker"
                   and (c.ready or self._blocks is None) and not c.closing]
        if not self._gangs.busy or any(not c.ready for c in workers):
            return
        refused = self._gangs.advance({c.node.name.encode(): (c.host, c.cpus, c.gpus)
                                       for c in workers})
        if refused is not None:
            key, wire = refused
            self._upstream.record_rows([never_ran_row(
                key, FAILED, "launch", f"multi-node task {wire.task_id!r} cannot run: "
                "not enough worker nodes are alive", "")])

    # -- cancelling --------------------------------------------------------------------------

    def _cancel(self, keys: list[int]) -> None:
        """Pass each cancel to the child that has the task; a task that still waits here is
        dropped and reported cancelled; an unknown key (the task ended) is ignored."""
        if not keys:
            return
        by_child: dict[bytes, list[int]] = {}
        dropped = []
        for key in keys:
            holder = next((identity for identity, c in self._children.items()
                           if key in c.inflight), None)
            if holder is not None:
                by_child.setdefault(holder, []).append(key)
            elif self._drop_waiting(key):
                dropped.append(never_ran_row(key, CANCELLED, "cancelled", CANCELLED_MESSAGE,
                                             ""))
        for identity, held in by_child.items():
            self._send(identity, Cancel(held))
        if dropped:
            self._upstream.record_rows(dropped)

    def _drop_waiting(self, key: int) -> bool:
        for held in (self._passed_over, self._returned):
            for i, (waiting, _) in enumerate(held):
                if waiting == key:
                    del held[i]
                    return True
        for child in self._children.values():
            for i, (waiting, _) in enumerate(child.parked):
                if waiting == key:
                    del child.parked[i]
                    self._parked -= 1
                    return True
        return self._gangs.cancel(key)

    def _send(self, identity: bytes, message: Message) -> None:
        if not self._endpoint.send(identity, message):
            child = self._children[identity]
            if child.ready:
                self._lose(child, "its connection is gone")

    def _tell_live_children(self, message: Message, *, connected: bool = False,
                            lose_unreachable: bool = True) -> None:
        """``message`` to every child neither done nor lost (``connected``: only to those
        that said Hello); a connected child we cannot reach is lost, unless told not to."""
        for identity, child in self._children.items():
            if child.live and (child.ready or not connected):
                if lose_unreachable:
                    self._send(identity, message)
                else:
                    self._endpoint.send(identity, message)

    # -- health ------------------------------------------------------------------------------

    def _watch_children(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self._settings.heartbeat_interval:
            self._last_beat = now
            self._tell_live_children(Heartbeat(time.time()), connected=True)
        timeout = 2.5 * self._settings.heartbeat_interval
        for child in self._children.values():
            if child.ready and child.live and now - child.last_heard > timeout:
                self._lose(child, f"no heartbeat for {now - child.last_heard:.1f} s")
        self._check_steps(now)

    def _check_steps(self, now: float) -> None:
        if self._stopping:
            self._stopping = sweep_stops(self._stopping)
        for proc, names, path in self._steps:
            if proc.poll() is None:
                if now - self._started_at > self._settings.start_timeout:
                    self._check_started(names, path)
                continue
            for name in names:
                child = self._children[name]
                if not child.ready:
                    raise LaunchError(
                        f"{child.node.name} on {child.node.host} did not start: its launcher "
                        f"exited with status {proc.returncode}. Log {path}:\n{log_tail(path)}")
                if child.live:
                    self._lose(child, f"its launcher step exited with status {proc.returncode}")

    def _check_started(self, names: list[bytes], path: Path) -> None:
        late = [self._children[n] for n in names if not self._children[n].ready]
        if late:
            raise LaunchError(
                f"{', '.join(c.node.name for c in late)} on "
                f"{', '.join(c.node.host for c in late)} did not connect within "
                f"{self._settings.start_timeout:.0f} s (child_start_timeout). Is the host up "
                f"and reachable? Log {path}:\n{log_tail(path)}")

    def _lose(self, child: _Child, why: str) -> None:
        """Give up on a child: account for its tasks upstream, and stop its launcher step
        when it has one of its own, so that it cannot go on running tasks recorded as
        lost: Stop (it may only be cut off), the cancel signal to the step's process group
        (a worker's runners then stop their commands, SIGTERM, kill_grace, SIGKILL, even
        when the worker itself hangs), and SIGKILL once it had the time a stop takes."""
        child.lost = True
        self._child_running(child, {})
        unstarted = self._gangs.member_lost(child.node.name.encode())
        if unstarted is not None:
            self._upstream.node_lost(child.node.name, child.host or child.node.host,
                                     [unstarted], why)
        identity = child.node.name.encode()
        self._endpoint.send(identity, Stop(why))
        for proc, names, _ in self._steps:
            if names == [identity] and proc.poll() is None:
                self._stopping.append(begin_stop(proc.pid, self._stop_seconds(child.node),
                                                 CANCEL_SIGNAL))
        keys = list(child.inflight)
        child.inflight.clear()
        self._fail_parked(child)
        log.error("%s: lost %s on %s: %s; %d task(s) in flight there", self.node.name,
                  child.node.name, child.host or child.node.host, why, len(keys))
        self._upstream.node_lost(child.node.name, child.host or child.node.host, keys, why)
        if self._blocks is not None:
            self._retire_block_of(identity, "its last worker is gone")
        elif all(not c.live for c in self._children.values()) and \
                not self._upstream.exhausted:
            raise RunAbortedError(f"{self.node.name}: every child is gone (last: "
                                  f"{child.node.name}: {why})")

    def _fail_parked(self, child: _Child) -> None:
        self._parked -= len(child.parked)
        while child.parked:
            self._fail_route(*child.parked.popleft(), f"{child.node.name} is gone")

    # -- blocks ------------------------------------------------------------------------------

    def _tend_blocks(self) -> None:
        """Ask the scheduler how our blocks are, lose the workers of those that ended,
        drain the ones near their walltime, cancel idle ones, and submit what the
        policy wants (see ``orchestrator.blocks``)."""
        pool = self._blocks
        now = time.monotonic()
        if pool is None or now - self._tended < TEND_SECONDS:
            return
        self._tended = now
        for held in pool.poll():
            block = held.block
            why = f"its block {block.index} (job {block.job_id}) ended: {block.state.value}"
            for name in held.workers:
                child = self._children[name]
                if child.live:
                    self._lose(child, f"{why} {block.message}".rstrip())
        if self._drained or self._halted:
            return
        wall = time.time()
        for held in pool.stalled(wall, self._settings.start_timeout):
            for name in held.workers:
                self._close_child(self._children[name], Stop("its block did not start"))
        for held in pool.near_walltime(wall, self._longest):
            for name in held.workers:
                self._close_child(self._children[name], Drain())
        for held in pool.idle(wall, self._any_busy, self.inflight):
            for name in held.workers:
                self._close_child(self._children[name], Stop("its block was idle"))
        for _ in range(pool.wanted(self.inflight, now)):
            self._add_block(pool)

    def _add_block(self, pool: BlockPool) -> None:
        """Our next workers, their start-up files, and the batch job that starts them."""
        index = pool.next_index
        nodes = [TreeNode(f"{self.node.name}.w{self._next_worker + i}", "worker", [""])
                 for i in range(pool.elastic.nodes_per_block)]
        self._next_worker += len(nodes)
        for node in nodes:
            self.node.children.append(node)
            self._children[node.name.encode()] = _Child(node, -1)
            self._write_boot(node, self._endpoint.address, block=index)
        request = BlockRequest(
            index, len(nodes), [sys.executable, "-m", "ensemble_launcher.orchestrator.child"],
            {BOOT_ENV: str(self._boot.path), TREE_ENV: json.dumps([n.to_dict() for n in nodes])},
            self._settings.run_dir / "blocks", f"el-{self._settings.run_dir.name}-b{index}")
        if not pool.submit(request, [n.name.encode() for n in nodes]):
            for node in nodes:
                self._children[node.name.encode()].done = True
                self._boot.discard(node.name)

    def _close_child(self, child: _Child, message: Drain | Stop) -> None:
        """A block's worker that leaves: drained (it finishes what it holds, then says Bye)
        or stopped (an idle one); it gets no more tasks."""
        child.closing = True
        if not child.live:
            return
        if child.ready:
            self._send(child.node.name.encode(), message)
        if isinstance(message, Stop) or not child.ready:
            child.done = True
            self._boot.discard(child.node.name)

    def _any_busy(self, names: list[bytes]) -> bool:
        return any(self._children[n].inflight for n in names)

    def _learn_from_rows(self, child: _Child, rows: list[ResultRow]) -> None:
        """The longest task seen (a block drains that long before its walltime), and a
        worker whose job is being stopped (its tasks die lost of the batch system's
        signal) gets no more tasks."""
        longest = self._longest
        for row in rows:
            if row.end - row.start > longest:
                longest = row.end - row.start
            if row.state == LOST and row.reason == "block_stopped":
                child.closing = True
        self._longest = longest

    def _retire_block_of(self, worker: bytes, why: str) -> None:
        """Cancel a worker's block once none of its workers is left."""
        assert self._blocks is not None
        held = self._blocks.block_of(worker)
        if held is not None and all(not self._children[n].live for n in held.workers):
            self._blocks.retire(held, why)

    def _retire_unstarted(self, why: str) -> None:
        """Cancel the blocks none of whose workers connected (queued, or starting)."""
        if self._blocks is None:
            return
        for held in list(self._blocks.unstarted()):
            self._blocks.retire(held, why)
            for name in held.workers:
                self._close_child(self._children[name], Stop(why))

    # -- finishing ---------------------------------------------------------------------------

    def _halt_when_asked(self) -> None:
        if self._upstream.halted and not self._halted:
            self._halted = True
            self._tell_live_children(Halt())
            self._retire_unstarted("the run is stopping")

    def _drain_when_done(self) -> None:
        if self._drained or not self._upstream.exhausted or self.inflight or self._gangs.busy \
                or self._passed_over or self._parked or self._returned:
            return
        self._drained = True
        self._tell_live_children(Drain())
        self._retire_unstarted("the run has no more work")

    def _finished(self) -> bool:
        return (self._drained or self._halted) and all(not c.live
                                                        for c in self._children.values())

    def stop(self, reason: str) -> None:
        """Cancel: tell every child to stop; _close then waits for them. A child whose
        connection is gone is not lost on the way (we are stopping anyway)."""
        self._tell_live_children(Stop(reason), lose_unreachable=False)

    def _close(self) -> None:
        self._end_steps()
        if self._blocks is not None:
            self._blocks.close()
        self._endpoint.close()
        self._boot.close()

    def _end_steps(self) -> None:
        """Our children were told to stop, or said Bye: their steps get the time a stop
        takes to exit on their own, then the cancel signal and that time again, then
        SIGKILL (see stop_groups)."""
        procs = [proc for proc, _, _ in self._steps]
        if not procs:
            return
        seconds = max((self._stop_seconds(c) for c in self.node.children), default=0.0)

        def reap() -> None:
            for proc in procs:
                proc.poll()

        left = wait_groups([proc.pid for proc in procs], seconds, reap)
        if left:
            log.warning("%s: %d launcher step(s) still running %.0f s after the end; "
                        "cancelling them", self.node.name, len(left), seconds)
            stop_groups(left, seconds, reap, CANCEL_SIGNAL)
            for proc in procs:
                proc.wait()

    def _stop_seconds(self, node: TreeNode) -> float:
        """How long a child takes to stop: a worker, kill_grace for its commands plus a
        margin; a master, what its own _end_steps may take for its children, twice the
        longest of theirs."""
        if node.role == "worker":
            return self._settings.kill_grace + _STOP_MARGIN
        return 2 * max((self._stop_seconds(c) for c in node.children), default=0.0) + \
            _STOP_MARGIN

    def _wait(self) -> None:
        if self._poller is None:
            self._poller = zmq.Poller()
            for sock in (*self._endpoint.sockets(), *self._upstream.sockets()):
                self._poller.register(sock, zmq.POLLIN)
        pending = self._endpoint.has_pending or self._upstream.has_pending
        self._poller.poll(1 if pending else int(_TURN_SECONDS * 1000))


def _fits(wire: WireTask, left: float | None) -> bool:
    return left is None or not wire.estimated_runtime or wire.estimated_runtime <= left


def _running_report(pairs: list[list[Any]]) -> dict[str, int]:
    """``ResultBatch.running`` as a mapping; malformed entries are ignored."""
    return {p[0]: p[1] for p in pairs
            if len(p) == 2 and type(p[0]) is str and type(p[1]) is int and p[1] >= 0}
