"""The tree's message protocol: typed messages, encoded with msgpack as ``[code, *fields]``.

    parent                                   child
      |  <-- Hello(name, host, pid, cpus, gpus)  |   once, on connect
      |  <-- Request(credit)                     |   "I can take this many more tasks"
      |  --> Define(digest, blob)                |   a function, once per child
      |  --> Tasks([task, ...])                  |   at most the credit asked for
      |  <-- Results([row, ...])                 |   batched by size or a few ms
      |  <-> Heartbeat(time)                     |   when nothing else was sent lately
      |  <-- NodeLost(name, host, keys, why)     |   a sub-master lost one of its children
      |  --> Drain()                             |   no more tasks will come
      |  --> Halt()                              |   shutting down: drop queued tasks
      |  <-- Bye()                               |   drained: everything reported
      |  --> Stop(reason)                        |   cancel now
      |  --> Hold(key, cpus, gpus)               |   multi-node task: reserve a share,
      |  <-- Held(key, cpus, gpus)               |   reserved;
      |  --> RunHeld(key, task) / Release(key)   |   run it there (leader) / free it

Every transport moves the same bytes, so ZMQ and pipes behave the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgpack


class Message:
    code: ClassVar[int]
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
        _BY_CODE[code] = cls
        return cls

    return register


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
    tasks: list[Any]


@_message(5)
@dataclass(slots=True)
class Results(Message):
    rows: list[Any]


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
    task: list[Any]


@_message(16)
@dataclass(slots=True)
class Release(Message):
    key: int


class ProtocolError(Exception):
    """Bytes that are not a message of this protocol."""


def decode(data: bytes) -> Message:
    try:
        code, *values = msgpack.unpackb(data, raw=False, use_list=True)
        cls = _BY_CODE[code]
        return cls(*values)
    except (ValueError, TypeError, KeyError, msgpack.ExtraData) as exc:
        raise ProtocolError(f"undecodable message ({len(data)} bytes): {exc}") from None
