"""The launcher interface: what every way of starting children has in common."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from ensemble_launcher.errors import LaunchError


class ChildLauncher:
    """Starts one process of ``argv`` on each of ``hosts``.

    Subclasses implement :meth:`wrap`, Parsl-style: the command line that does it. The
    started processes learn their index among ``hosts`` from the launcher's rank variable.
    """

    name = "base"

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.extra_args = list(extra_args)

    def wrap(self, argv: list[str], hosts: list[str], env_names: list[str]) -> list[str]:
        raise NotImplementedError

    def start(self, argv: list[str], hosts: list[str], env: Mapping[str, str],
              log: IO[bytes]) -> list[subprocess.Popen]:
        command = self.wrap(argv, hosts, sorted(k for k in env if k.startswith("EL_")))
        try:
            return [start_process(command, env, log)]
        except OSError as exc:
            raise LaunchError(f"cannot run {command[0]!r} to start children on "
                              f"{','.join(hosts)}: {exc.strerror}") from None


def start_process(command: list[str], env: Mapping[str, str],
                  log: IO[bytes]) -> subprocess.Popen:
    """A child's process (or its launcher's) in a session of its own, so that its master
    can stop the whole step as one process group."""
    return subprocess.Popen(command, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def log_tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace").strip()
