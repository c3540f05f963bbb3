"""The head's door for clients: tasks come in, final results go back to whoever sent them.

    clients --Join/Define/Submit/Cancel--> ClientDesk.pump() --> TaskIntake --> Ledger
    Ledger --> Recorder --listener--> ClientDesk (Done rows per client) --flush()--> clients

The desk lives in the root's loop (its sockets are polled with the tree's), so the head
stays one thread. Over TCP every client proves the cluster's client key (CURVE, ZAP);
over ipc the socket is in the 0700 checkpoint directory. A frame that is not a message of
ours, or a message from a client that has not joined, is dropped and logged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from ensemble_launcher.cluster.checkpoint import ClusterFile
from ensemble_launcher.cluster.intake import TaskIntake
from ensemble_launcher.cluster.protocol import (
    Cancel,
    Closing,
    Done,
    DoneRow,
    Join,
    Refused,
    Shutdown,
    Submit,
    SubmitRecord,
    Welcome,
)
from ensemble_launcher.comm import CurveKeys, Define, Heartbeat, Message, ParentEndpoint
from ensemble_launcher.comm.zmq_transport import ANYONE
from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.task import UnbuildableTask
from ensemble_launcher.orchestrator.ledger import Ledger
from ensemble_launcher.states import FAILED, NOT_RUN, RunResult

log = logging.getLogger("ensemble_launcher")

#: Done rows per message.
_BATCH = 1024
#: Task records taken in per loop turn.
_PER_TURN = 4096
#: A client silent this many heartbeats is gone; its tasks go on, their results stay in
#: the journal.
_LOST_AFTER = 3


@dataclass(slots=True)
class _Client:
    name: str
    route: str
    last_heard: float = field(default_factory=time.monotonic)
    last_sent: float = 0.0
    outbox: list[DoneRow] = field(default_factory=list)


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
        self._arrived: deque[tuple[bytes, list | Cancel | Shutdown]] = deque()
        """Task records received and not yet taken in (at most _PER_TURN a loop turn), with
        the Cancels and Shutdowns among them, which take effect in the order they came."""
        self._last_beat = 0.0
        self._hidden = False

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
            self._to_client(identity, DoneRow(
                task.task_id, result.state, result.reason, result.returncode, result.signal,
                result.value, result.exception, result.traceback, result.stdout,
                result.stderr))

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
        if isinstance(message, Submit):
            self._arrived.extend((identity, item) for item in message.tasks)
        elif isinstance(message, (Cancel, Shutdown)):
            self._arrived.append((identity, message))
        elif isinstance(message, Define):
            self._intake.define(message.digest, message.blob)
        elif not isinstance(message, Heartbeat):
            self._endpoint.inbox.drop(client.name, f"unexpected {type(message).__name__}")

    def _take_in(self) -> None:
        """Submit up to _PER_TURN of the records that arrived: a client's large batch is
        taken in over several turns, so that the loop still answers heartbeats."""
        arrived = self._arrived
        for _ in range(min(len(arrived), _PER_TURN)):
            identity, item = arrived.popleft()
            client = self._clients.get(identity)
            if client is None:
                continue
            if isinstance(item, Cancel):
                for task_id in item.task_ids:
                    self._ledger.cancel(task_id)
                if item.tag is not None:
                    self._ledger.cancel_tag(item.tag)
            elif isinstance(item, Shutdown):
                log.info("cluster: %s asked to stop: no new task is taken; the rest finish",
                         client.name)
                self._ledger.close()
            else:
                self._submit(identity, client, SubmitRecord._make(item))

    def _submit(self, identity: bytes, client: _Client, record: SubmitRecord) -> None:
        if self._ledger.closed:
            self._to_client(identity, _refused(record.task_id, "stopping", "the cluster is "
                                               "stopping and takes no new task"))
            return
        if not record.route and client.route:
            record = record._replace(route=client.route)
        if record.route and record.route not in self._nodes:
            self._to_client(identity, _refused(record.task_id, "invalid", f"route "
                                               f"{record.route!r} is not a node of this "
                                               "cluster"))
            return
        earlier = self._owners.get(record.task_id)
        self._owners[record.task_id] = identity
        problem = self._intake.submit(record, own_prefix=client.name + ".")
        if problem is not None:
            if earlier is None:
                self._owners.pop(record.task_id, None)
            else:
                self._owners[record.task_id] = earlier
            self._to_client(identity, _refused(record.task_id, "invalid", problem))

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


def _refused(task_id: str, reason: str, why: str) -> DoneRow:
    """A task that never entered: ``invalid`` (refused as el run refuses bad input), or
    ``stopping`` (the cluster takes no new task)."""
    state = NOT_RUN if reason == "stopping" else FAILED
    return DoneRow(task_id, state, reason, None, None, None, why, None, None, "")
