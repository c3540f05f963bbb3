"""Starting children with ``mpiexec``: MPICH/Hydra, PALS (Aurora, Polaris), Open MPI."""

from __future__ import annotations

import functools
import shutil
import subprocess

from ensemble_launcher.errors import LaunchError
from ensemble_launcher.launchers.base import ChildLauncher

FLAVORS = ("hydra", "pals", "openmpi")


@functools.lru_cache(maxsize=4)
def detect_mpi_flavor(mpiexec: str = "mpiexec") -> str:
    """Which mpiexec this is, from its ``--version`` text."""
    path = shutil.which(mpiexec)
    if path is None:
        raise LaunchError(f"{mpiexec!r} is not on PATH; load your MPI module")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"'{path} --version' did not answer within 20 s") from None
    text = (out.stdout + out.stderr).lower()
    if "hydra" in text:
        return "hydra"
    if "open mpi" in text or "open-mpi" in text or "openrte" in text:
        return "openmpi"
    if "pals" in text or "cray" in text:
        return "pals"
    raise LaunchError(f"cannot tell which MPI {path} belongs to from its --version output; "
                      f"set LauncherConfig.mpi_flavor to one of {', '.join(FLAVORS)}")


class MpiexecLauncher(ChildLauncher):
    """One mpiexec for all given hosts. With Hydra, ``-disable-auto-cleanup`` keeps the
    other children alive when one host dies: losing a node must not end the run."""

    name = "mpiexec"

    def __init__(self, flavor: str = "auto", extra_args=()) -> None:
        super().__init__(extra_args)
        self.flavor = detect_mpi_flavor() if flavor == "auto" else flavor
        if self.flavor not in FLAVORS:
            raise LaunchError(f"unknown mpi_flavor {flavor!r}; choose one of "
                              f"auto, {', '.join(FLAVORS)}")

    def wrap(self, argv: list[str], hosts: list[str], env_names: list[str]) -> list[str]:
        n, host_list = str(len(hosts)), ",".join(hosts)
        if self.flavor == "hydra":
            head = ["mpiexec", "-n", n, "-ppn", "1", "-hosts", host_list,
                    "-disable-auto-cleanup"]
        elif self.flavor == "pals":
            head = ["mpiexec", "-n", n, "--ppn", "1", "--hosts", host_list]
        else:
            head = ["mpiexec", "-n", n, "--map-by", "ppr:1:node", "--host",
                    ",".join(f"{h}:1" for h in hosts)]
            for name in env_names:
                head += ["-x", name]
        return [*head, *self.extra_args, *argv]
