"""The tree's protocol and its ZMQ transport: every message survives the wire, and only
this run's processes can connect."""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
import time
import types
import typing

import msgpack
import pytest
import zmq

from ensemble_launcher.cluster.protocol import DoneRow, SubmitRecord
from ensemble_launcher.comm import (
    Bye,
    ChildEndpoint,
    CurveKeys,
    Drain,
    Hello,
    ParentEndpoint,
    PipeChildEndpoint,
    PipeParentEndpoint,
    ProtocolError,
    Request,
    decode,
    terminate,
)
from ensemble_launcher.comm.messages import message_classes
from ensemble_launcher.orchestrator.wire import WireTask
from ensemble_launcher.states import NodeSample, ResultRow


def _wire_task() -> list:
    return list(WireTask(1, "t-1", None, "echo hi", None, None, 1, 1, 0, [], [], None, None,
                         None, None, None, 0.0))


#: Samples for the fields whose type is a check of their own (``Annotated``), by
#: ``Class.field``: a new message with such a field fails below until it has one here.
ANNOTATED_SAMPLES = {
    "Tasks.tasks": lambda: [_wire_task()],
    "RunHeld.task": _wire_task,
    "ResultBatch.rows": lambda: [list(ResultRow(1, "succeeded", None, 0, None, b"\x80", None,
                                                None, None, "", 1.0, 2.0, 0.5, 0.1,
                                                2**20, "h", "0", ""))],
    "Submit.tasks": lambda: [list(SubmitRecord("t-1", {"executable": "echo"}, None, None,
                                               ["t-0"], False, 0, ""))],
    "SubmitMap.template": lambda: list(SubmitRecord("", {}, b"\x01" * 16, None, [], False, 0,
                                                    "")),
    "SubmitMap.args": lambda: [b"\x80\x05", None],
    "NodeSamples.rows": lambda: [list(NodeSample(1.5, "main.w0", "h", 12.5, 1 << 30,
                                                 1 << 34))],
    "Done.rows": lambda: [list(DoneRow("t-1", "succeeded", None, 0, None, None, None, None,
                                       None, ""))],
}
_PLAIN_SAMPLES = {int: 7, str: "main.w0", float: 1.5, bytes: b"\x01" * 16, bool: True}


