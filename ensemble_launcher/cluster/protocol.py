"""What a cluster's clients and its head say to each other (msgpack, as the tree's messages).

    client                                        head (the root of the tree)
      |  --> Join(client, node, pid, host)          |   once, on connect
      |  <-- Welcome(heartbeat, nodes, run_dir)     |   or Refused(why)
      |  --> Define(digest, blob)                   |   a callable, once per client
      |  --> Submit([SubmitRecord, ...])            |   batched by the client's thread
      |  --> SubmitMap(template, first, args)       |   a chunk of a map: one record for all
      |  <-- Done([DoneRow, ...])                   |   final results, batched per turn
      |  --> Cancel(task_ids, tag)                  |
      |  <-> Heartbeat(time)                        |   when nothing else was sent lately
      |  --> Shutdown()                             |   el stop: finish everything, then exit
      |  <-- Closing(reason)                        |   the head stops

A task is named by its ``task_id`` everywhere, so a client may pass any live task's future
(its own or, through a Ref, another client's) as a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

from ensemble_launcher.comm.messages import Message, register_message


class Ref:
    """Stands for a future passed as an argument: the head puts the value of task
    ``task_id`` in its place before the task runs."""

    __slots__ = ("task_id",)

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def __reduce__(self) -> tuple:
        return (Ref, (self.task_id,))

    def __repr__(self) -> str:
        return f"Ref({self.task_id!r})"


class SubmitRecord(NamedTuple):
    """One task as a client sends it. ``spec`` holds the Task's options (``executable``
    too for a command); a callable is named by ``digest``; ``args`` pickles ``(args,
    kwargs)``, with a :class:`Ref` for each future among them (``refs`` says so);
    ``after`` names the tasks it waits for."""

    task_id: str
    spec: dict[str, Any]
    digest: bytes | None
    args: bytes | None
    after: list[str]
    refs: bool
    priority: int
    route: str


class DoneRow(NamedTuple):
    """A final result, as a client's future needs it."""

    task_id: str
    state: str
    reason: str | None
    returncode: int | None
    signal: int | None
    value: bytes | None
    exception: str | None
    traceback: str | None
    stdout: str | None
    stderr: str


SUBMIT_FIELDS = len(SubmitRecord._fields)
DONE_FIELDS = len(DoneRow._fields)


def _rows_of(fields: int) -> Any:
    """A check for a list of records of ``fields`` fields, each named by a str task_id (the
    head checks each field's value as it builds the task)."""
    def check(rows: Any) -> bool:
        return type(rows) is list and all(
            type(row) is list and len(row) == fields and type(row[0]) is str for row in rows)
    return check



def _is_submit_record(value: Any) -> bool:
    return type(value) is list and len(value) == SUBMIT_FIELDS


def _are_args(value: Any) -> bool:
    return type(value) is list and bool(value) and \
        all(arg is None or type(arg) is bytes for arg in value)


@register_message(40)
@dataclass(slots=True)
class Join(Message):
    client: str
    node: str
    pid: int
    host: str


@register_message(41)
@dataclass(slots=True)
class Welcome(Message):
    heartbeat: float
    nodes: list[str]
    run_dir: str


@register_message(42)
@dataclass(slots=True)
class Refused(Message):
    why: str


@register_message(43)
@dataclass(slots=True)
class Submit(Message):
    tasks: Annotated[list[list[Any]], _rows_of(SUBMIT_FIELDS)]


@register_message(48)
@dataclass(slots=True)
class SubmitMap(Message):
    """Tasks of one ``map`` chunk: each is ``template`` (a SubmitRecord without task_id and
    args) with the args of its place in ``args`` and the id ``<client>.<first + place>``,
    under the prefix of the client's own ids. One record's checks serve them all."""

    template: Annotated[list[Any], _is_submit_record]
    first: int
    args: Annotated[list[Any], _are_args]


@register_message(44)
@dataclass(slots=True)
class Done(Message):
    rows: Annotated[list[list[Any]], _rows_of(DONE_FIELDS)]


@register_message(45)
@dataclass(slots=True)
class Cancel(Message):
    task_ids: list[str]
    tag: str | None


@register_message(49)
@dataclass(slots=True)
class AddRule(Message):
    """A rule for the cluster's rules engine, cloudpickled (its custom action may be a
    function of the client's ``__main__``)."""

    rule: bytes


@register_message(46)
@dataclass(slots=True)
class Shutdown(Message):
    pass


@register_message(47)
@dataclass(slots=True)
class Closing(Message):
    reason: str

