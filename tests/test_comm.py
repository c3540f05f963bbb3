"""The tree's protocol and its ZMQ transport: every message survives the wire, and only
this run's processes can connect."""

from __future__ import annotations

import os
import stat
import time

import pytest
import zmq

from ensemble_launcher.comm import (
    Bye,
    ChildEndpoint,
    CurveKeys,
    Define,
    Drain,
    Failed,
    Heartbeat,
    Hello,
    NodeLost,
    ParentEndpoint,
    ProtocolError,
    Request,
    Results,
    Stop,
    Tasks,
    decode,
    terminate,
)

MESSAGES = [
    Hello("main.w0", "node1", 42, [0, 1], ["0", "0.1"]), Request(17),
    Define(b"\x01" * 16, b"blob"), Tasks([[1, "t-1", None, "echo hi"]]),
    Results([[1, "succeeded", None, 0, None, b"\x80", None, None, None, "", 1.0, 2.0, "h", "0",
              ""]]),
    Heartbeat(123.5), NodeLost("main.w1", "node2", [3, 4], "no heartbeat"), Drain(), Bye(),
    Stop("interrupted"), Failed("main.w2", "ImportError: x"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    assert decode(message.encode()) == message


def test_garbage_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        decode(b"\x93\x63\x01\x02")


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def _receive(parent, seconds=1.0):
    poller = zmq.Poller()
    for sock in parent.sockets():
        poller.register(sock, zmq.POLLIN)
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        poller.poll(50)
        got += parent.receive()
    return got


def test_tcp_parent_listens_on_one_address_and_admits_only_this_runs_clients(ctx):
    keys = CurveKeys.generate()
    parent = ParentEndpoint(ctx, "tcp://127.0.0.1", keys)
    try:
        assert parent.address.startswith("tcp://127.0.0.1:")
        member = ChildEndpoint(ctx, parent.address, "main.w0", keys)
        stranger_keys = CurveKeys(keys.server_public, b"", *zmq.curve_keypair())
        stranger = ChildEndpoint(ctx, parent.address, "intruder", stranger_keys)
        member.send(Hello("main.w0", "h", 1, [0], []))
        stranger.send(Hello("intruder", "h", 2, [0], []))
        got = _receive(parent)
        assert [identity for identity, _ in got] == [b"main.w0"]
        assert parent.send(b"main.w0", Drain())
        assert not parent.send(b"intruder", Drain())
        member.close(0)
        stranger.close(0)
    finally:
        parent.close()


def test_plain_tcp_client_without_keys_gets_nothing_through(ctx):
    keys = CurveKeys.generate()
    parent = ParentEndpoint(ctx, "tcp://127.0.0.1", keys)
    try:
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.IDENTITY, b"raw")
        raw.connect(parent.address)
        raw.send(Hello("raw", "h", 1, [0], []).encode())
        assert _receive(parent, 0.5) == []
        raw.close(0)
    finally:
        parent.close()


def test_ipc_socket_lives_in_a_private_directory(ctx):
    parent = ParentEndpoint(ctx, "ipc", None)
    path = parent.address.removeprefix("ipc://")
    directory = os.path.dirname(path)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    child = ChildEndpoint(ctx, parent.address, "main.w0", None)
    child.send(Bye())
    assert _receive(parent, 0.5) == [(b"main.w0", Bye())]
    child.close(0)
    parent.close()
    assert not os.path.exists(directory)


def test_terminating_a_context_that_cannot_finish_gives_up_in_bounded_time():
    """libzmq can hang in zmq_ctx_term (a CURVE handshake cut short); the launcher's exit
    must not. A socket left open is a certain way to make term wait forever."""
    import signal

    handler = signal.getsignal(signal.SIGALRM)
    ctx = zmq.Context()
    left_open = ctx.socket(zmq.DEALER)
    start = time.monotonic()
    assert terminate(ctx, timeout=0.3) is False
    assert time.monotonic() - start < 5
    assert signal.getsignal(signal.SIGALRM) is handler
    left_open.close(linger=0)

    clean = zmq.Context()
    clean.socket(zmq.DEALER).close(linger=0)
    assert terminate(clean, timeout=5) is True
