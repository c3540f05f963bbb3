"""The ``multiprocessing`` transport: a socket pair per child, for trees on one node.

    parent: one end per child --frames (4-byte length + message)--> child: the other end

The parent creates the pair before it starts the child and hands the child its end as an
inherited file descriptor (``EL_PARENT=fd://N``): nothing listens, so nothing else can
connect. Both sides write without blocking: what the kernel does not take waits in a
buffer, flushed on every loop turn (``has_pending`` asks the loop to come back soon).
A frame that is not a message is dropped and logged (``Inbox``), never raised.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Container

from ensemble_launcher.comm.messages import Inbox, Message

_HEADER = struct.Struct("!I")


class _Framed:
    """One non-blocking stream socket carrying length-prefixed messages."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._out = bytearray()
        self._in = bytearray()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self._out += _HEADER.pack(len(data))
        self._out += data
        self.flush()

    def flush(self) -> None:
        while self._out and not self.closed:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            except OSError:
                self.closed = True
                return
            del self._out[:sent]

    @property
    def has_pending(self) -> bool:
        return bool(self._out) and not self.closed

    def receive(self) -> list[bytes]:
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self._in += chunk
        frames = []
        while len(self._in) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._in)
            if len(self._in) < _HEADER.size + size:
                break
            frames.append(bytes(self._in[_HEADER.size:_HEADER.size + size]))
            del self._in[:_HEADER.size + size]
        return frames

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class PipeParentEndpoint:
    """A master's side: one socket pair per child, made with :meth:`pair_for`."""

    address = "fd"

    def __init__(self) -> None:
        self._links: dict[bytes, _Framed] = {}
        self.inbox = Inbox()

    def pair_for(self, child: bytes) -> socket.socket:
        """Make the pair for ``child``; return the end to hand to the child process."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._links[child] = _Framed(ours)
        return theirs

    def sockets(self) -> list[int]:
        return [link.fileno() for link in self._links.values() if not link.closed]

    @property
    def has_pending(self) -> bool:
        return any(link.has_pending for link in self._links.values())

    def send(self, child: bytes, message: Message) -> bool:
        link = self._links.get(child)
        if link is None or link.closed:
            return False
        link.send(message.encode())
        return not link.closed

    def receive(self, known: Container[bytes]) -> list[tuple[bytes, Message]]:
        """What the ``known`` children sent (each pair has one child at its other end)."""
        out: list[tuple[bytes, Message]] = []
        for child, link in self._links.items():
            link.flush()
            frames = link.receive()
            if child not in known:
                continue
            for frame in frames:
                message = self.inbox.decode(child.decode(), frame)
                if message is not None:
                    out.append((child, message))
        return out

    def close(self) -> None:
        for link in self._links.values():
            link.close()


class PipeChildEndpoint:
    """A child's side: the inherited end of its socket pair."""

    def __init__(self, fd: int) -> None:
        self._link = _Framed(socket.socket(fileno=fd))
        self.socket = self._link.fileno()
        self.inbox = Inbox()

    def send(self, message: Message) -> None:
        self._link.send(message.encode())

    @property
    def has_pending(self) -> bool:
        return self._link.has_pending

    def receive(self) -> list[Message]:
        self._link.flush()
        messages = [self.inbox.decode("the parent", frame) for frame in self._link.receive()]
        return [m for m in messages if m is not None]

    def close(self, linger: float = 2.0) -> None:
        import time

        deadline = time.monotonic() + linger
        while self._link.has_pending and time.monotonic() < deadline:
            time.sleep(0.005)
            self._link.flush()
        self._link.close()
