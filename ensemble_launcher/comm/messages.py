"""The tree's message protocol: typed messages, encoded with msgpack as ``[code, *fields]``.

    parent                                   child
      |  <-- Hello(name, host, pid, cpus, gpus)  |   once, on connect
      |  <-- Request(credit)                     |   "I can take this many more tasks"
      |  --> Define(digest, blob)                |   a function, once per child
      |  --> Tasks([task, ...])                  |   at most the credit asked for
      |  <-- ResultBatch(rows, running, started) |   once per loop turn, or a tick
      |  <-> Heartbeat(time)                     |   when nothing else was sent lately
      |  <-- NodeLost(name, host, keys, why)     |   a sub-master lost one of its children
      |  --> Drain()                             |   no more tasks will come
      |  --> Halt()                              |   shutting down: drop queued tasks
      |  <-- Bye()                               |   drained: everything reported
      |  --> Stop(reason)                        |   cancel now
      |  --> Hold(key, cpus, gpus)               |   multi-node task: reserve a share,
      |  <-- Held(key, cpus, gpus)               |   reserved;
      |  --> RunHeld(key, task) / Release(key)   |   run it there (leader) / free it
      |  --> Cancel(keys)                        |   a client cancelled these tasks
      |  <-- NodeSamples(rows)                   |   CPU and memory use of nodes, passed up

Every transport moves the same bytes, so ZMQ and pipes behave the same. Whatever arrives
passes one boundary, :class:`Inbox`: a frame that is not a well-formed message of this
protocol (undecodable, an unknown code, the wrong number or types of fields) is dropped
and logged there, so no peer, however broken or hostile, can stop the loop that reads it.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, TypeVar

import msgpack

from ensemble_launcher.errors import _short

log = logging.getLogger("ensemble_launcher")

#: Fields of a result row (``states.ResultRow``): the runner's result, host, cpus, gpus.
RESULT_FIELDS = 18
_NUMBER = (float, int)


def _are_result_rows(rows: Any) -> bool:
    """Whether ``rows`` is a list of result rows whose every field has a type that the
    ledger, the journal (SQLite) and msgpack take: key int; state str; reason str or None;
    returncode and signal int or None; value bytes or None; exception, traceback, stdout
    and stderr str or None; start and end numbers; cpu_user and cpu_system numbers or
    None, max_rss an integer (SQLite's, below 2**63) or None; host, cpus and gpus str.

    Every master runs this for every result, so it looks at each row once: it unpacks the
    row (which checks that it has :data:`RESULT_FIELDS` fields) and tests the types in one
    expression, with no function of ours called per row. A map cannot pass for a row:
    msgpack gives maps str or bytes keys, never an int key."""
    text, integer, number = str, int, _NUMBER
    try:
        for (key, state, reason, returncode, signal, value, exception, traceback, stdout,
             stderr, start, end, cpu_user, cpu_system, max_rss, host, cpus, gpus) in rows:
            if not (type(key) is integer and type(state) is text
                    and (reason is None or type(reason) is text)
                    and (returncode is None or type(returncode) is integer)
                    and (signal is None or type(signal) is integer)
                    and (value is None or type(value) is bytes)
                    and (exception is None or type(exception) is text)
                    and (traceback is None or type(traceback) is text)
                    and (stdout is None or type(stdout) is text)
                    and (stderr is None or type(stderr) is text)
                    and type(start) in number and type(end) in number
                    and (cpu_user is None or type(cpu_user) in number)
                    and (cpu_system is None or type(cpu_system) in number)
                    and (max_rss is None or (type(max_rss) is integer and max_rss < 2**63))
                    and type(host) is text and type(cpus) is text and type(gpus) is text):
                return False
    except (TypeError, ValueError):
        return False
    return type(rows) is list


#: ResultBatch rows, checked by :func:`_are_result_rows` on arrival; sent as ResultRow tuples.
ResultRows = Annotated[list[Any], _are_result_rows]


def _are_node_samples(rows: Any) -> bool:
    """Whether ``rows`` is a list of node samples (``states.NodeSample``: at, node, host,
    cpu_percent, mem_used, mem_total) that the journal takes: finite numbers, two str,
    and 0 <= mem_used <= mem_total < 2**63 (SQLite's integers), so that no peer can make
    the root's journal write fail."""
    text, integer, number, finite = str, int, _NUMBER, float("inf")
    try:
        for at, node, host, cpu_percent, mem_used, mem_total in rows:
            if not (type(at) in number and -finite < at < finite
                    and type(node) is text and type(host) is text
                    and type(cpu_percent) in number and -finite < cpu_percent < finite
                    and type(mem_used) is integer and type(mem_total) is integer
                    and 0 <= mem_used <= mem_total < 2**63):
                return False
    except (TypeError, ValueError):
        return False
    return type(rows) is list


#: NodeSamples rows, checked on arrival; sent as NodeSample tuples.
NodeSampleRows = Annotated[list[Any], _are_node_samples]


def _are_lists(items: Any) -> bool:
    return type(items) is list and all(type(item) is list for item in items)


#: Wire tasks: sent as WireTask tuples, they arrive as lists, rebuilt where they are taken.
WireTasks = Annotated[list[Any], _are_lists]
WireTaskItem = Annotated[Any, lambda value: type(value) is list]


class Message:
    code: ClassVar[int]
    #: One check per field, built from the annotations when the class is registered.
    checks: ClassVar[tuple[Callable[[Any], bool], ...]]
    __slots__ = ()

    def encode(self) -> bytes:
        names: tuple[str, ...] = self.__slots__  # type: ignore[assignment]
        values = [getattr(self, name) for name in names]
        return msgpack.packb([self.code, *values], use_bin_type=True)


_BY_CODE: dict[int, type[Message]] = {}


M = TypeVar("M", bound=type[Message])


def _message(code: int) -> Callable[[M], M]:
    def register(cls: M) -> M:
        if code in _BY_CODE:
            raise ValueError(f"message code {code} used by {_BY_CODE[code].__name__} and "
                             f"{cls.__name__}")
        cls.code = code
        hints = typing.get_type_hints(cls, include_extras=True)
        cls.checks = tuple(_check_for(hints[f.name]) for f in fields(cls))  # type: ignore[arg-type]
        _BY_CODE[code] = cls
        return cls

    return register


def _check_for(hint: Any) -> Callable[[Any], bool]:
    """A predicate for values of the annotation ``hint`` as msgpack returns them: a class,
    ``float`` (ints too), ``Any``, ``X | None``, ``list[X]``, or ``Annotated[X, check]``.
    Any other hint is refused here, when the message class is registered: a check that
    always failed would drop every message of that class."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return args[1]
    if origin is list:
        (item,) = args
        if item is Any:
            return lambda value: type(value) is list
        check_item = _check_for(item)
        return lambda value: type(value) is list and all(map(check_item, value))
    if origin in (typing.Union, types.UnionType):
        checks = tuple(_check_for(a) for a in args if a is not type(None))
        if type(None) not in args or len(checks) != 1:
            raise TypeError(f"message fields take X | None, not the union {hint}")
        (check,) = checks
        return lambda value: value is None or check(value)
    if hint is float:
        return lambda value: type(value) in _NUMBER
    if hint is Any:
        return lambda value: True
    if origin is None and isinstance(hint, type):
        return lambda value: type(value) is hint
    raise TypeError(f"message fields cannot have the type {hint}")


@_message(1)
@dataclass(slots=True)
class Hello(Message):
    name: str
    host: str
    pid: int
    cpus: list[int]
    gpus: list[str]


@_message(2)
@dataclass(slots=True)
class Request(Message):
    credit: int


@_message(3)
@dataclass(slots=True)
class Define(Message):
    digest: bytes
    blob: bytes


@_message(4)
@dataclass(slots=True)
class Tasks(Message):
    tasks: WireTasks


@_message(5)
@dataclass(slots=True)
class ResultBatch(Message):
    """Finished tasks, and what runs now: ``running`` lists ``[ensemble, n]`` for every
    ensemble the sender's nodes have run tasks of, when that changed (else it is empty);
    ``started`` the keys of tasks seen running since the last report, each once (a task
    that ends between two reports is never named)."""

    rows: ResultRows
    running: list[list[Any]] = dataclasses.field(default_factory=list)
    started: list[int] = dataclasses.field(default_factory=list)


@_message(6)
@dataclass(slots=True)
class Heartbeat(Message):
    sent: float


@_message(7)
@dataclass(slots=True)
class NodeLost(Message):
    name: str
    host: str
    keys: list[int]
    why: str


@_message(8)
@dataclass(slots=True)
class Drain(Message):
    pass


@_message(9)
@dataclass(slots=True)
class Bye(Message):
    pass


@_message(10)
@dataclass(slots=True)
class Stop(Message):
    reason: str


@_message(11)
@dataclass(slots=True)
class Failed(Message):
    name: str
    why: str


@_message(12)
@dataclass(slots=True)
class Halt(Message):
    """Start nothing new (drop queued tasks), finish what runs, then say Bye."""


@_message(13)
@dataclass(slots=True)
class Hold(Message):
    """Reserve these cores and this many GPU slots for part of a multi-node task."""

    key: int
    cpus: list[int]
    gpus: list[str]


@_message(14)
@dataclass(slots=True)
class Held(Message):
    key: int
    cpus: list[int]
    gpus: list[str]


@_message(15)
@dataclass(slots=True)
class RunHeld(Message):
    """Run this task (its command starts every node's ranks) in the reservation ``key``."""

    key: int
    task: WireTaskItem


@_message(16)
@dataclass(slots=True)
class Release(Message):
    key: int


@_message(17)
@dataclass(slots=True)
class Cancel(Message):
    """Stop these tasks (sent to the child whose subtree has them) or drop them where they
    wait; each one's result is reported with state ``cancelled``. Unknown keys are
    ignored: a task may have ended while the cancel was on its way."""

    keys: list[int]


@_message(18)
@dataclass(slots=True)
class NodeSamples(Message):
    """Samples of nodes' CPU and memory use (``states.NodeSample`` rows), from a worker
    every ``node_sample_interval``; masters pass them up unchanged to the root's journal."""

    rows: NodeSampleRows


class ProtocolError(Exception):
    """Bytes that are not a message of this protocol."""


def decode(data: bytes) -> Message:
    """The message in ``data``; ProtocolError for anything else, whatever the bytes are."""
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:  # noqa: BLE001 - every way bytes can fail to unpack is the same
        raise ProtocolError(f"undecodable ({len(data)} bytes): {str(exc) or type(exc).__name__}") \
            from None
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ProtocolError(f"not a message ({len(data)} bytes): {_short(obj)}")
    code, *values = obj
    cls = _BY_CODE.get(code)
    if cls is None:
        raise ProtocolError(f"unknown message code {code} ({len(data)} bytes)")
    if len(values) != len(cls.checks):
        raise ProtocolError(f"{cls.__name__} with {len(values)} field(s) instead of "
                            f"{len(cls.checks)}")
    for i, (value, check) in enumerate(zip(values, cls.checks, strict=True)):
        if not check(value):
            field = fields(cls)[i]  # type: ignore[arg-type]
            raise ProtocolError(f"{cls.__name__}.{field.name} is not {field.type}: "
                                f"{_culprit(cls, value)}")
    return cls(*values)


def _culprit(cls: type[Message], value: Any) -> str:
    """The bad value, cut short; for a ResultBatch, the first bad row and where it is."""
    if cls is ResultBatch and type(value) is list:
        for i, row in enumerate(value):
            if not _are_result_rows([row]):
                return (f"row {i} is not {RESULT_FIELDS} fields of the types a result has: "
                        f"{_short(row)}")
    return _short(value)


class Inbox:
    """Where frames from the wire become messages. A frame that is not a message of ours is
    dropped and logged, never raised into the loop that reads it: one bad peer must not stop
    a master or a worker. Only the first ``LOGGED`` drops are logged, so that a flood cannot
    fill the disk; ``dropped`` counts them all."""

    LOGGED = 50

    def __init__(self) -> None:
        self.dropped = 0

    def decode(self, sender: str, data: bytes) -> Message | None:
        try:
            return decode(data)
        except ProtocolError as exc:
            self.drop(sender, str(exc))
            return None

    def drop(self, sender: str, why: str) -> None:
        self.dropped += 1
        if self.dropped <= self.LOGGED:
            last = " (further bad frames are dropped without a log line)" \
                if self.dropped == self.LOGGED else ""
            log.warning("dropped a bad frame from %s: %s%s", sender, why, last)


#: Registers a message class under a code; other packages' protocols (the cluster's) use
#: the same boundary.
register_message = _message


def message_classes() -> dict[int, type[Message]]:
    """Every message class registered so far, by code (the tree's, and those of any
    protocol imported since, such as the cluster's)."""
    return dict(_BY_CODE)
