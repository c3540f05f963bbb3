"""Files written for LLNL's ensemble-python, run on our engine unchanged.

Such a file has ``jobs`` (entries of one name form a group), ``rules``, ``logging``
(``debug``, ``heartbeat`` seconds) and ``custom`` (Python source defining the functions of
custom actions). Every group waits for a rule to submit it, as there. A job maps to our
tasks as Flux would run it: its command split into words (no shell), ``nodes`` to
``nnodes``, ``tasks`` spread evenly over its nodes (``ppn = tasks / nodes``; fewer tasks
than nodes means one per node, as ensemble-python does), ``duration`` to the timeout
(0: none), ``workdir`` to the run directory.
"""

from __future__ import annotations

import itertools
import shlex
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn

from ensemble_launcher.ensemble import preflight
from ensemble_launcher.ensemble.programs import resolve_program
from ensemble_launcher.ensemble.rules import (
    Action,
    Group,
    Rule,
    Steering,
    TaskMaker,
    parse_rules,
)
from ensemble_launcher.ensemble.task import Task, UnbuildableTask, trusted_task
from ensemble_launcher.errors import EnsembleFileError
from ensemble_launcher.values import BadValue, path_option, seconds, whole_number

TOP_KEYS = ("jobs", "rules", "logging", "custom")
JOB_KEYS = ("name", "command", "count", "nodes", "tasks", "workdir", "duration")
LOGGING_KEYS = ("debug", "heartbeat")


def is_ensemble_python(data: Any) -> bool:
    """Whether ``data`` is an ensemble-python file rather than one of ours."""
    return isinstance(data, Mapping) and "jobs" in data and "ensembles" not in data


def _fail(source: str | None, key: str, value: Any, reason: str) -> NoReturn:
    raise EnsembleFileError(reason, file=source, key=key, value=value, has_value=True)


@dataclass(frozen=True, slots=True)
class JobEntry:
    """One entry of ``jobs``, checked: what each of its tasks is."""

    group: str
    argv: tuple[str, ...]
    count: int
    nnodes: int
    ppn: int
    run_dir: str | None
    timeout: float | None

    def task(self, task_id: str) -> Task:
        return trusted_task(task_id=task_id, nnodes=self.nnodes, ppn=self.ppn,
                            executable=list(self.argv), run_dir=self.run_dir,
                            timeout=self.timeout, ensemble=self.group, tag=self.group)


def load_ensemble_python(data: Mapping[str, Any], source: str | None) -> Steering:
    """The Steering of an ensemble-python file, every part checked before anything runs."""
    for key in data:
        if key not in TOP_KEYS:
            _fail(source, str(key), data[key], "unknown top-level key in an ensemble-python "
                  "file; its keys are " + ", ".join(TOP_KEYS))
    if "rules" not in data:
        _fail(source, "rules", None, "an ensemble-python file needs rules: without them no "
              "job is ever submitted")
    debug, heartbeat = _logging(data.get("logging"), source)
    groups = _groups(_job_entries(data["jobs"], source))
    custom = _custom_module(data.get("custom"), source)
    rules = parse_rules(data["rules"], source, groups, custom=custom, heartbeat=heartbeat,
                        heartbeat_key="logging.heartbeat")
    return Steering(rules, groups, frozenset(groups), heartbeat, debug, source)


def _logging(logging: Any, source: str | None) -> tuple[bool, float]:
    if logging is None:
        return False, 0.0
    if not isinstance(logging, Mapping):
        _fail(source, "logging", logging, "logging must be a mapping with debug and heartbeat")
    for key in logging:
        if key not in LOGGING_KEYS:
            _fail(source, f"logging.{key}", logging[key], "unknown key in logging; its keys "
                  "are " + ", ".join(LOGGING_KEYS))
    debug = logging.get("debug", False)
    if not isinstance(debug, bool):
        _fail(source, "logging.debug", debug, "debug must be true or false")
    heartbeat = logging.get("heartbeat")
    if heartbeat is None:
        return debug, 0.0
    try:
        return debug, seconds("heartbeat", heartbeat, allow_zero=True)
    except BadValue as exc:
        _fail(source, "logging.heartbeat", heartbeat, exc.reason)


# -- jobs ---------------------------------------------------------------------------------

def _job_entries(jobs: Any, source: str | None) -> list[JobEntry]:
    if not isinstance(jobs, list) or not jobs:
        _fail(source, "jobs", jobs, "jobs must be a non-empty list of jobs, each with a name "
              "and a command")
    return [_job_entry(job, f"jobs[{i}]", source) for i, job in enumerate(jobs)]


