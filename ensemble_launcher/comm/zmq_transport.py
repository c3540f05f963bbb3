"""ZMQ transport: a parent's ROUTER, each child's DEALER.

    child DEALER (identity = child name) --tcp or ipc--> parent ROUTER

Over TCP the parent listens only on the address it was given (the interface that reaches
its children, never a wildcard), and every connection is CURVE-encrypted and
authenticated: the parent's ZAP handler admits only clients holding this run's client
key, which only the run's own tree processes hold (in memory, from a start-up file each
reads once; never in an environment). Over ipc, the socket lives in a directory only the
user can enter. Either way a frame is decoded only when it comes from a known child, and
a bad one is dropped (``Inbox``), never raised.

One thread per process: the ZAP requests are answered from the owner's poll loop
(``receive()``), not by an authenticator thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Container, Iterator
from dataclasses import dataclass
from typing import cast

import zmq
from zmq.utils import z85

from ensemble_launcher.comm.messages import Inbox, Message

log = logging.getLogger("ensemble_launcher")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
KEY_ENV = ("EL_CURVE_SERVER_PUBLIC", "EL_CURVE_SERVER_SECRET", "EL_CURVE_CLIENT_PUBLIC",
           "EL_CURVE_CLIENT_SECRET")


@dataclass(frozen=True)
class CurveKeys:
    """One run's keys: masters serve with the server pair, children connect with the client
    pair. A worker holds only what connecting takes (no ``server_secret``: ``b""``)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        return cls(*zmq.curve_keypair(), *zmq.curve_keypair())

    @classmethod
    def from_env(cls, env: dict[str, str]) -> CurveKeys | None:
        """The keys in ``env`` (named as in :data:`KEY_ENV`); None without the client's."""
        values = [env.get(name, "").encode() for name in KEY_ENV]
        server_public, _, client_public, client_secret = values
        if not (server_public and client_public and client_secret):
            return None
        return cls(*values)

    def to_env(self) -> dict[str, str]:
        return {name: value.decode() for name, value in zip(
            KEY_ENV, (self.server_public, self.server_secret, self.client_public,
                      self.client_secret), strict=True) if value}

    def for_client(self) -> CurveKeys:
        """What a child that only connects (a worker) needs: no server secret."""
        return CurveKeys(self.server_public, b"", self.client_public, self.client_secret)


class _Anyone:
    """A ``known`` that holds every identity: for an endpoint whose peers are not children
    named in advance (the clients of a cluster), which still need the key over TCP."""

    def __contains__(self, identity: object) -> bool:
        return True


#: Pass as ``known`` to :meth:`ParentEndpoint.receive` to take frames from any identity.
ANYONE: Container[bytes] = _Anyone()


class ParentEndpoint:
    """Where a master's children connect. ``bind`` is ``ipc`` or ``tcp://<where>`` (an IP
    address, ``[v6 address]``, or an interface name: see ``comm.addresses.tcp_bind``).
    ``ipc_path`` binds ipc at that path, in a directory the caller owns (and keeps private);
    without it we make a private directory of our own."""

    has_pending = False

    def __init__(self, ctx: zmq.Context, bind: str, keys: CurveKeys | None,
                 ipc_path: str | None = None) -> None:
        self._ctx = ctx
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self._zap: zmq.Socket | None = None
        self._ipc_dir: str | None = None
        self._ipc_path: str | None = None
        self.inbox = Inbox()
        if bind.startswith("tcp://"):
            if keys is None or not keys.server_secret:
                raise ValueError("a TCP endpoint needs the run's CURVE server keys")
            self._allowed = z85.decode(keys.client_public)
            self._zap = ctx.socket(zmq.REP)
            self._zap.bind(ZAP_ENDPOINT)
            self.router.setsockopt(zmq.CURVE_SERVER, 1)
            self.router.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
            self.router.setsockopt(zmq.ZAP_DOMAIN, b"ensemble_launcher")
            self.router.setsockopt(zmq.IPV6, int(bind.startswith("tcp://[")))
            self.router.bind(f"{bind}:*")
            self.address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        elif ipc_path is not None:
            self._ipc_path = ipc_path
            self.address = f"ipc://{ipc_path}"
            self.router.bind(self.address)
        else:
            self._ipc_dir = tempfile.mkdtemp(prefix="el-")
            self.address = f"ipc://{self._ipc_dir}/parent"
            self.router.bind(self.address)

    def sockets(self) -> list[zmq.Socket]:
        return [s for s in (self.router, self._zap) if s is not None]

    def send(self, child: bytes, message: Message, *, block: bool = True) -> bool:
        """Send to a child; False when that child is not connected (any more). Without
        ``block``, a peer whose queue is full raises ``zmq.Again`` instead of waiting."""
        try:
            self.router.send_multipart([child, message.encode()], 0 if block else zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise
        return True

    def receive(self, known: Container[bytes]) -> list[tuple[bytes, Message]]:
        """Everything that has arrived from the ``known`` children, without blocking; ZAP
        requests answered on the way. Frames from anyone else are dropped before they are
        decoded (``known`` = :data:`ANYONE` takes every identity), and frames that are not
        messages are dropped (logged by the inbox)."""
        if self._zap is not None:
            self._answer_zap()
        out: list[tuple[bytes, Message]] = []
        for frames in pending_frames(self.router):
            identity = frames[0]
            if identity not in known:
                self.inbox.drop(repr(identity), "not a child of this master")
            elif len(frames) != 2:
                self.inbox.drop(_named(identity), f"{len(frames) - 1} parts instead of 1")
            else:
                message = self.inbox.decode(_named(identity), frames[1])
                if message is not None:
                    out.append((identity, message))
        return out

    def _answer_zap(self) -> None:
        assert self._zap is not None
        for frames in pending_frames(self._zap):
            version, request_id, _domain, _address, _identity, mechanism = frames[:6]
            credentials = frames[6:]
            ok = mechanism == b"CURVE" and credentials[:1] == [self._allowed]
            self._zap.send_multipart([version, request_id, b"200" if ok else b"400",
                                      b"OK" if ok else b"unknown client key", b"", b""])

    def close(self) -> None:
        for sock in self.sockets():
            sock.close(linger=0)
        if self._ipc_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._ipc_path)
            self._ipc_path = None
        if self._ipc_dir is not None:
            for name in os.listdir(self._ipc_dir):
                os.unlink(os.path.join(self._ipc_dir, name))
            os.rmdir(self._ipc_dir)
            self._ipc_dir = None


