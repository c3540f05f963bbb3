"""The head's door for clients: tasks come in, final results go back to whoever sent them.

    clients --Join/Define/Submit/Cancel--> ClientDesk.pump() --> TaskIntake --> Ledger
    Ledger --> Recorder --listener--> ClientDesk (Done rows per client) --flush()--> clients

The desk lives in the root's loop (its sockets are polled with the tree's), so the head
stays one thread. Over TCP every client proves the cluster's client key (CURVE, ZAP);
over ipc the socket is in the 0700 checkpoint directory. A frame that is not a message of
ours, or a message from a client that has not joined, is dropped and logged.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import pickle
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from ensemble_launcher.cluster.checkpoint import ClusterFile
from ensemble_launcher.cluster.intake import TaskIntake
from ensemble_launcher.cluster.protocol import (
    AddRule,
    Cancel,
    Closing,
    Done,
    DoneRow,
    Join,
    Refused,
    Shutdown,
    Submit,
    SubmitMap,
    SubmitRecord,
    Welcome,
)
from ensemble_launcher.comm import CurveKeys, Define, Heartbeat, Message, ParentEndpoint
from ensemble_launcher.comm.zmq_transport import ANYONE
from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.task import UnbuildableTask
from ensemble_launcher.errors import _short
from ensemble_launcher.orchestrator.ledger import Ledger
from ensemble_launcher.states import FAILED, NOT_RUN, RunResult

log = logging.getLogger("ensemble_launcher")

#: Done rows per message.
_BATCH = 1024
#: Task records taken in per loop turn.
_PER_TURN = 1024
#: A client silent this many heartbeats is gone; its tasks go on, their results stay in
#: the journal.
_LOST_AFTER = 3


class _Numbers:
    """The numbers of the task ids a client made itself (``<client>.<number>``), as
    intervals: a client that sends one again (a bug, or a replay) is refused instead of
    running a task twice under one id."""

    __slots__ = ("_starts", "_ends")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def claim(self, first: int, count: int) -> bool:
        """Take ``first`` .. ``first + count - 1``; False (nothing taken) if any was."""
        end = first + count
        if first < 0 or count < 1:
            return False
        at = bisect.bisect_right(self._starts, first)
        if (at and self._ends[at - 1] > first) or \
                (at < len(self._starts) and self._starts[at] < end):
            return False
        if at and self._ends[at - 1] == first:
            at -= 1
            self._ends[at] = end
        else:
            self._starts.insert(at, first)
            self._ends.insert(at, end)
        if at + 1 < len(self._starts) and self._starts[at + 1] == end:
            self._ends[at] = self._ends.pop(at + 1)
            del self._starts[at + 1]
        return True


@dataclass(slots=True)
class _Client:
    name: str
    route: str
    last_heard: float = field(default_factory=time.monotonic)
    last_sent: float = 0.0
    outbox: list[DoneRow] = field(default_factory=list)
    prefix: str = field(init=False)
    """The prefix of the task ids this client makes itself (its session's name)."""
    numbers: _Numbers = field(default_factory=_Numbers)

    def __post_init__(self) -> None:
        self.prefix = self.name + "."


class ClientDesk:
    def __init__(self, ledger: Ledger, intake: TaskIntake, address: str, keys: CurveKeys | None,
                 cluster_file: ClusterFile, nodes: list[str], heartbeat: float) -> None:
        self._ledger = ledger
        ledger.await_unknown = _LOST_AFTER * heartbeat
        self._intake = intake
        self._nodes = nodes
        self._heartbeat = heartbeat
        self._ctx = zmq.Context()
        ipc_path = str(cluster_file.socket_path) if address == "ipc" else None
        self._endpoint = ParentEndpoint(self._ctx, address, keys, ipc_path=ipc_path)
        self._cluster_file = cluster_file
        self._keys = keys
        self._clients: dict[bytes, _Client] = {}
        self._owners: dict[str, bytes] = {}
        self._dirty: set[bytes] = set()
        self._arrived: deque[tuple[bytes, list[list] | SubmitMap | Cancel | Shutdown |
                                   AddRule]] = deque()
        """Submits (their lists of task records) and map chunks received and not yet taken
        in (at most _PER_TURN tasks a loop turn), with the Cancels and Shutdowns among
        them, which take effect in the order they came."""
        self._taken = 0
        """Tasks of the first Submit or map chunk in ``_arrived`` already taken in."""
        self._last_beat = 0.0
        self._hidden = False
        self.on_rule: Callable[[Any], None] | None = None
        """Takes a rule a client added (the launcher's rules engine)."""

    def open(self) -> None:
        """Let clients find us: from now on cluster.json names our address and keys."""
        self._cluster_file.write(self._endpoint.address, self._keys, self._heartbeat)
        log.info("cluster: clients connect to %s", self._endpoint.address)

    # -- the loop's hooks --------------------------------------------------------------------

    def sockets(self) -> tuple[zmq.Socket, ...]:
        return tuple(self._endpoint.sockets())

    @property
    def has_pending(self) -> bool:
        """Records wait to be taken in: the loop should come back at once."""
        return bool(self._arrived)

    def pump(self) -> None:
        now = time.monotonic()
        for identity, message in self._endpoint.receive(ANYONE):
            client = self._clients.get(identity)
            if isinstance(message, Join):
                self._join(identity, message)
            elif client is None:
                self._endpoint.inbox.drop(repr(identity), f"{type(message).__name__} from a "
                                          "client that has not joined")
            else:
                client.last_heard = now
                self._handle(identity, client, message)
        self._take_in()

    def on_final(self, task: Task | UnbuildableTask, result: RunResult) -> None:
        """A final result: to the client that submitted the task, if it still listens."""
        identity = self._owners.pop(task.task_id, None)
        self._intake.finished(task)
        if identity is not None:
            self._to_client(identity, _done_row(task.task_id, result))

    def flush(self) -> None:
        """Send each client its results; a client whose queue is full (it stopped reading)
        keeps them for a later turn, so that it cannot stall the loop."""
        for identity in list(self._dirty):
            client = self._clients.get(identity)
            if client is None:
                self._dirty.discard(identity)
                continue
            while client.outbox:
                rows = client.outbox[:_BATCH]
                try:
                    if not self._send(identity, client, Done(rows), block=False):  # type: ignore[arg-type]
                        break
                except zmq.Again:
                    break
                del client.outbox[:_BATCH]
            if not client.outbox:
                self._dirty.discard(identity)

    def tick(self) -> None:
        self._ledger.expire_awaited()
        if self._ledger.halted and not self._hidden:
            self._hide()
        now = time.monotonic()
        if now - self._last_beat < self._heartbeat / 2:
            return
        self._last_beat = now
        for identity, client in list(self._clients.items()):
            if now - client.last_heard > _LOST_AFTER * self._heartbeat:
                log.warning("cluster: client %s silent for %.1f s; forgetting it", client.name,
                            now - client.last_heard)
                del self._clients[identity]
            elif now - client.last_sent >= self._heartbeat / 2:
                with contextlib.suppress(zmq.Again):
                    self._send(identity, client, Heartbeat(time.time()), block=False)

    def _hide(self) -> None:
        """No new client finds us: the cluster is stopping (a batch system's SIGTERM may be
        followed by SIGKILL before close() runs). Clients already here are still served."""
        self._hidden = True
        self._cluster_file.remove()

    def close(self, reason: str) -> None:
        """Tell every client we stop (their pending futures fail with ClusterLost at once),
        and take the door down: no client finds a cluster here any more."""
        self._hide()
        self.flush()
        for identity, client in list(self._clients.items()):
            with contextlib.suppress(zmq.Again):
                self._send(identity, client, Closing(reason), block=False)
        self._endpoint.close()
        self._ctx.term()

    # -- messages ----------------------------------------------------------------------------

    def _join(self, identity: bytes, message: Join) -> None:
        route = "" if message.node in ("global", "main") else message.node
        if route and route not in self._nodes:
            self._endpoint.send(identity, Refused(
                f"node_id {message.node!r} is not a node of this cluster; its nodes are "
                f"global, {', '.join(self._nodes)}"))
            return
        client = _Client(message.client, route)
        self._clients[identity] = client
        log.info("cluster: client %s joined from %s (pid %d)", message.client, message.host,
                 message.pid)
        self._send(identity, client, Welcome(self._heartbeat, self._nodes,
                                             str(self._intake.run_dir)))

    def _handle(self, identity: bytes, client: _Client, message: Message) -> None:
        if isinstance(message, (Submit, SubmitMap)):
            self._arrived.append((identity, message.tasks if isinstance(message, Submit)
                                  else message))
        elif isinstance(message, (Cancel, Shutdown, AddRule)):
            self._arrived.append((identity, message))
        elif isinstance(message, Define):
            self._intake.define(message.digest, message.blob)
        elif not isinstance(message, Heartbeat):
            self._endpoint.inbox.drop(client.name, f"unexpected {type(message).__name__}")

    def _take_in(self) -> None:
        """Submit up to _PER_TURN of the records that arrived: a client's large batch is
        taken in over several turns, so that the loop still answers heartbeats."""
        arrived, budget = self._arrived, _PER_TURN
        while arrived and budget > 0:
            identity, item = arrived[0]
            client = self._clients.get(identity)
            if type(item) is list or type(item) is SubmitMap:
                tasks = item if type(item) is list else item.args  # type: ignore[union-attr]
                start = self._taken
                end = min(len(tasks), start + budget)
                budget -= end - start
                if client is not None and type(item) is list:
                    for index in range(start, end):
                        self._submit(identity, client, SubmitRecord._make(item[index]))
                elif client is not None:
                    self._submit_map(identity, client, item, start, end)  # type: ignore[arg-type]
                if end < len(tasks):
                    self._taken = end
                    return
                self._taken = 0
            elif client is not None:
                budget -= 1
                self._order(client, item)  # type: ignore[arg-type]
            arrived.popleft()

    def _order(self, client: _Client, order: Cancel | Shutdown | AddRule) -> None:
        if isinstance(order, AddRule):
            self._add_rule(client, order.rule)
        elif isinstance(order, Cancel):
            for task_id in order.task_ids:
                self._ledger.cancel(task_id)
            if order.tag is not None:
                self._ledger.cancel_tag(order.tag)
        else:
            log.info("cluster: %s asked to stop: no new task is taken; the rest finish",
                     client.name)
            self._ledger.close()

    def _add_rule(self, client: _Client, blob: bytes) -> None:
        if self.on_rule is None:
            log.warning("cluster: %s sent a rule, but this cluster takes none", client.name)
            return
        try:
            self.on_rule(pickle.loads(blob))
        except Exception as exc:  # noqa: BLE001 - a client's bad rule must not stop the head
            log.warning("cluster: a rule from %s was refused: %s: %s", client.name,
                        type(exc).__name__, exc)
            return
        log.info("cluster: %s added a rule", client.name)

    def _submit(self, identity: bytes, client: _Client, record: SubmitRecord) -> None:
        if not record.route and client.route:
            record = record._replace(route=client.route)
        why = self._refusal(record.route)
        if why is not None:
            self._to_client(identity, _refused(record.task_id, *why))
            return
        own = _own_number(record.task_id, client.prefix)
        if own is not None and not client.numbers.claim(own, 1):
            self._to_client(identity, _refused(record.task_id, "invalid", f"task_id "
                                               f"{record.task_id!r} was submitted before"))
            return
        earlier = self._owners.get(record.task_id)
        self._owners[record.task_id] = identity
        problem = self._intake.submit(record, own_prefix=client.prefix if own is not None
                                      else "")
        if problem is not None:
            if earlier is None:
                self._owners.pop(record.task_id, None)
            else:
                self._owners[record.task_id] = earlier
            self._to_client(identity, _refused(record.task_id, "invalid", problem))

    def _submit_map(self, identity: bytes, client: _Client, chunk: SubmitMap, start: int,
                    end: int) -> None:
        """Tasks ``start:end`` of a map chunk; their ids are ``<client>.<first + place>``."""
        task_ids = [f"{client.prefix}{chunk.first + place}" for place in range(start, end)]
        template = SubmitRecord._make(chunk.template)
        if not template.route and client.route:
            template = template._replace(route=client.route)
        why = self._refusal(template.route)
        if why is None and start == 0 and not client.numbers.claim(chunk.first,
                                                                  len(chunk.args)):
            why = ("invalid", f"the task ids {task_ids[0]!r} and on were sent before (or "
                              f"first={_short(chunk.first)} is no id number)")
        if why is not None:
            for task_id in task_ids:
                self._to_client(identity, _refused(task_id, *why))
            return
        owners = self._owners
        for task_id in task_ids:
            owners[task_id] = identity
        refused = self._intake.submit_map(template, task_ids, chunk.args[start:end])
        for task_id, problem in refused.items():
            owners.pop(task_id, None)
            self._to_client(identity, _refused(task_id, "invalid", problem))

    def _refusal(self, route: str) -> tuple[str, str] | None:
        """Why no task of this route is taken now: (reason, text) for its result row."""
        if self._ledger.closed:
            return "stopping", "the cluster is stopping and takes no new task"
        if route and route not in self._nodes:
            return "invalid", f"route {route!r} is not a node of this cluster"
        return None

    def _to_client(self, identity: bytes, row: DoneRow) -> None:
        client = self._clients.get(identity)
        if client is not None:
            client.outbox.append(row)
            self._dirty.add(identity)

    def _send(self, identity: bytes, client: _Client, message: Message, *,
              block: bool = True) -> bool:
        """False (and the client forgotten) when it is not connected any more."""
        client.last_sent = time.monotonic()
        if self._endpoint.send(identity, message, block=block):
            return True
        self._clients.pop(identity, None)
        return False


def _own_number(task_id: Any, prefix: str) -> int | None:
    """The number of a task id a client made itself (``<prefix><digits>``), else None."""
    if type(task_id) is not str or not task_id.startswith(prefix):
        return None
    number = task_id[len(prefix):]
    return int(number) if number.isascii() and number.isdigit() else None


def _done_row(task_id: str, result: RunResult) -> DoneRow:
    """The row of a final result: the RunResult's fields from ``state`` to ``stderr``."""
    return tuple.__new__(DoneRow, (task_id, *result[1:_DONE_END]))


#: Where DoneRow's fields (after task_id) end in a RunResult.
_DONE_END = RunResult._fields.index("stderr") + 1
assert RunResult._fields[1:_DONE_END] == DoneRow._fields[1:]


def _refused(task_id: str, reason: str, why: str) -> DoneRow:
    """A task that never entered: ``invalid`` (refused as el run refuses bad input), or
    ``stopping`` (the cluster takes no new task)."""
    state = NOT_RUN if reason == "stopping" else FAILED
    return DoneRow(task_id, state, reason, None, None, None, why, None, None, "")
