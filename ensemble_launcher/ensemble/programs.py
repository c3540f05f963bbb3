"""Command lines: how one is split into argv, and whether its program exists."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from typing import Any

_SHELL_CHARS = frozenset("|&;<>()$`\\*?[#~\n")


def command_argv(command: str | Sequence[str]) -> list[str]:
    """argv for a command: split directly when it has no shell syntax (saving a /bin/sh
    per task), else ``/bin/sh -c command``."""
    if not isinstance(command, str):
        return [str(a) for a in command]
    if _SHELL_CHARS.isdisjoint(command):
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = []
        if argv and "=" not in argv[0]:
            return argv
    return ["/bin/sh", "-c", command]


def direct_program(command: str | Sequence[str]) -> str | None:
    """The program a command runs, or None when a shell runs it (we cannot tell)."""
    argv = command_argv(command)
    return None if argv[:2] == ["/bin/sh", "-c"] and isinstance(command, str) else argv[0]


def resolve_program(program: str, run_dir: str | None) -> str | None:
    """The executable file ``program`` names (PATH lookup without a slash), or None."""
    if os.sep in program:
        path = program if os.path.isabs(program) or not run_dir \
            else os.path.join(run_dir, program)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(program)


def command_line(executable: Any, args: Sequence[object]) -> str | list[str]:
    """A command task's command line (a string, or a list of arguments) with its ``args``
    appended, quoted when the command is a string."""
    if not args:
        return executable if isinstance(executable, str) else list(executable)
    if isinstance(executable, str):
        return executable + " " + " ".join(shlex.quote(str(a)) for a in args)
    return [*executable, *(str(a) for a in args)]
