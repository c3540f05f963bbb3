"""Tasks as they travel the tree (:class:`WireTask`, a msgpack array).

``command`` is set for commands; ``digest`` names a callable sent once per child in a
``Define``; ``args_blob`` pickles ``(args, kwargs)``. ``priority`` orders the queues of
every master and worker (higher first); ``route`` names the subtree (``main.w0``) that must
run the task, empty for anywhere. A result travels as a
:class:`~ensemble_launcher.states.ResultRow`.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.programs import command_line
from ensemble_launcher.ensemble.task import trusted_task
from ensemble_launcher.executors.pickling import pickle_any, pickle_callable


class WireTask(NamedTuple):
    key: int
    task_id: str
    ensemble: str | None
    command: Any
    digest: bytes | None
    args_blob: bytes | None
    nnodes: int
    ppn: int
    ngpus_per_process: int | float
    cpu_affinity: list[int]
    gpu_affinity: list[str]
    env: dict[str, str] | None
    run_dir: str | None
    timeout: float | None
    stdout_file: str | None
    stderr_file: str | None
    estimated_runtime: float
    priority: int = 0
    route: str = ""


WIRE_FIELDS = len(WireTask._fields)


#: Released callables kept loaded, the most recent ones, at most this many and this many
#: bytes pickled: a client that submits one task at a time releases its function after
#: each, and loading it again (a new object, pickled again on its way to the runners)
#: would cost more than the task.
_RECENT = 128
_RECENT_BYTES = 32 * 1024 * 1024


class FunctionTable:
    """Callables serialized once, by digest. ``release`` forgets one no task needs any
    more (the last _RECENT of them stay loaded), so a long-lived cluster does not keep
    every function it ever ran."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Callable, bytes]] = {}
        self.blobs: dict[bytes, bytes] = {}
        self.functions: dict[bytes, Callable] = {}
        self._recent: OrderedDict[bytes, tuple[Callable, bytes]] = OrderedDict()
        self._recent_bytes = 0

    def digest_of(self, fn: Callable) -> bytes:
        entry = self._by_id.get(id(fn))
        if entry is None:
            digest, blob = pickle_callable(fn)
            entry = (fn, digest)
            self._by_id[id(fn)] = entry
            self.blobs[digest] = blob
        return entry[1]

    def adopt(self, digest: bytes, blob: bytes) -> Callable:
        """The callable a client sent pickled: loaded once, and known by the client's
        digest from then on, so it is not pickled again on its way down."""
        fn = self.functions.get(digest)
        if fn is None:
            recent = self._recent.pop(digest, None)
            if recent is not None:
                self._recent_bytes -= len(recent[1])
            fn = pickle.loads(blob) if recent is None else recent[0]
            self.functions[digest] = fn
            self.blobs[digest] = blob
            self._by_id[id(fn)] = (fn, digest)
        return fn

    def recent_blob(self, digest: bytes) -> bytes | None:
        """The pickled callable of a digest released lately, if it is still kept."""
        recent = self._recent.get(digest)
        return None if recent is None else recent[1]

    def define(self, digest: bytes, blob: bytes) -> None:
        self.blobs[digest] = blob

    def function(self, digest: bytes) -> Callable:
        fn = self.functions.get(digest)
        if fn is None:
            fn = pickle.loads(self.blobs[digest])
            self.functions[digest] = fn
        return fn

    def release(self, digest: bytes) -> None:
        fn = self.functions.pop(digest, None)
        blob = self.blobs.pop(digest, None)
        if fn is not None:
            self._by_id.pop(id(fn), None)
            if blob is not None and len(blob) <= _RECENT_BYTES:
                self._recent[digest] = (fn, blob)
                self._recent_bytes += len(blob)
                while len(self._recent) > _RECENT or self._recent_bytes > _RECENT_BYTES:
                    self._recent_bytes -= len(self._recent.popitem(last=False)[1][1])


def task_to_wire(key: int, task: Task, functions: FunctionTable, priority: int = 0,
                 route: str = "") -> WireTask:
    if task.is_callable:
        command, digest = None, functions.digest_of(task.executable)  # type: ignore[arg-type]
        args_blob = pickle_any((task.args, dict(task.kwargs))) if task.args or task.kwargs \
            else None
    else:
        command, digest, args_blob = command_line(task.executable, task.args), None, None
    return WireTask(key, task.task_id, task.ensemble, command, digest, args_blob, task.nnodes,
                    task.ppn, task.ngpus_per_process, task.cpu_affinity, task.gpu_affinity,
                    dict(task.env) if task.env else None, task.run_dir, task.timeout,
                    task.stdout_file, task.stderr_file, task.estimated_runtime, priority,
                    route)


def task_from_wire(item: WireTask, functions: FunctionTable) -> tuple[int, Task]:
    args, kwargs = pickle.loads(item.args_blob) if item.args_blob is not None else ((), {})
    executable = functions.function(item.digest) if item.digest is not None else item.command
    return item.key, trusted_task(item.task_id, item.nnodes, item.ppn, executable, tuple(args),
                                  kwargs, item.env or {}, item.ngpus_per_process,
                                  item.cpu_affinity or [], item.gpu_affinity or [],
                                  item.run_dir, item.timeout, item.stdout_file,
                                  item.stderr_file, item.estimated_runtime or 0.0, None,
                                  item.ensemble)
