"""Starting children with ``mpiexec``: MPICH/Hydra, PALS (Aurora, Polaris), Open MPI."""

from __future__ import annotations

from ensemble_launcher.errors import LaunchError
from ensemble_launcher.launchers.base import ChildLauncher
from ensemble_launcher.resources.mpi import FLAVORS, detect_mpi_flavor


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
