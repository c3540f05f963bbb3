"""The launcher interface, the local launcher, and the choice among launchers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from ensemble_launcher.errors import LaunchError
from ensemble_launcher.orchestrator.boot import INDEX_ENV, OUR_VARIABLES

#: Environment variables that describe the launching process's own MPI/PMI rank; a nested
#: launch must not inherit them, or the new processes take themselves for our rank.
_RANK_ENV_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "PALS_", "MPIR_", "MPI_LOCALRANKID")


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
            return [_popen(command, env, log)]
        except OSError as exc:
            raise LaunchError(f"cannot run {command[0]!r} to start children on "
                              f"{','.join(hosts)}: {exc.strerror}") from None


class LocalLauncher(ChildLauncher):
    """Every host is this one: plain processes, one per child."""

    name = "local"

    def start(self, argv: list[str], hosts: list[str], env: Mapping[str, str],
              log: IO[bytes]) -> list[subprocess.Popen]:
        return [_popen(argv, {**env, INDEX_ENV: str(i)}, log) for i in range(len(hosts))]


def _popen(command: list[str], env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen:
    return subprocess.Popen(command, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment for a child of the tree, without our rank's variables or the ones we
    set for a child (``orchestrator.boot.OUR_VARIABLES``; a child's come in ``extra``). The
    user's own variables pass, ``EL_*`` ones included: tasks see them at every depth."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_RANK_ENV_PREFIXES) and k not in OUR_VARIABLES}
    env.update(extra)
    return env


def choose_launcher(name: str, hosts: list[str], all_local: bool, extra_args: Sequence[str],
                    mpi_flavor: str) -> ChildLauncher:
    """The launcher ``name`` (``auto``: local, else srun in Slurm, else mpiexec)."""
    from ensemble_launcher.launchers.mpi import MpiexecLauncher
    from ensemble_launcher.launchers.slurm import SrunLauncher

    if name == "auto":
        if all_local:
            name = "local"
        elif os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
            name = "srun"
        elif shutil.which("mpiexec"):
            name = "mpiexec"
        else:
            raise LaunchError(
                f"cannot start children on other nodes ({', '.join(hosts[:4])}"
                f"{', ...' if len(hosts) > 4 else ''}): not in a Slurm job (no SLURM_JOB_ID "
                "with srun on PATH) and no mpiexec on PATH. Load your MPI module, or set "
                "LauncherConfig.child_launcher")
    if name == "local":
        if not all_local:
            raise LaunchError("child_launcher='local' starts processes on this host only, but "
                              f"the nodes include other hosts: {', '.join(hosts[:4])}")
        return LocalLauncher(extra_args)
    if name == "srun":
        return SrunLauncher(extra_args)
    if name == "mpiexec":
        return MpiexecLauncher(mpi_flavor, extra_args)
    raise LaunchError(f"unknown child_launcher {name!r}; choose auto, local, srun or mpiexec")


def log_tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace").strip()
