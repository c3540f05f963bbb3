"""Tasks entering a running cluster: each is built, checked as ``el run`` checks an ensemble,
journaled, and submitted to the ledger; after a restart, the journal's unfinished ones are
submitted again.

A task's checks are those of a file's tasks before a run, done per task (cached per shape,
program and path, so that a million tasks of one kind cost one check each kind): its
options, its resources against the nodes, its program on PATH, its run_dir and output
files, the size of its command line.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Container, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgpack

from ensemble_launcher.cluster.protocol import Ref, SubmitRecord
from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.loader import requirement_of
from ensemble_launcher.ensemble.preflight import PATH_OPTIONS, exec_problem, path_problem
from ensemble_launcher.ensemble.programs import direct_program, resolve_program
from ensemble_launcher.ensemble.task import UnbuildableTask, trusted_task
from ensemble_launcher.errors import ConfigError, ResourceError, _short
from ensemble_launcher.orchestrator.ledger import Ledger, Submission
from ensemble_launcher.orchestrator.wire import FunctionTable
from ensemble_launcher.resources import NodeResources, check_requirements
from ensemble_launcher.states import NOT_RUN
from ensemble_launcher.store import RunStore

log = logging.getLogger("ensemble_launcher")

_TASK_OPTIONS = frozenset({"nnodes", "ppn", "executable", "env", "ngpus_per_process",
                           "cpu_affinity", "gpu_affinity", "run_dir", "timeout",
                           "stdout_file", "stderr_file", "estimated_runtime", "tag",
                           "ensemble", "retries"})
#: Distinct paths and programs remembered as checked.
_CACHED = 4096


class TaskIntake:
    def __init__(self, ledger: Ledger, store: RunStore, functions: FunctionTable,
                 nodes: list[NodeResources], widest: int, run_dir: Path,
                 earlier: Container[str] = (), ensemble_ids: Container[str] = ()) -> None:
        self._ledger = ledger
        self._store = store
        self._functions = functions
        self._nodes = nodes
        self._widest = widest
        self.run_dir = run_dir
        self._blobs: dict[bytes, bytes] = {}
        self._uses: dict[bytes, int] = {}
        self._journaled: set[bytes] = set(store.functions())
        self._digests: dict[str, bytes] = {}
        self._earlier = earlier
        self._ensemble_ids = ensemble_ids
        self._given: set[str] = set()
        """Task ids clients chose themselves (not made under their session's prefix)."""
        self._shapes: dict[tuple, bool] = {}
        """Whether a task of that shape fits a node."""
        self._checked: dict[tuple, str | None] = {}
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def define(self, digest: bytes, blob: bytes) -> None:
        self._blobs[digest] = blob

    def submit(self, record: SubmitRecord, own_prefix: str = "") -> str | None:
        """Submit one task; what is wrong with it instead, in one line. Nothing a client
        sends can raise here: every field is checked before the task is journaled."""
        task_id = record.task_id
        try:
            problem = record_problem(record)
            if problem is not None:
                return problem
            own = bool(own_prefix) and task_id.startswith(own_prefix)
            if task_id in self._ledger.live_ids or (not own and self._earlier_id(task_id)):
                return f"task_id {task_id!r} is already a task of this cluster"
            task = self._build(record)
        except Exception as exc:  # noqa: BLE001 - whatever a client sent, one line, never fatal
            return f"task {_short(task_id)}: {exc}"
        problem = self._plain_callable_problem(task) if _plain_callable(record) \
            else self._problem(task)
        if problem is not None:
            self.finished(task)
            return problem
        self._journal(record)
        if not own:
            self._given.add(task_id)
        self._enter(task, record)
        return None

    def submit_map(self, template: SubmitRecord, task_ids: list[str],
                   blobs: list[Any]) -> dict[str, str]:
        """The tasks of one map chunk: ``template`` with each one's id (under the client's
        own prefix, new by construction) and args. The template is checked once, as one
        record; what is wrong with any task, by task id (every one, when the template is
        wrong). The chunk is journaled as one row."""
        problem = record_problem(template._replace(task_id=task_ids[0]))
        if problem is None and (template.refs or template.digest is None or
                                template.args is not None or len(blobs) != len(task_ids)):
            problem = "a map's template names a callable, and each task has its own arguments"
        if problem is not None:
            return dict.fromkeys(task_ids, problem)
        refused: dict[str, str] = {}
        accepted = self._built_with_options(template, task_ids, blobs, refused) \
            if template.spec else self._built_plain(template, task_ids, blobs, refused)
        if not accepted:
            return refused
        self._journal_map(template, [task.task_id for task in accepted],
                          blobs if not refused else
                          [b for t, b in zip(task_ids, blobs, strict=True) if t not in refused])
        if template.after:
            for task in accepted:
                self._enter(task, template)
        else:
            self._ledger.submit_alike(accepted, template.priority, template.route)
        return refused

    def _built_with_options(self, template: SubmitRecord, task_ids: list[str],
                            blobs: list[Any], refused: dict[str, str]) -> list[Task]:
        """A chunk's tasks when its template sets options: each built and checked as a
        Task; what is wrong with one goes to ``refused``."""
        accepted: list[Task] = []
        for task_id, blob in zip(task_ids, blobs, strict=True):
            try:
                task = self._build_task(task_id, template.spec, template.digest, blob)
            except Exception as exc:  # noqa: BLE001 - whatever a client sent, one line
                refused[task_id] = f"task {_short(task_id)}: {exc}"
                continue
            problem = self._problem(task)
            if problem is not None:
                self.finished(task)
                refused[task_id] = problem
                continue
            accepted.append(task)
        return accepted

    def _built_plain(self, template: SubmitRecord, task_ids: list[str], blobs: list[Any],
                     refused: dict[str, str]) -> list[Task]:
        """A chunk's tasks when its template sets no option (what ``map`` of a callable
        sends): its callable is looked up once, and one check serves every task, so that
        a task costs little more than its arguments."""
        digest = template.digest
        assert digest is not None
        try:
            fn = self._function(digest)
        except Exception as exc:  # noqa: BLE001 - whatever a client sent, one line
            refused.update({task_id: f"task {_short(task_id)}: {exc}" for task_id in task_ids})
            return []
        make = trusted_task
        accepted: list[Task] = []
        for task_id, blob in zip(task_ids, blobs, strict=True):
            try:
                args, kwargs = _arguments(blob)
            except Exception as exc:  # noqa: BLE001 - whatever a client sent, one line
                refused[task_id] = f"task {_short(task_id)}: {exc}"
                continue
            accepted.append(make(task_id, 1, 1, fn, args, kwargs))
        problem = self._plain_callable_problem(accepted[0]) if accepted else None
        if problem is not None:
            refused.update({task.task_id: self._resource_problem(task) or problem
                            for task in accepted})
            return []
        self._digests.update(dict.fromkeys([task.task_id for task in accepted], digest))
        self._uses[digest] = self._uses.get(digest, 0) + len(accepted)
        return accepted

    def _enter(self, task: Task, record: SubmitRecord) -> None:
        self._ledger.submit(Submission(task, record.priority, record.route,
                                       tuple(record.after),
                                       _substitute if record.refs else None))

    def _earlier_id(self, task_id: str) -> bool:
        """Whether a task not live now had this id: one the cluster's own ensemble has,
        one a client named so before, or one of an earlier life of the cluster (ids a
        client makes under its own session's prefix are new by construction)."""
        return task_id in self._given or task_id in self._earlier or \
            task_id in self._ensemble_ids

    def finished(self, task: Task | UnbuildableTask) -> None:
        """A task is final: a function no live task needs any more is let go."""
        digest = self._digests.pop(task.task_id, None)
        if digest is None:
            return
        left = self._uses[digest] - 1
        if left:
            self._uses[digest] = left
        else:
            del self._uses[digest]
            if digest not in self._journaled:
                self._blobs[digest] = self._functions.blobs[digest]
            self._functions.release(digest)

    def resubmit_unfinished(self) -> int:
        """After a restart: every task submitted before and not finished, in its order; one
        that no longer loads (its module is gone) is recorded failed, with why."""
        n = 0
        for task_id, record in self._unfinished():
            n += 1
            try:
                problem = record if type(record) is str else record_problem(record)
                if problem is None:
                    self._enter(self._build(record), record)
                    continue
            except Exception as exc:  # noqa: BLE001 - one task that no longer loads
                problem = str(exc)
            log.error("cluster: cannot submit %s again: %s", task_id, problem)
            self._ledger.refuse(UnbuildableTask(task_id, None, problem),
                                f"cannot run again after the restart: {problem}")
        return n

    def _unfinished(self) -> Iterator[tuple[str, Any]]:
        """(task_id, SubmitRecord) of each task submitted before without a final result
        (or whose final result is not_run); (task_id, why) for a row that does not load."""
        for task_id, blob, state in self._store.submissions():
            try:
                row = msgpack.unpackb(blob)
                if row[0] != _MAP_ROW:
                    if state is None or state == NOT_RUN:
                        yield task_id, SubmitRecord._make(row)
                    continue
                _, template, task_ids, blobs = row
                template = SubmitRecord._make(template)
                done = self._store.finished_among(task_ids)
                for one, args in zip(task_ids, blobs, strict=True):
                    if one not in done:
                        yield one, template._replace(task_id=one, args=args)
            except Exception as exc:  # noqa: BLE001 - a row this version cannot read
                for one in _ids_of_map_row(blob) or [task_id]:
                    yield one, f"its journal row does not load: {exc}"

    # -- building ----------------------------------------------------------------------------

    def _build(self, record: SubmitRecord) -> Task:
        return self._build_task(record.task_id, record.spec, record.digest, record.args)

    def _build_task(self, task_id: str, spec: dict[str, Any], digest: bytes | None,
                    args_blob: bytes | None) -> Task:
        unknown = set(spec) - _TASK_OPTIONS if spec else ()
        if unknown:
            raise ConfigError(f"unknown task option {sorted(unknown)[0]!r}")
        args, kwargs = _arguments(args_blob)
        if digest is None:
            return Task(task_id=task_id, args=args, kwargs=kwargs, **spec)
        fn = self._function(digest)
        task = Task(task_id=task_id, executable=fn, args=args, kwargs=kwargs, **spec) \
            if spec else trusted_task(task_id, executable=fn, args=args, kwargs=kwargs)
        self._digests[task_id] = digest
        self._uses[digest] = self._uses.get(digest, 0) + 1
        return task

    def _function(self, digest: bytes) -> Callable:
        fn = self._functions.functions.get(digest)
        if fn is not None:
            return fn
        blob = self._blobs.pop(digest, None) or self._functions.recent_blob(digest)
        if blob is None:
            blob = self._store.function(digest)
        if blob is None:
            raise ConfigError("its callable was never sent (Define before Submit)")
        return self._functions.adopt(digest, blob)

    def _journal_map(self, template: SubmitRecord, task_ids: list[str],
                     blobs: list[Any]) -> None:
        self._journal_function(template.digest)
        self._store.add_submitted(task_ids[0], self._pack(
            [_MAP_ROW, list(template), task_ids, blobs]), alone=False)

    def _journal(self, record: SubmitRecord) -> None:
        self._journal_function(record.digest)
        self._store.add_submitted(record.task_id, self._pack(record))

    def _journal_function(self, digest: bytes | None) -> None:
        if digest is not None and digest not in self._journaled:
            self._journaled.add(digest)
            self._store.add_function(digest, self._functions.blobs[digest])

    # -- checks ------------------------------------------------------------------------------

    def _plain_callable_problem(self, task: Task) -> str | None:
        """A callable with every option at its default (what ``map`` sends): one check
        serves them all."""
        fits = self._shapes.get(_PLAIN)
        if fits is None:
            fits = self._shapes[_PLAIN] = self._resource_problem(task) is None
        return None if fits else self._resource_problem(task)

    def _problem(self, task: Task) -> str | None:
        label = f"task {task.task_id!r}"
        shape = (task.nnodes, task.ncpus, task.ngpus, tuple(task.cpu_affinity),
                 tuple(task.gpu_affinity), task.is_callable)
        fits = self._shapes.get(shape)
        if fits is None:
            problem = self._resource_problem(task)
            self._shapes[shape] = problem is None
            if problem is not None:
                return problem
        elif not fits:
            return self._resource_problem(task)
        for key in PATH_OPTIONS:
            if getattr(task, key) is not None:
                found = self._cached((key, getattr(task, key), task.run_dir),
                                     partial(_path_text, task, key))
                if found:
                    return f"{label}: {key}: {found}, so it could not start"
        if task.is_callable:
            return None
        program = direct_program(task.executable)  # type: ignore[arg-type]
        if program is not None:
            missing = self._cached(("program", program, task.run_dir),
                                   lambda: None if resolve_program(program, task.run_dir)
                                   else "missing")
            if missing:
                where = f" and {task.run_dir}" if task.run_dir else ""
                return (f"{label}: executable {program!r} not found (looked in PATH{where}); "
                        f"command: {_short(task.executable)}")
        big = exec_problem(task)
        return None if big is None else f"{label}: {big.key}: {big.text}"

    def _resource_problem(self, task: Task) -> str | None:
        """What el run says of a task no node can ever run, naming it."""
        label = f"task {task.task_id!r}"
        if task.nnodes > self._widest:
            return (f"{label} can never run: nnodes={task.nnodes}, but the widest group of "
                    f"workers under one master has {self._widest} nodes")
        try:
            check_requirements([requirement_of(task, label)], self._nodes)
        except ResourceError as exc:
            return str(exc)
        return None

    def _cached(self, key: tuple, check: Callable[[], str | None]) -> str | None:
        if key in self._checked:
            return self._checked[key]
        if len(self._checked) >= _CACHED:
            self._checked.clear()
        found = self._checked[key] = check()
        return found


def record_problem(record: SubmitRecord) -> str | None:
    """What is wrong with the types of a record from the network, in one line, or None.
    The spec's values are checked by Task itself."""
    task_id, spec, digest, args, after, refs, priority, route = record
    if type(task_id) is str and task_id and type(spec) is dict and \
            (digest is None or type(digest) is bytes) and (args is None or type(args) is bytes) \
            and (digest is not None or "executable" in spec) and type(after) is list and \
            type(refs) is bool and type(priority) is int and -2**63 <= priority < 2**63 and \
            type(route) is str and (not spec or all(type(k) is str for k in spec)) and \
            (not after or all(type(a) is str for a in after)):
        return None
    return _record_problem_text(record)


def _record_problem_text(record: SubmitRecord) -> str:
    if type(record.task_id) is not str or not record.task_id:
        return f"task_id must be a non-empty string, got {_short(record.task_id)}"
    label = f"task {_short(record.task_id)}"
    if type(record.spec) is not dict or not all(type(k) is str for k in record.spec):
        return f"{label}: its options are not a mapping of names"
    for name in ("digest", "args"):
        value = getattr(record, name)
        if value is not None and type(value) is not bytes:
            return f"{label}: {name} must be bytes, got {_short(value)}"
    if record.digest is None and "executable" not in record.spec:
        return f"{label}: executable is required"
    if type(record.after) is not list or not all(type(a) is str for a in record.after):
        return f"{label}: dependencies must be task ids, got {_short(record.after)}"
    if type(record.refs) is not bool:
        return f"{label}: refs must be true or false, got {_short(record.refs)}"
    if type(record.route) is not str:
        return f"{label}: route must be a node name, got {_short(record.route)}"
    return f"{label}: priority must be a whole number, got {_short(record.priority)}"


#: The first field of a journal row that holds a whole map chunk (a row of one task is a
#: SubmitRecord, whose first field is its task_id, never this).
_MAP_ROW = 0

#: The shape of a callable with every option at its default.
_PLAIN = ("plain callable",)


def _ids_of_map_row(blob: bytes) -> list[str] | None:
    """The task ids of a map chunk's journal row that does not load as a whole."""
    try:
        row = msgpack.unpackb(blob)
        ids = row[2] if row[0] == _MAP_ROW else None
    except Exception:  # noqa: BLE001 - not even that much of it can be read
        return None
    return ids if type(ids) is list and all(type(i) is str for i in ids) else None


def _arguments(blob: bytes | None) -> tuple[tuple, dict[str, Any]]:
    """A task's ``(args, kwargs)`` from the pickle a client sent (None: no arguments)."""
    if blob is None:
        return (), {}
    args, kwargs = pickle.loads(blob)
    if type(args) is not tuple:
        args = tuple(args)
    if type(kwargs) is not dict:
        raise ConfigError("its keyword arguments are not a mapping")
    return args, kwargs


def _plain_callable(record: SubmitRecord) -> bool:
    return record.digest is not None and not record.spec


def _path_text(task: Task, key: str) -> str | None:
    problem = path_problem(task, key)
    return None if problem is None else problem.text


def _substitute(task: Task, values: dict[str, bytes | None]) -> Task:
    """The task with each :class:`Ref` among its arguments (also inside lists, tuples and
    dicts) replaced by the value of the task it names."""
    loaded: dict[str, Any] = {}

    def value_of(ref: Ref) -> Any:
        if ref.task_id not in loaded:
            blob = values.get(ref.task_id)
            loaded[ref.task_id] = None if blob is None else pickle.loads(blob)
        return loaded[ref.task_id]

    def walk(obj: Any) -> Any:
        if type(obj) is Ref:
            return value_of(obj)
        if type(obj) in (list, tuple):
            return type(obj)(walk(item) for item in obj)
        if type(obj) is dict:
            return {key: walk(item) for key, item in obj.items()}
        return obj

    task.args = tuple(walk(arg) for arg in task.args)
    task.kwargs = {key: walk(value) for key, value in task.kwargs.items()}
    return task
