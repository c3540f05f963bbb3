"""What users hand the launcher -> one :class:`TaskStream`.

Accepted inputs: a path to a JSON/YAML ensemble file, the same structure as a dict
(``{"ensembles": {...}}``), a dict of :class:`Task` keyed by task id, or any iterable
of Tasks (generated lazily, for ensembles too large to hold).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ensemble_launcher.config.files import read_structured_file
from ensemble_launcher.ensemble import preflight
from ensemble_launcher.ensemble.ensemble_python import is_ensemble_python, load_ensemble_python
from ensemble_launcher.ensemble.params import MAX_VALUES, approximately
from ensemble_launcher.ensemble.programs import direct_program, resolve_program
from ensemble_launcher.ensemble.rules import Group, Steering, held_groups, parse_rules
from ensemble_launcher.ensemble.spec import EnsembleSpec
from ensemble_launcher.ensemble.task import Task, UnbuildableTask
from ensemble_launcher.errors import ConfigError, EnsembleFileError, EnsembleLauncherError, _short
from ensemble_launcher.values import BadValue, seconds


@dataclass(frozen=True, slots=True)
class Requirement:
    """The resource shape of a group of tasks, checked against the nodes before a run."""

    label: str
    nnodes: int
    ncpus: int
    ngpus: int
    cpu_affinity: tuple[int, ...]
    gpu_affinity: tuple[str, ...]
    is_callable: bool


class TaskStream:
    """The tasks of a run, in a stable order, produced on demand.

    ``len()`` is known without generating anything when the input is an ensemble file
    or a dict; it is ``None`` for a plain iterable. ``steering`` holds the file's rules
    and the groups they submit (None: the file has no rules); the groups a rule submits
    are not in the stream.
    """

    def __init__(self, parts: list[tuple[str, Iterable[Task], int | None]],
                 source: str | None = None, steering: Steering | None = None) -> None:
        self._parts = parts
        self.source = source
        self.steering = steering

    @property
    def total(self) -> int | None:
        sizes = [n for _, _, n in self._parts]
        return sum(n for n in sizes if n is not None) if None not in sizes else None

    @property
    def ensembles(self) -> dict[str, int | None]:
        return {name: n for name, _, n in self._parts}

    def __iter__(self) -> Iterator[Task]:
        return itertools.chain.from_iterable(tasks for _, tasks, _ in self._parts)

    def requirements(self) -> Iterator[Requirement]:
        """One requirement per ensemble, or per distinct shape among explicit Tasks.

        A plain iterable is not walked here (that would consume it); its tasks are
        checked one by one as they are placed.
        """
        for name, tasks, size in self._parts:
            if isinstance(tasks, EnsembleSpec):
                if len(tasks):
                    where = f" in {self.source}" if self.source else ""
                    yield requirement_of(tasks[0], f"ensemble {name!r}{where}")
            elif size is not None:
                seen: set[tuple] = set()
                for task in tasks:
                    req = requirement_of(task, f"task {task.task_id!r}")
                    shape = _shape(req)
                    if shape not in seen:
                        seen.add(shape)
                        yield req
        yield from self._submitted_requirements()

    def _submitted_requirements(self) -> Iterator[Requirement]:
        """The groups a submit rule names must fit too: found now, not when it fires. (An
        ensemble-python file may define a group no rule submits, as its heartbeat example
        does with one larger than the cluster; that one is not checked.)"""
        if self.steering is None:
            return
        where = f" in {self.source}" if self.source else ""
        submitted = held_groups(self.steering.rules)
        for name, group in self.steering.groups.items():
            if name in submitted:
                for task in group.samples:
                    yield requirement_of(task, f"group {name!r}{where}")


def _shape(req: Requirement) -> tuple:
    return (req.nnodes, req.ncpus, req.ngpus, req.cpu_affinity, req.gpu_affinity,
            req.is_callable)


def requirement_of(task: Task, label: str) -> Requirement:
    return Requirement(label, task.nnodes, task.ncpus, task.ngpus, tuple(task.cpu_affinity),
                       tuple(task.gpu_affinity), task.is_callable)


def load_tasks(ensemble: Any, *, will_run: preflight.RunFilter | None = None) -> TaskStream:
    """Validate ``ensemble`` completely and return its tasks as a lazy stream. ``will_run``
    (a resume's) limits the checks of this host to the tasks that will run."""
    if isinstance(ensemble, (str, Path)):
        path = str(ensemble)
        return _from_definition(read_structured_file(path), path, will_run)
    if isinstance(ensemble, Mapping):
        if "ensembles" in ensemble or is_ensemble_python(ensemble):
            return _from_definition(ensemble, None, will_run)
        return _from_task_dict(ensemble, will_run)
    if isinstance(ensemble, Iterable):
        return TaskStream([("tasks", _checked_iter(ensemble), None)])
    raise ConfigError(
        "ensemble_file must be a path to a JSON/YAML file, a dict with an 'ensembles' key, "
        f"a dict of Task, or an iterable of Task; got {type(ensemble).__name__}")


def _from_definition(data: Any, source: str | None,
                     will_run: preflight.RunFilter | None) -> TaskStream:
    if is_ensemble_python(data):
        return TaskStream([], source, load_ensemble_python(data, source))
    if not isinstance(data, Mapping):
        raise EnsembleFileError("the top level must be a mapping with an 'ensembles' key",
                                file=source)
    _check_top_level_keys(data, source)
    ensembles = data.get("ensembles")
    if not isinstance(ensembles, Mapping) or not ensembles:
        raise EnsembleFileError("'ensembles' must be a non-empty mapping of name -> ensemble",
                                file=source, key="ensembles", value=ensembles, has_value=True)
    parts: list[tuple[str, Iterable[Task], int | None]] = []
    for name, definition in ensembles.items():
        spec = EnsembleSpec(_ensemble_name(name, ensembles, source), definition, source,
                            will_run=will_run)
        parts.append((spec.name, spec, len(spec)))
    total = sum(size or 0 for _, _, size in parts)
    if total > MAX_VALUES:
        raise EnsembleFileError(f"the ensembles make {approximately(total)} tasks in all; a "
                                f"run can have at most {MAX_VALUES}", file=source)
    if "rules" not in data:
        return TaskStream(parts, source)
    steering = _steering(data, parts, source)
    return TaskStream([p for p in parts if p[0] not in steering.held], source, steering)


_TOP_LEVEL_KEYS = ("ensembles", "rules", "heartbeat")


def _check_top_level_keys(data: Mapping[Any, Any], source: str | None) -> None:
    for key in sorted(data, key=str):
        if key == "heartbeat" and "rules" not in data:
            raise EnsembleFileError("heartbeat (the period of heartbeat rules) needs a "
                                    "top-level rules list", file=source, key="heartbeat",
                                    value=data[key], has_value=True)
        if key not in _TOP_LEVEL_KEYS:
            raise EnsembleFileError("unknown top-level key; the top-level keys are "
                                    "'ensembles', 'rules' and 'heartbeat'", file=source,
                                    key=str(key), value=data[key], has_value=True)


def _steering(data: Mapping[str, Any], parts: list[tuple[str, Iterable[Task], int | None]],
              source: str | None) -> Steering:
    """The rules of one of our files: each ensemble is a group; those a submit action
    names wait for it, the others start at once."""
    heartbeat = data.get("heartbeat")
    try:
        period = 0.0 if heartbeat is None else seconds("heartbeat", heartbeat,
                                                      allow_zero=True)
    except BadValue as exc:
        raise EnsembleFileError(exc.reason, file=source, key="heartbeat", value=heartbeat,
                                has_value=True) from None
    specs = [spec for _, spec, _ in parts if isinstance(spec, EnsembleSpec)]
    rules = parse_rules(data["rules"], source, [spec.name for spec in specs], heartbeat=period)
    held = held_groups(rules)
    groups = {spec.name: _spec_group(spec, 0 if spec.name in held else len(spec))
              for spec in specs}
    return Steering(rules, groups, held, period, source=source)


def _spec_group(spec: EnsembleSpec, first: int) -> Group:
    """An ensemble as a group. Each submission's tasks are numbered on from the last
    one's (``<name>-<n>``, task ``n`` of the sweep taken round), so ids keep the file's form
    and stay unique however often rules submit it; ``first`` is past the ids the stream
    gives an ensemble that starts at once."""
    numbers = itertools.count(first)

    def make(count: int | None, submission: int) -> list[Task | UnbuildableTask]:
        wanted = len(spec) if count is None else count
        return [_numbered_task(spec, next(numbers)) for _ in range(wanted if len(spec) else 0)]
    return Group(spec.name, len(spec), make, [spec[0]] if len(spec) else [])


def _numbered_task(spec: EnsembleSpec, number: int) -> Task | UnbuildableTask:
    task_id = f"{spec.name}-{number}"
    try:
        return replace(spec[number % len(spec)], task_id=task_id)
    except (ValueError, TypeError, KeyError, EnsembleLauncherError) as exc:
        return UnbuildableTask(task_id, spec.name, f"ensemble {spec.name!r}: task "
                               f"{number % len(spec)} cannot be built: {exc}")


def _ensemble_name(name: Any, ensembles: Mapping[Any, Any], source: str | None) -> str:
    """``name`` as the text that starts its task ids. YAML reads ``1:`` as a number, which
    we take as the name "1"; but then no other ensemble may be named "1" (``'1':``), as
    both would make the task ids 1-0, 1-1, ..."""
    if isinstance(name, str):
        return name
    if not isinstance(name, int) or isinstance(name, bool):
        raise EnsembleFileError(f"an ensemble name must be a string; quote it, as in "
                                f"'{name}':", file=source, ensemble=str(name))
    if str(name) in ensembles:
        raise EnsembleFileError(f"two ensembles are named {str(name)!r}: the number {name} and "
                                f"the string {str(name)!r}; both would make the task ids "
                                f"{name}-0, {name}-1, ...; rename one", file=source,
                                ensemble=str(name))
    return str(name)


def _from_task_dict(tasks: Mapping[Any, Any],
                    will_run: preflight.RunFilter | None) -> TaskStream:
    checked: set[tuple[str, str | None]] = set()
    for key, task in tasks.items():
        if not isinstance(task, Task):
            raise ConfigError(f"ensemble dict entry {key!r} is a {type(task).__name__}, "
                              "expected ensemble_launcher.ensemble.Task")
        if key != task.task_id:
            raise ConfigError(f"ensemble dict key {key!r} differs from its Task's task_id "
                              f"{task.task_id!r}")
    found = preflight.first_problem(preflight.running_stream(tasks.values(), will_run))
    if found is not None:
        task, problem = found
        raise ConfigError(f"task {task.task_id!r}: {problem.key}: {problem.text}, so it could "
                          "not start")
    for task in preflight.running_stream(tasks.values(), will_run):
        if not task.is_callable:
            _check_program(task, checked)
    return TaskStream([("tasks", tasks.values(), len(tasks))])


def _check_program(task: Task, checked: set[tuple[str, str | None]]) -> None:
    program = direct_program(task.executable)  # type: ignore[arg-type]
    if program is None or (program, task.run_dir) in checked:
        return
    if resolve_program(program, task.run_dir) is None:
        raise ConfigError(f"task {task.task_id!r}: executable {program!r} not found (looked in "
                          f"PATH{' and ' + task.run_dir if task.run_dir else ''}); "
                          f"command: {_short(task.executable)}")
    checked.add((program, task.run_dir))


def _checked_iter(tasks: Iterable[Any]) -> Iterator[Task]:
    for task in tasks:
        if not isinstance(task, Task):
            raise ConfigError(f"the task iterable yielded a {type(task).__name__}, "
                              "expected ensemble_launcher.ensemble.Task")
        yield task
