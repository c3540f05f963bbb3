"""Tasks as they travel the tree (:class:`WireTask`, a msgpack array).

``command`` is set for commands; ``digest`` names a callable sent once per child in a
``Define``; ``args_blob`` pickles ``(args, kwargs)``. ``priority`` orders the queues of
every master and worker (higher first); ``route`` names the subtree (``main.w0``) that must
run the task, empty for anywhere. A result travels as a
:class:`~ensemble_launcher.states.ResultRow`.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.programs import command_line
from ensemble_launcher.ensemble.task import trusted_task


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


class FunctionTable:
    """Callables serialized once, by digest. ``release`` forgets one no task needs any
    more, so a long-lived cluster does not keep every function it ever ran."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Callable, bytes]] = {}
        self.blobs: dict[bytes, bytes] = {}
        self.functions: dict[bytes, Callable] = {}

    def digest_of(self, fn: Callable) -> bytes:
        entry = self._by_id.get(id(fn))
        if entry is None:
            import cloudpickle

            blob = cloudpickle.dumps(fn)
            digest = hashlib.blake2b(blob, digest_size=16).digest()
            entry = (fn, digest)
            self._by_id[id(fn)] = entry
            self.blobs[digest] = blob
        return entry[1]

    def adopt(self, digest: bytes, blob: bytes) -> Callable:
        """The callable a client sent pickled: loaded once, and known by the client's
        digest from then on, so it is not pickled again on its way down."""
        fn = self.functions.get(digest)
        if fn is None:
            fn = pickle.loads(blob)
            self.functions[digest] = fn
            self.blobs[digest] = blob
            self._by_id[id(fn)] = (fn, digest)
        return fn

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
        self.blobs.pop(digest, None)
        if fn is not None:
            self._by_id.pop(id(fn), None)


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


def pickle_any(value: Any) -> bytes:
    """``value`` pickled, by cloudpickle when plain pickle refuses it (a lambda among the
    arguments)."""
    try:
        return pickle.dumps(value, 5)
    except Exception:  # noqa: BLE001 - arguments only cloudpickle can handle
        import cloudpickle

        return cloudpickle.dumps(value)
