"""Many simulated workers in one process, so that one machine runs a tree of thousands of
logical nodes (``simulated_nodes_per_process``).

Each logical node is what a worker process runs: a :class:`NodeWorker` fed by its own
:class:`ParentLink`, with its own connection to its real master, and a
:class:`SimulatedPool` for its slots. What the nodes share is one loop and one poll over
all their sockets: a node takes its turn (``settle`` what ended, then ``dispatch``) when
its socket has a message, one of its tasks ends, or its tick is due, exactly as its own
process would after its wait. Masters and the root stay real processes.

A node whose master stops answering, or tells it to stop, leaves alone; the others go
on. The process ends once every node has.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import dataclass, field

import zmq

from ensemble_launcher.comm import Failed
from ensemble_launcher.executors.command import poll_ms
from ensemble_launcher.executors.simulated import SimulatedPool
from ensemble_launcher.orchestrator.collector import spared_collector
from ensemble_launcher.orchestrator.node_worker import NodeWorker
from ensemble_launcher.orchestrator.parent_link import ParentLink, ParentLost

log = logging.getLogger("ensemble_launcher")

#: How late a turn may be, so that the turns due this close together take one wake-up: a
#: poll over every node's socket costs about a microsecond per socket, which waking for
#: each node's tick and each task's end would pay thousands of times a second.
_BATCH_SECONDS = 0.005
#: A hosted node reports what runs once a second, not ten times: thousands of nodes
#: ticking share this process's one core.
HOSTED_TICK_SECONDS = 1.0


@dataclass(eq=False)
class HostedNode:
    name: str
    link: ParentLink
    pool: SimulatedPool
    worker: NodeWorker
    next_turn: float = field(default=0.0)
    """Monotonic time of its next turn at the latest: its tick, or its next task's end."""


class HostedWorkers:
    def __init__(self, nodes: list[HostedNode]) -> None:
        self._nodes = nodes
        self._by_socket = {node.link.endpoint.socket: node for node in nodes}
        self._poller = zmq.Poller()
        for sock in self._by_socket:
            self._poller.register(sock, zmq.POLLIN)
        self.failures = 0

    def run(self) -> None:
        with spared_collector():
            self._run()

    def _run(self) -> None:
        live = [node for node in self._nodes if self._dispatch(node)]
        while live:
            now = time.monotonic()
            wait = max(0.0, min(node.next_turn for node in live) + _BATCH_SECONDS - now)
            readable = {sock for sock, _ in self._poller.poll(poll_ms(wait))}
            now = time.monotonic()
            live = [node for node in live
                    if not _turn_due(node, now, readable) or self._turn(node)]

    def _turn(self, node: HostedNode) -> bool:
        """One turn of ``node``: what its own worker loop does after its wait."""
        try:
            node.worker.settle(node.pool.ended())
        except Exception as exc:  # noqa: BLE001 - one node's failure ends that node only
            return self._failed(node, exc)
        return self._dispatch(node)

    def _dispatch(self, node: HostedNode) -> bool:
        """The first half of ``node``'s turn; False (and the node closed) once it is done."""
        try:
            if node.worker.dispatch():
                now = time.monotonic()
                due = node.pool.next_due()
                node.next_turn = min(now + node.worker.wait_timeout(),
                                     math.inf if due is None else due)
                return True
            node.worker.finish()
            node.link.bye()
            log.info("%s: drained, %d task results sent", node.name, node.link.sent_results)
        except ParentLost as exc:
            log.error("%s: %s; stopping", node.name, exc)
        except Exception as exc:  # noqa: BLE001 - one node's failure ends that node only
            return self._failed(node, exc)
        self._close(node)
        return False

    def _failed(self, node: HostedNode, exc: Exception) -> bool:
        log.exception("%s failed", node.name)
        self.failures += 1
        node.link.endpoint.send(Failed(node.name, f"{type(exc).__name__}: {exc}\n"
                                                  f"{traceback.format_exc(limit=5)}"))
        self._close(node)
        return False

    def _close(self, node: HostedNode) -> None:
        self._poller.unregister(node.link.endpoint.socket)
        node.pool.close()
        node.link.close()

    def close(self) -> None:
        """Close the nodes still open (after an interrupt)."""
        for node in self._nodes:
            if not node.link.endpoint.socket.closed:
                node.link.close()


def _turn_due(node: HostedNode, now: float, readable: set[zmq.Socket]) -> bool:
    return node.next_turn <= now or node.link.endpoint.socket in readable
