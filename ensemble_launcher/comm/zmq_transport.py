"""ZMQ transport: a parent's ROUTER, each child's DEALER.

    child DEALER (identity = child name) --tcp or ipc--> parent ROUTER

Over TCP the parent listens only on the address it was given (the interface that reaches
its children, never a wildcard), and every connection is CURVE-encrypted and
authenticated: the parent's ZAP handler admits only clients holding this run's client
key, which exists only in the environment of the run's own processes. Over ipc, the
socket lives in a directory only the user can enter.

One thread per process: the ZAP requests are answered from the owner's poll loop
(``receive()``), not by an authenticator thread.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from ensemble_launcher.comm.messages import Message, decode

log = logging.getLogger("ensemble_launcher")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
KEY_ENV = ("EL_CURVE_SERVER_PUBLIC", "EL_CURVE_SERVER_SECRET", "EL_CURVE_CLIENT_PUBLIC",
           "EL_CURVE_CLIENT_SECRET")


@dataclass(frozen=True)
class CurveKeys:
    """One run's keys: masters serve with the server pair, children connect with the client
    pair. All four travel to children in their environment, never on a command line."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        return cls(*zmq.curve_keypair(), *zmq.curve_keypair())

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CurveKeys | None:
        env = os.environ if env is None else env  # type: ignore[assignment]
        values = [env.get(name) for name in KEY_ENV]  # type: ignore[union-attr]
        if not all(values):
            return None
        return cls(*(v.encode() for v in values))  # type: ignore[union-attr]

    def to_env(self) -> dict[str, str]:
        return dict(zip(KEY_ENV, (self.server_public.decode(), self.server_secret.decode(),
                                  self.client_public.decode(), self.client_secret.decode()),
                        strict=True))


class ParentEndpoint:
    """Where a master's children connect. ``bind`` is ``tcp://<ip>`` or ``ipc``."""

    def __init__(self, ctx: zmq.Context, bind: str, keys: CurveKeys | None) -> None:
        self._ctx = ctx
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self._zap: zmq.Socket | None = None
        self._ipc_dir: str | None = None
        if bind.startswith("tcp://"):
            if keys is None:
                raise ValueError("a TCP endpoint needs CURVE keys")
            self._allowed = z85.decode(keys.client_public)
            self._zap = ctx.socket(zmq.REP)
            self._zap.bind(ZAP_ENDPOINT)
            self.router.setsockopt(zmq.CURVE_SERVER, 1)
            self.router.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
            self.router.setsockopt(zmq.ZAP_DOMAIN, b"ensemble_launcher")
            port = self.router.bind_to_random_port(bind)
            self.address = f"{bind}:{port}"
        else:
            self._ipc_dir = tempfile.mkdtemp(prefix="el-")
            self.address = f"ipc://{self._ipc_dir}/parent"
            self.router.bind(self.address)

    def sockets(self) -> list[zmq.Socket]:
        return [s for s in (self.router, self._zap) if s is not None]

    def send(self, child: bytes, message: Message) -> bool:
        """Send to a child; False when that child is not connected (any more)."""
        try:
            self.router.send_multipart([child, message.encode()])
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise
        return True

    def receive(self) -> list[tuple[bytes, Message]]:
        """Everything that has arrived, without blocking; ZAP requests answered on the way."""
        if self._zap is not None:
            self._answer_zap()
        out: list[tuple[bytes, Message]] = []
        while True:
            try:
                child, data = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            out.append((child, decode(data)))

    def _answer_zap(self) -> None:
        assert self._zap is not None
        while True:
            try:
                frames = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id, _domain, _address, _identity, mechanism = frames[:6]
            credentials = frames[6:]
            ok = mechanism == b"CURVE" and credentials[:1] == [self._allowed]
            self._zap.send_multipart([version, request_id, b"200" if ok else b"400",
                                      b"OK" if ok else b"unknown client key", b"", b""])

    def close(self) -> None:
        for sock in self.sockets():
            sock.close(linger=0)
        if self._ipc_dir is not None:
            for name in os.listdir(self._ipc_dir):
                os.unlink(os.path.join(self._ipc_dir, name))
            os.rmdir(self._ipc_dir)
            self._ipc_dir = None


class ChildEndpoint:
    """A child's connection to its parent."""

    def __init__(self, ctx: zmq.Context, address: str, name: str,
                 keys: CurveKeys | None) -> None:
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, name.encode())
        self.socket.setsockopt(zmq.LINGER, 2000)
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
        out: list[Message] = []
        while True:
            try:
                data = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            out.append(decode(data))

    def close(self, linger: float = 2.0) -> None:
        self.socket.close(linger=int(linger * 1000))


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