def _job_entry(job: Any, where: str, source: str | None) -> JobEntry:
    if not isinstance(job, Mapping):
        _fail(source, where, job, "a job must be a mapping with a name and a command")
    for key in job:
        if key not in JOB_KEYS:
            _fail(source, f"{where}.{key}", job[key], "unknown key in a job; its keys are "
                  + ", ".join(JOB_KEYS))
    name = _job_name(job, where, source)
    run_dir = job.get("workdir")
    if run_dir is not None:
        _checked(path_option, f"{where}.workdir", run_dir, source)
    argv = _argv(job, where, run_dir, source)
    count = _positive(job, "count", where, source)
    nnodes = _positive(job, "nodes", where, source)
    ntasks = max(_positive(job, "tasks", where, source), nnodes)
    if ntasks % nnodes:
        _fail(source, f"{where}.tasks", job["tasks"], f"tasks must spread evenly over the "
              f"job's {nnodes} nodes (we run the same number on each): make it a multiple "
              f"of {nnodes}")
    duration = job.get("duration")
    timeout = _checked(seconds, f"{where}.duration", duration, source, allow_zero=True) \
        if duration is not None else 0.0
    entry = JobEntry(name, argv, count, nnodes, ntasks // nnodes, run_dir, timeout or None)
    _check_host(entry, where, source)
    return entry


def _job_name(job: Mapping[str, Any], where: str, source: str | None) -> str:
    """The group's name, which starts its task ids: printable text."""
    name = job.get("name")
    if not isinstance(name, str) or not name or not name.isprintable():
        _fail(source, f"{where}.name", name, "a job needs a name: a non-empty string without "
              "control characters")
    return name


def _argv(job: Mapping[str, Any], where: str, run_dir: str | None,
          source: str | None) -> tuple[str, ...]:
    """The command's words, as Flux runs it (no shell); its program must exist."""
    command = job.get("command")
    key = f"{where}.command"
    if not isinstance(command, str) or not command.strip() or "\0" in command:
        _fail(source, key, command, "a job needs a command: a non-empty string")
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        _fail(source, key, command, f"the command cannot be split into words: {exc}")
    if resolve_program(argv[0], run_dir) is None:
        _fail(source, key, command, f"executable {argv[0]!r} not found (looked in PATH"
              f"{' and ' + run_dir if run_dir else ''})")
    return argv


def _positive(job: Mapping[str, Any], key: str, where: str, source: str | None) -> int:
    value = job.get(key)
    if value is None:
        return 1
    return _checked(whole_number, f"{where}.{key}", value, source, 1)


def _checked(check: Any, key: str, value: Any, source: str | None, *args: Any,
             **kwargs: Any) -> Any:
    try:
        return check(key.rpartition(".")[2], value, *args, **kwargs)
    except BadValue as exc:
        _fail(source, key, value, exc.reason)


def _check_host(entry: JobEntry, where: str, source: str | None) -> None:
    """What a task of this job would find missing when it starts (its workdir), found now."""
    found = preflight.first_problem([entry.task(f"{entry.group}-check")])
    if found is None:
        return
    problem = found[1]
    if problem.key == "run_dir":
        _fail(source, f"{where}.workdir", entry.run_dir, f"{problem.text}, so no task of "
              "this job could start")
    _fail(source, f"{where}.command", shlex.join(entry.argv), f"{problem.text}, so no task "
          "of this job could start")


def _groups(entries: list[JobEntry]) -> dict[str, Group]:
    """Entries of one name form a group, in the order the file first names them."""
    by_name: dict[str, list[JobEntry]] = {}
    for entry in entries:
        by_name.setdefault(entry.group, []).append(entry)
    return {name: Group(name, sum(e.count for e in members), _submissions(name, members),
                        [e.task(f"{name}-sample") for e in members])
            for name, members in by_name.items()}


def _submissions(name: str, entries: list[JobEntry]) -> TaskMaker:
    """One submission makes each entry's count of tasks (``count`` replaces every entry's),
    with ids ``<group>-<submission>-<i>``."""
    def make(count: int | None, submission: int) -> list[Task | UnbuildableTask]:
        tasks: list[Task | UnbuildableTask] = []
        for entry in entries:
            for _ in range(entry.count if count is None else count):
                tasks.append(entry.task(f"{name}-{submission}-{len(tasks)}"))
        return tasks
    return make


# -- custom code --------------------------------------------------------------------------

_CUSTOM_NUMBERS = itertools.count(1)


def _custom_module(code: Any, source: str | None) -> ModuleType | None:
    """The file's ``custom:`` code run as a module, with Action and Rule defined, as
    ensemble-python runs it; code that fails is an error quoting its line. The module is
    in ``sys.modules`` (as a file's module would be), so that what its code defines can be
    pickled and introspected (dataclasses look their module up there)."""
    if code is None:
        return None
    if not isinstance(code, str):
        _fail(source, "custom", code, "custom must be Python source code (a string)")
    filename = f"{source or '<ensemble>'}:custom"
    module = ModuleType(f"ensemble_launcher_custom_{next(_CUSTOM_NUMBERS)}",
                        f"custom actions of {source or 'an ensemble'}")
    module.__dict__.update(Action=Action, Rule=Rule, __file__=filename)
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, filename, "exec"), module.__dict__)  # noqa: S102 - the user's code
    except SyntaxError as exc:
        del sys.modules[module.__name__]
        _fail(source, "custom", (exc.text or "").strip(), f"custom code does not compile: "
              f"line {exc.lineno} of custom: {exc.msg}")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the user's code raises
        del sys.modules[module.__name__]
        line = _failing_line(exc, filename, code)
        _fail(source, "custom", line.text, f"custom code raised {type(exc).__name__}: "
              f"{str(exc)[:200]} (line {line.number} of custom:)")
    return module


@dataclass(frozen=True, slots=True)
class _Line:
    number: int | None
    text: str | None


def _failing_line(exc: BaseException, filename: str, code: str) -> _Line:
    """The last line of the custom code on the exception's traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    if not frames:
        return _Line(None, None)
    number = frames[-1].lineno
    lines = code.splitlines()
    text = lines[number - 1].strip() if number and 0 < number <= len(lines) else None
    return _Line(number, text)