def _named(identity: bytes) -> str:
    """A peer's identity for the log: ZMQ makes up binary ones for peers that set none."""
    return identity.decode(errors="backslashreplace")


class ChildEndpoint:
    """A child's connection to its parent."""

    has_pending = False

    def __init__(self, ctx: zmq.Context, address: str, name: str,
                 keys: CurveKeys | None) -> None:
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, name.encode())
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.setsockopt(zmq.IPV6, int(address.startswith("tcp://[")))
        self.inbox = Inbox()
        if address.startswith("tcp://"):
            if keys is None:
                raise ValueError("a TCP connection needs CURVE keys")
            self.socket.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
            self.socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
            self.socket.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)
        self.socket.connect(address)

    def send(self, message: Message) -> None:
        self.socket.send(message.encode())

    def receive(self) -> list[Message]:
        """Everything that has arrived from the parent; bad frames are dropped and logged."""
        out: list[Message] = []
        for frames in pending_frames(self.socket):
            if len(frames) != 1:
                self.inbox.drop("the parent", f"{len(frames)} parts instead of 1")
                continue
            message = self.inbox.decode("the parent", frames[0])
            if message is not None:
                out.append(message)
        return out

    def close(self, linger: float = 2.0) -> None:
        self.socket.close(linger=int(linger * 1000))


#: As a plain int: ``int & zmq.POLLIN`` builds an enum member, on every turn of a loop.
_POLLIN = int(zmq.POLLIN)


def pending_frames(sock: zmq.Socket) -> Iterator[list[bytes]]:
    """The messages waiting on ``sock``, without blocking. It asks the socket first rather
    than reading until ``zmq.Again``: an exception per empty read costs more than the
    read, on every turn of a loop."""
    while cast(int, sock.getsockopt(zmq.EVENTS)) & _POLLIN:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


def terminate(ctx: zmq.Context, timeout: float = 5.0) -> bool:
    """Terminate ``ctx`` after its sockets are closed; False if that took over ``timeout``.

    libzmq can wait forever in ``zmq_ctx_term`` when a CURVE socket with a ZAP domain is
    closed in the middle of a handshake (zeromq/libzmq#2733), which would hang the run
    after its work is done. In the main thread a SIGALRM interrupts that wait; pyzmq then
    returns, and the process's exit reclaims the context.
    """
    if threading.current_thread() is not threading.main_thread():
        ctx.term()
        return True
    fired: list[int] = []
    pending, _ = signal.getitimer(signal.ITIMER_REAL)
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        ctx.term()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if pending:
            signal.setitimer(signal.ITIMER_REAL,
                             max(pending - (time.monotonic() - start), 0.001))
    if fired:
        log.warning("the ZMQ context did not terminate within %.0f s; left to process exit",
                    timeout)
    return not fired
