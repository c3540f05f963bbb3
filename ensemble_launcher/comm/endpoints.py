"""The one interface of both transports (ZMQ and pipes), for the loops that use them.

A master holds a :class:`ParentSide`, each child a :class:`ChildSide`; the loops never ask
which transport they have. ``has_pending`` is True while a transport still holds output
the kernel did not take (pipes): the loop should come back soon instead of waiting a turn.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any, Protocol

from ensemble_launcher.comm.messages import Message


class ParentSide(Protocol):
    """A master's end: where its children's frames arrive and its messages leave."""

    address: str

    @property
    def has_pending(self) -> bool: ...

    def sockets(self) -> Sequence[Any]:
        """What to poll (ZMQ sockets or file descriptors) for frames from the children."""

    def send(self, child: bytes, message: Message) -> bool:
        """Send to ``child``; False when that child is not connected (any more)."""

    def receive(self, known: Container[bytes]) -> list[tuple[bytes, Message]]:
        """What the ``known`` children sent, without blocking; bad frames are dropped."""

    def close(self) -> None: ...


class ChildSide(Protocol):
    """A child's end of its connection to its parent."""

    socket: Any
    """What to poll for frames from the parent (a ZMQ socket or a file descriptor)."""

    @property
    def has_pending(self) -> bool: ...

    def send(self, message: Message) -> None: ...

    def receive(self) -> list[Message]:
        """What the parent sent, without blocking; bad frames are dropped."""

    def close(self, linger: float = 2.0) -> None: ...
