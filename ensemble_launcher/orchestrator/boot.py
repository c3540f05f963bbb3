"""What a child of the tree is given at start, and how it gets there.

    master: BootDir.write(<child>)  -> <run_dir>/.boot-<master>/<child>.json   (0700 / 0600)
            environment of the launcher step: EL_TREE (the subtrees it starts), EL_BOOT (that dir)
    child:  take_environment()      -> reads EL_* and removes them from os.environ
            read_boot(dir, name)    -> reads its own file and deletes it, before any task runs

Why not the environment: the one a process starts with stays readable in
``/proc/<pid>/environ`` for its whole life, by every process of the user, tasks included,
and srun or mpiexec keep a copy in theirs. So the environment carries only what is no
secret: which subtrees a launcher step starts and where their files are. The parent's
address, the CURVE keys, and the configs are in a file per child, in the run directory
(which every node sees), readable only by the user, and gone once the child has read it.
Each child gets the keys its role uses: a worker the client pair and the server's public
key (none over ipc or pipes); a master all four (it serves its children and connects to its
parent). Tasks get none of it: a child removes every ``EL_*`` variable from its
environment before it starts runners, so commands, MPI launchers and callables inherit a
clean one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import MutableMapping
from pathlib import Path

TREE_ENV, BOOT_ENV = "EL_TREE", "EL_BOOT"

#: What every child of the tree gets alike: the configs, already validated by the root.
SETTINGS = ("EL_LAUNCHER_CONFIG", "EL_SYSTEM_CONFIG", "EL_RUN_DIR", "EL_PIN",
            "EL_RETURN_STDOUT", "EL_CHECK_EACH", "EL_SYS_PATH")


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

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def take_environment(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of the environment as it came, after removing every ``EL_*`` variable from
    ``environ``, so that nothing this process starts inherits them."""
    env = dict(environ)
    for name in [k for k in environ if k.startswith("EL_")]:
        del environ[name]
    return env


def read_boot(directory: str, name: str) -> dict[str, str]:
    """This child's start-up values; its file is deleted once read."""
    path = Path(directory) / f"{name}.json"
    try:
        with open(path) as f:
            values = json.load(f)
        path.unlink()
    except (OSError, ValueError) as exc:
        raise BootError(f"{name}: cannot read its start-up file {path}: {exc}. The run "
                        "directory must be on a file system that every node sees") from None
    return values


def shared_settings(env: dict[str, str]) -> dict[str, str]:
    """The settings a sub-master passes on to its own children."""
    return {name: env[name] for name in SETTINGS}
