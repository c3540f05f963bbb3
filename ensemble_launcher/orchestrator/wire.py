"""Tasks and results as they travel the tree (msgpack-friendly lists).

A task item: ``[key, task_id, ensemble, command, digest, args_blob, nnodes, ppn,
ngpus_per_process, cpu_affinity, gpu_affinity, env, run_dir, timeout, stdout_file,
stderr_file, estimated_runtime]``. ``command`` is set for commands; ``digest`` names a
callable sent once per child in a ``Define``; ``args_blob`` pickles ``(args, kwargs)``.

A result row: a runner result tuple followed by ``host, cpus, gpus``.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from typing import Any

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.programs import command_line
from ensemble_launcher.ensemble.task import trusted_task

DIGEST = 4


class FunctionTable:
    """Callables serialized once per run, by digest."""

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

    def define(self, digest: bytes, blob: bytes) -> None:
        self.blobs[digest] = blob

    def function(self, digest: bytes) -> Callable:
        fn = self.functions.get(digest)
        if fn is None:
            fn = pickle.loads(self.blobs[digest])
            self.functions[digest] = fn
        return fn


def task_to_wire(key: int, task: Task, functions: FunctionTable) -> list[Any]:
    if task.is_callable:
        command, digest = None, functions.digest_of(task.executable)  # type: ignore[arg-type]
        args_blob = _pickle((task.args, dict(task.kwargs))) if task.args or task.kwargs \
            else None
    else:
        command, digest, args_blob = command_line(task.executable, task.args), None, None
    return [key, task.task_id, task.ensemble, command, digest, args_blob, task.nnodes,
            task.ppn, task.ngpus_per_process, task.cpu_affinity, task.gpu_affinity,
            dict(task.env) if task.env else None, task.run_dir, task.timeout,
            task.stdout_file, task.stderr_file, task.estimated_runtime]


def task_from_wire(item: list[Any], functions: FunctionTable) -> tuple[int, Task]:
    (key, task_id, ensemble, command, digest, args_blob, nnodes, ppn, ngpus, cpu_aff, gpu_aff,
     env, run_dir, timeout, stdout_file, stderr_file, estimated) = item
    args, kwargs = pickle.loads(args_blob) if args_blob is not None else ((), {})
    executable = functions.function(digest) if digest is not None else command
    return key, trusted_task(task_id, nnodes, ppn, executable, tuple(args), kwargs, env or {},
                             ngpus, cpu_aff or [], gpu_aff or [], run_dir, timeout,
                             stdout_file, stderr_file, estimated or 0.0, None, ensemble)


def _pickle(value: Any) -> bytes:
    try:
        return pickle.dumps(value, 5)
    except Exception:  # noqa: BLE001 - arguments only cloudpickle can handle
        import cloudpickle

        return cloudpickle.dumps(value)
