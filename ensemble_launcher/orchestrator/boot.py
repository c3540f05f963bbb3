"""What a child of the tree is given at start, and how it gets there.

    master: BootDir.write(<child>)  -> <run_dir>/.boot-<master>/<child>.json   (0700 / 0600)
            environment of the launcher step: EL_TREE (the subtrees it starts), EL_BOOT (that dir)
    child:  take_environment()      -> reads our EL_* variables, removes them from os.environ
            read_boot(dir, name)    -> reads its own file (waiting a few s for it to show)
                                       and deletes it, before any task runs

Why not the environment: the one a process starts with stays readable in
``/proc/<pid>/environ`` for its whole life, by every process of the user, tasks included,
and srun or mpiexec keep a copy in theirs. So the environment carries only what is no
secret: which subtrees a launcher step starts and where their files are. The parent's
address, the CURVE keys, and the configs are in a file per child, in the run directory
(which every node sees), readable only by the user, and gone once the child has read it.
Each child gets the keys its role uses: a worker the client pair and the server's public
key (none over ipc or pipes); a master all four (it serves its children and connects to its
parent). Tasks get none of it: a child removes the variables we set (:data:`OUR_VARIABLES`)
from its environment before it starts runners, so commands, MPI launchers and callables
inherit none of them; the user's own variables, ``EL_*`` ones included, stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ensemble_launcher.comm.zmq_transport import KEY_ENV
from ensemble_launcher.launchers.local import INDEX_ENV

TREE_ENV, BOOT_ENV, PARENT_ENV = "EL_TREE", "EL_BOOT", "EL_PARENT"
#: Set for a process that runs every (simulated) worker of its ``EL_TREE`` at once.
HOSTED_ENV = "EL_HOSTED"

#: Environment variables that describe the launching process's own MPI/PMI rank; a nested
#: launch must not inherit them, or the new processes take themselves for our rank.
_RANK_ENV_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "PALS_", "MPIR_", "MPI_LOCALRANKID")

#: How long a child looks for its start-up file: on NFS, a file that another node has just
#: created can stay out of sight for a moment (cached directory attributes).
BOOT_WAIT = 5.0


@dataclass(frozen=True)
class Settings:
    """What every child of the tree gets alike: the configs, already validated by the root
    (as JSON), and the run's switches. Each travels as ``EL_<FIELD>`` (:meth:`to_env`; a
    child reads them back with :meth:`from_env`), the one owner of that contract."""

    launcher_config: str
    system_config: str
    run_dir: str
    pin: bool
    return_stdout: bool
    check_each: bool
    sys_path: list[str]
    block: str = ""
    """The index of the block (a provider's batch job) this worker runs in; "" outside one."""

    def to_env(self) -> dict[str, str]:
        return {_variable(f.name): _as_text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings a child was given (the inverse of :meth:`to_env`)."""
        return cls(**{f.name: _from_text(str(f.type), env[_variable(f.name)])
                      for f in fields(cls)})


def _variable(field: str) -> str:
    return f"EL_{field.upper()}"


def _as_text(value: str | bool | list[str]) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return value if isinstance(value, str) else json.dumps(value)


def _from_text(kind: str, text: str) -> Any:
    if kind == "bool":
        return text == "1"
    return json.loads(text) if kind.startswith("list") else text


#: The names of :class:`Settings` as they travel.
SETTINGS = tuple(_variable(f.name) for f in fields(Settings))
#: Where a worker learns the index of its block (one of :data:`SETTINGS`).
BLOCK_ENV = _variable("block")

#: Every variable we set for a child of the tree; no task inherits any of them.
OUR_VARIABLES = frozenset({TREE_ENV, BOOT_ENV, PARENT_ENV, HOSTED_ENV, INDEX_ENV, *SETTINGS,
                           *KEY_ENV})


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment for a child of the tree, without our rank's variables or the ones we
    set for a child (:data:`OUR_VARIABLES`; a child's come in ``extra``). The user's own
    variables pass, ``EL_*`` ones included: tasks see them at every depth."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_RANK_ENV_PREFIXES) and k not in OUR_VARIABLES}
    env.update(extra)
    return env


class BootError(Exception):
    """A child cannot read what its parent left for it."""


class BootDir:
    """A master's directory of start-up files, one per child, removed when it closes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700, parents=True)
        path.chmod(0o700)

    def write(self, child: str, values: dict[str, str]) -> None:
        fd = os.open(self.path / f"{child}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)

    def discard(self, child: str) -> None:
        """The file of a child that will never start (its block was refused or cancelled)."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{child}.json").unlink()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def take_environment(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of the environment as it came, after removing our variables
    (:data:`OUR_VARIABLES`) from ``environ``, so that nothing this process starts inherits
    them; the user's own stay, whatever their names."""
    env = dict(environ)
    for name in OUR_VARIABLES.intersection(environ):
        del environ[name]
    return env


def read_boot(directory: str, name: str, wait: float = BOOT_WAIT) -> dict[str, str]:
    """This child's start-up values; its file is deleted once read. A file not there yet,
    or not whole yet, is read again for ``wait`` seconds: on a shared file system another
    node's new file can take a moment to show."""
    path = Path(directory) / f"{name}.json"
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path) as f:
                values = json.load(f)
            path.unlink()
            return values
        except (OSError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise BootError(f"{name}: cannot read its start-up file {path} (tried for "
                                f"{wait:g} s): {exc}. The run directory must be on a file "
                                "system that every node sees") from None
        time.sleep(0.1)


def adopt_sys_path(paths: list[str]) -> None:
    """Import what the root could import: its sys.path, in its order, the user's script
    directory first, so callables pickled by reference load here too. Added once we
    started: as PYTHONPATH, a user's directory would shadow the standard library."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