def _sample(hint, where: str):
    """A value of the type ``hint`` as a message field takes it (see comm.messages)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        assert where in ANNOTATED_SAMPLES, f"add a sample for {where} to ANNOTATED_SAMPLES"
        return ANNOTATED_SAMPLES[where]()
    if origin is list:
        return [] if args[0] is typing.Any else [_sample(args[0], where)]
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)), where)
    if hint is typing.Any:
        return "any"
    return _PLAIN_SAMPLES[hint]


def _sample_message(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    return cls(*(_sample(hints[f.name], f"{cls.__name__}.{f.name}")
                 for f in dataclasses.fields(cls)))


#: Every registered message, the cluster's too: a new one is covered by construction.
MESSAGES = [_sample_message(cls) for cls in message_classes().values()]


def test_the_registry_holds_the_tree_and_cluster_protocols():
    names = {type(m).__name__ for m in MESSAGES}
    assert {"Hello", "Tasks", "ResultBatch", "Halt", "Hold", "Held", "RunHeld", "Release",
            "Cancel", "Join", "Submit", "Done", "Closing"} <= names


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: f"{m.code}-{type(m).__name__}")
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


def _receive(parent, seconds=1.0, known=(b"main.w0",)):
    poller = zmq.Poller()
    for sock in parent.sockets():
        poller.register(sock, zmq.POLLIN)
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        poller.poll(50)
        got += parent.receive(known)
    return got


def test_tcp_parent_listens_on_one_address_and_admits_only_this_runs_clients(ctx):
    keys = CurveKeys.generate()
    parent = ParentEndpoint(ctx, "tcp://127.0.0.1", keys)
    try:
        assert parent.address.startswith("tcp://127.0.0.1:")
        member = ChildEndpoint(ctx, parent.address, "main.w0", keys.for_client())
        stranger_keys = CurveKeys(keys.server_public, b"", *zmq.curve_keypair())
        stranger = ChildEndpoint(ctx, parent.address, "intruder", stranger_keys)
        member.send(Hello("main.w0", "h", 1, [0], []))
        stranger.send(Hello("intruder", "h", 2, [0], []))
        got = _receive(parent, known=(b"main.w0", b"intruder"))
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


def _row(field: int, value) -> list:
    """A good result row with ``value`` in ``field``."""
    row = [1, "failed", "signal", -15, 15, None, "killed", None, None, "", 1.0, 2.0, None, None,
           None, "h", "0", ""]
    row[field] = value
    return row


#: Frames that are not messages of ours, one of each way to be wrong.
GARBAGE = [
    [b"\xc1"],                                              # not msgpack
    [b""],                                                  # empty
    [b"\x92\x02"],                                          # truncated
    [Request(1).encode() + b"\x00"],                        # extra bytes after a message
    [msgpack.packb("Request")],                             # not a list
    [msgpack.packb([99, 1])],                               # unknown message kind
    [msgpack.packb([2, 1, 2, 3])],                          # wrong number of fields
    [msgpack.packb([2, "many"])],                           # wrong field type
    [msgpack.packb([5, [[1, "succeeded"]], []])],           # a result row cut short
    [msgpack.packb([5, [_row(4, [15])], []])],              # a list for a signal
    [msgpack.packb([5, [_row(2, {"why": 1})], []])],        # a map for a reason
    [msgpack.packb([5, [_row(5, {"v": 1})], []])],          # a map for a value
    [msgpack.packb([5, [_row(14, "1 GB")], []])],           # a str for a peak RSS
    [msgpack.packb([5, [_row(14, 2**64 - 1)], []])],        # a peak RSS SQLite cannot hold
    [msgpack.packb([1, "n", "h", 1, [0, "x"], []])],        # a wrong type inside a list
]
#: ZMQ only: a message in two parts.
TWO_PARTS = [Request(1).encode(), Request(2).encode()]


def test_a_known_child_sending_garbage_gets_only_its_good_messages_through(ctx, caplog):
    parent = ParentEndpoint(ctx, "ipc", None)
    child = ChildEndpoint(ctx, parent.address, "main.w0", None)
    try:
        for frames in [*GARBAGE, TWO_PARTS]:
            child.socket.send_multipart(frames)
        child.send(Request(7))
        assert _receive(parent, 1.0) == [(b"main.w0", Request(7))]
        drops = [r.message for r in caplog.records if "dropped a bad frame" in r.message]
        assert len(drops) == len(GARBAGE) + 1
        assert all("from main.w0" in d for d in drops)
        assert any("unknown message code 99" in d for d in drops)
        assert any("Request.credit is not int" in d for d in drops)
    finally:
        child.close(0)
        parent.close()


def test_a_stranger_is_dropped_before_its_frames_are_decoded(ctx, caplog):
    parent = ParentEndpoint(ctx, "ipc", None)
    stranger = ctx.socket(zmq.DEALER)
    stranger.setsockopt(zmq.IDENTITY, b"intruder")
    stranger.connect(parent.address)
    try:
        stranger.send(Hello("intruder", "h", 1, [0], []).encode())
        stranger.send(b"\xc1")
        assert _receive(parent, 0.5) == []
        drops = [r.message for r in caplog.records if "dropped a bad frame" in r.message]
        assert drops == ["dropped a bad frame from b'intruder': not a child of this master"] * 2
    finally:
        stranger.close(0)
        parent.close()


def test_a_child_drops_garbage_from_its_parent(ctx, caplog):
    parent = ParentEndpoint(ctx, "ipc", None)
    child = ChildEndpoint(ctx, parent.address, "main.w0", None)
    try:
        child.send(Hello("main.w0", "h", 1, [0], []))
        assert _receive(parent, 0.5)
        for frames in [*GARBAGE, TWO_PARTS]:
            parent.router.send_multipart([b"main.w0", *frames])
        parent.send(b"main.w0", Drain())
        got, deadline = [], time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            child.socket.poll(50)
            got += child.receive()
        assert got == [Drain()]
        drops = [r.message for r in caplog.records if "dropped a bad frame" in r.message]
        assert len(drops) == len(GARBAGE) + 1 and all("from the parent" in d for d in drops)
    finally:
        child.close(0)
        parent.close()


def test_pipes_drop_garbage_both_ways(caplog):
    parent = PipeParentEndpoint()
    theirs = parent.pair_for(b"main.w0")
    child = PipeChildEndpoint(theirs.detach())
    ours = parent._links[b"main.w0"].sock
    try:
        framed = b"".join(struct.pack("!I", len(frame)) + frame for [frame] in GARBAGE)
        ours.sendall(framed)
        parent.send(b"main.w0", Drain())
        assert _poll_until(child.receive) == [Drain()]
        child._link.sock.sendall(framed)
        child.send(Bye())
        assert _poll_until(lambda: parent.receive({b"main.w0"})) == [(b"main.w0", Bye())]
        drops = [r.message for r in caplog.records if "dropped a bad frame" in r.message]
        assert len(drops) == 2 * len(GARBAGE)
        assert {d.split(":")[0] for d in drops} == {"dropped a bad frame from the parent",
                                                    "dropped a bad frame from main.w0"}
    finally:
        child.close(0)
        parent.close()


def _poll_until(receive, seconds=5.0):
    got, deadline = [], time.monotonic() + seconds
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
        got = receive()
    return got


def test_a_wildcard_bind_address_is_refused_before_the_run(tmp_path):
    import subprocess
    import sys

    (tmp_path / "e.json").write_text('{"ensembles": {"a": {"cmd_template": "true"}}}')
    (tmp_path / "lc.json").write_text('{"bind_address": "0.0.0.0"}')
    out = subprocess.run([sys.executable, "-m", "ensemble_launcher.cli", "run", "e.json",
                          "--launcher-config", "lc.json", "--out", "run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert all(part in out.stderr for part in ("lc.json", "'bind_address'", "'0.0.0.0'"))
    assert "listens on every interface" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, why", [
    ("::", "listens on every interface"), ("*", "listens on every interface"),
    ("0:0::0", "listens on every interface"),
    ("not-an-ip", "neither an IP address nor a network interface of this host"),
    ("10.255.255.254", "is not an address of this host"),
    ("127.0.0.1:5555", "neither an IP address nor a network interface"),
])
def test_bind_address_must_be_one_address_of_this_host(tmp_path, value, why):
    from ensemble_launcher.config import LauncherConfig
    from ensemble_launcher.config.files import load_config_file
    from ensemble_launcher.errors import ConfigError

    path = tmp_path / "lc.json"
    path.write_text(f'{{"bind_address": "{value}"}}')
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config_file(LauncherConfig, path)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert all(part in message for part in (str(path), "'bind_address'", repr(value), why))
    assert "leave it unset" in str(err.value)


def test_bind_address_takes_an_address_or_an_interface_of_this_host():
    from ensemble_launcher.config import LauncherConfig

    for value in ("127.0.0.1", "lo"):
        assert LauncherConfig(bind_address=value).bind_address == value


def test_an_optional_field_is_checked_and_an_uncheckable_one_is_refused_at_once():
    """A field ``str | None`` takes both over a real socket pair, and drops anything else;
    a hint that no check is built for fails when the class is registered, not by dropping
    every message of that class later."""
    from dataclasses import dataclass

    from ensemble_launcher.comm import Message, messages

    @dataclass(slots=True)
    class Note(Message):
        text: str | None

    parent = PipeParentEndpoint()
    child = PipeChildEndpoint(parent.pair_for(b"main.w0").detach())
    messages._message(250)(Note)
    try:
        for message in (Note(None), Note(3), Note("x")):  # type: ignore[arg-type]
            parent.send(b"main.w0", message)
        got: list = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += _poll_until(child.receive, 0.5)
        assert got == [Note(None), Note("x")]
    finally:
        del messages._BY_CODE[250]
        child.close(0)
        parent.close()
    with pytest.raises(TypeError, match="cannot have the type dict"):
        @messages._message(251)
        @dataclass(slots=True)
        class Table(Message):
            table: dict[str, int]
    with pytest.raises(TypeError, match="X | None"):
        @messages._message(252)
        @dataclass(slots=True)
        class Either(Message):
            value: int | str
    assert 251 not in messages._BY_CODE and 252 not in messages._BY_CODE
