"""Where the tasks of a master or a node come from: one protocol, :class:`Feed`.

    root:      Ledger -> RootUpstream / LocalSource (LocalFeed)  --take()--> Master / NodeWorker
    below it:  parent --Tasks/Cancel--> ParentLink              --take()--> Master / NodeWorker

A master takes wire tasks (:class:`~ensemble_launcher.orchestrator.wire.WireTask`), a node
worker decoded :class:`~ensemble_launcher.ensemble.Task` objects; everything else about
the two feeds is the same, so both loops read one protocol.
"""

from __future__ import annotations

import time
from typing import Protocol, TypeVar

import zmq

from ensemble_launcher.ensemble import Task
from ensemble_launcher.states import ResultRow, never_ran

T_co = TypeVar("T_co", covariant=True)

Order = tuple[str, int, Task | None]
"""About a reservation of a multi-node task: ("run", key, task) to run the task in
reservation ``key``, ("release", key, None) to free it."""

CANCELLED_MESSAGE = "cancelled by a client"


class Feed(Protocol[T_co]):
    """Where a master's or a node's tasks come from, as ``(key, task)`` pairs."""

    def take(self) -> tuple[int, T_co] | None:
        """The next task available now, or None (see ``exhausted``)."""

    @property
    def exhausted(self) -> bool:
        """True once no task will ever come again."""

    @property
    def halted(self) -> bool:
        """True when shutting down: tasks not yet started are dropped."""

    @property
    def has_pending(self) -> bool:
        """Output the feed's transport still holds: the loop should come back soon."""

    def want(self, n: int) -> None:
        """The taker could start ``n`` more tasks soon (a hint for pull-based feeds)."""

    def sockets(self) -> tuple[zmq.Socket | int, ...]:
        """What to wait on besides the taker's own; ``pump()`` when one is ready."""

    def pump(self) -> None:
        """Handle whatever arrived on ``sockets()``; called on every loop turn."""

    def take_orders(self) -> list[Order]:
        """Orders about reservations of multi-node tasks (see ``orchestrator.gangs``)."""

    def take_cancels(self) -> list[int]:
        """Keys of tasks handed out by this feed that a client cancelled since the last
        call; the taker stops them (or drops them when they have not started) and reports
        each one's result with state ``cancelled``. Unknown keys are ignored."""


class LocalFeed:
    """Base of feeds that live in the root's own process: nothing to wait on, no credit to
    ask for, no reservations (those need several nodes), and no cancels unless a subclass
    has a client to take them from."""

    has_pending = False

    def want(self, n: int) -> None:
        pass

    def sockets(self) -> tuple[zmq.Socket | int, ...]:
        return ()

    def pump(self) -> None:
        pass

    def take_orders(self) -> list[Order]:
        return []

    def take_cancels(self) -> list[int]:
        return []


def never_ran_row(key: int, state: str, reason: str, message: str, host: str) -> ResultRow:
    """The result row of a task that was not started here (no cores, no output)."""
    return ResultRow(*never_ran(state, reason, message, time.time())._replace(key=key),
                     host, "", "")
