"""What a task needs of the host before it can start: its working directory, a place for
its output files, and room in exec for its command line and environment.

Each would otherwise be found missing only when the task starts, so every task of the
ensemble would fail the same way; checked before the run, it is one error. The answers
are for this host (where the root runs); on a cluster, paths are on the shared file
system that every node sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ensemble_launcher.ensemble.programs import command_argv, command_line
from ensemble_launcher.ensemble.task import Task

#: Linux refuses one argument or one ``NAME=value`` longer than this (MAX_ARG_STRLEN).
MAX_ARG_BYTES = 32 * 4096
#: Left for what the launcher adds to a task's exec: the GPU selector variable, the
#: mpiexec/srun arguments and their own variables, the bind script.
EXEC_HEADROOM = 16 * 1024
#: How many tasks (and distinct paths) a check before the run looks at, at most: a stat
#: costs up to a millisecond on a parallel file system, so a check stays under a second.
PREFLIGHT_TASKS = 1000
PATH_OPTIONS = ("run_dir", "stdout_file", "stderr_file")
#: Which of the given task ids will run. A resume runs only the tasks not done; the others
#: may have lost what they needed (a user deletes a finished task's run_dir), and must not
#: stop the resume.
RunFilter = Callable[[Sequence[str]], Collection[str]]
#: How many task ids a RunFilter is asked about at once.
_FILTER_BATCH = 500


@dataclass(frozen=True, slots=True)
class Problem:
    """What a task would find wrong when it starts: the option to blame (``command`` for
    the command line) and why."""

    key: str
    text: str


def path_problem(task: Task, key: str) -> Problem | None:
    """Whether ``task`` can use its ``key`` (one of PATH_OPTIONS)."""
    path = getattr(task, key)
    if path is None:
        return None
    text = directory_problem(path) if key == "run_dir" \
        else output_file_problem(path, task.run_dir)
    return Problem(key, text) if text else None


def exec_problem(task: Task) -> Problem | None:
    """Whether exec would take ``task``'s command line with the launcher's environment
    plus the task's (E2BIG otherwise)."""
    if task.is_callable:
        return None
    argv = command_argv(command_line(task.executable, task.args))
    try:
        return _size_problem(argv, task.env)
    except UnicodeEncodeError as exc:
        return Problem("command", "the command line or environment holds text that cannot "
                       f"be encoded ({exc.reason})")


def first_problem(tasks: Iterable[Task]) -> tuple[Task, Problem] | None:
    """The first problem among ``tasks``: every distinct path, up to PREFLIGHT_TASKS of
    them, and the command lines of the first PREFLIGHT_TASKS tasks."""
    seen: set[tuple[str, str, str | None]] = set()
    for n, task in enumerate(tasks):
        if n >= PREFLIGHT_TASKS and len(seen) >= PREFLIGHT_TASKS:
            break
        for key in PATH_OPTIONS:
            mark = (key, getattr(task, key), task.run_dir)
            if mark[1] is None or mark in seen or len(seen) >= PREFLIGHT_TASKS:
                continue
            seen.add(mark)
            problem = path_problem(task, key)
            if problem:
                return task, problem
        problem = exec_problem(task) if n < PREFLIGHT_TASKS else None
        if problem:
            return task, problem
    return None


def running(tasks: Sequence[Task], will_run: RunFilter | None) -> list[Task]:
    """The tasks of ``tasks`` that will run (all, without ``will_run``)."""
    if will_run is None:
        return list(tasks)
    kept = will_run([task.task_id for task in tasks])
    return [task for task in tasks if task.task_id in kept]


def running_stream(tasks: Iterable[Task], will_run: RunFilter | None) -> Iterator[Task]:
    """The tasks of ``tasks`` that will run, asked about a batch at a time."""
    if will_run is None:
        yield from tasks
        return
    batch: list[Task] = []
    for task in tasks:
        batch.append(task)
        if len(batch) == _FILTER_BATCH:
            yield from running(batch, will_run)
            batch = []
    yield from running(batch, will_run)


def directory_problem(path: str) -> str | None:
    """Why a task cannot run in ``path``, or None when it can."""
    if not os.path.exists(path):
        return f"the directory {path!r} does not exist"
    if not os.path.isdir(path):
        return f"{path!r} is not a directory"
    if not os.access(path, os.X_OK):
        return f"the directory {path!r} cannot be entered (no search permission)"
    return None


def output_file_problem(path: str, run_dir: str | None) -> str | None:
    """Why a task cannot write its output to ``path``, or None when it can. Missing parent
    directories are created when the task starts, so the nearest one that exists must
    let us create them."""
    full = path if os.path.isabs(path) or not run_dir else os.path.join(run_dir, path)
    if os.path.isdir(full):
        return f"{full!r} is a directory, not a file"
    if os.path.exists(full):
        return None if os.access(full, os.W_OK) else f"{full!r} is not writable"
    parent = os.path.dirname(os.path.abspath(full))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{full!r} cannot be created: {parent!r} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{full!r} cannot be created: {parent!r} is not writable"
    return None


def _size_problem(argv: Sequence[str], env: Mapping[str, str]) -> Problem | None:
    for name, value in env.items():
        size = len(os.fsencode(name)) + len(os.fsencode(value)) + 2
        if size > MAX_ARG_BYTES:
            return Problem("env", f"the environment variable {name} is {size} bytes; exec "
                           f"takes at most {MAX_ARG_BYTES} bytes per variable")
    for arg in argv:
        if len(os.fsencode(arg)) + 1 > MAX_ARG_BYTES:
            return Problem("command", f"the command line has an argument of "
                           f"{len(os.fsencode(arg))} bytes; exec takes at most "
                           f"{MAX_ARG_BYTES} bytes per argument")
    merged = {**os.environ, **env}
    total = sum(len(os.fsencode(a)) + 1 + 8 for a in argv) + sum(
        len(os.fsencode(k)) + len(os.fsencode(v)) + 2 + 8 for k, v in merged.items())
    limit = _arg_max() - EXEC_HEADROOM
    if total > limit:
        return Problem("env" if env else "command", f"the command line and environment take "
                       f"{total} bytes; exec takes at most {limit} here (ARG_MAX less "
                       f"{EXEC_HEADROOM} for the launcher)")
    return None


def _arg_max() -> int:
    try:
        return os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        return 2 * 1024 * 1024
