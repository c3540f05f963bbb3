"""The choice among launchers: the one configured, or the one this job can use."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from ensemble_launcher.errors import LaunchError
from ensemble_launcher.launchers.base import ChildLauncher
from ensemble_launcher.launchers.local import LocalLauncher
from ensemble_launcher.launchers.mpi import MpiexecLauncher
from ensemble_launcher.launchers.slurm import SrunLauncher


def choose_launcher(name: str, hosts: list[str], all_local: bool, extra_args: Sequence[str],
                    mpi_flavor: str) -> ChildLauncher:
    """The launcher ``name`` (``auto``: local, else srun in Slurm, else mpiexec)."""
    if name == "auto":
        name = _available(hosts, all_local)
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


def _available(hosts: list[str], all_local: bool) -> str:
    if all_local:
        return "local"
    if os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
        return "srun"
    if shutil.which("mpiexec"):
        return "mpiexec"
    raise LaunchError(
        f"cannot start children on other nodes ({', '.join(hosts[:4])}"
        f"{', ...' if len(hosts) > 4 else ''}): not in a Slurm job (no SLURM_JOB_ID "
        "with srun on PATH) and no mpiexec on PATH. Load your MPI module, or set "
        "LauncherConfig.child_launcher")
