"""How a child of the tree is started on its node: by the site's own launcher.

Each launcher has one job: given the command of a child process and the hosts it must
run on (one process per host), start it. ``srun`` inside a Slurm job, ``mpiexec``
(MPICH/Hydra, PALS, Open MPI) elsewhere, plain local processes when every host is this
one. We never ssh on our own.
"""

from ensemble_launcher.launchers.base import ChildLauncher
from ensemble_launcher.launchers.choice import choose_launcher
from ensemble_launcher.launchers.local import LocalLauncher
from ensemble_launcher.launchers.mpi import MpiexecLauncher
from ensemble_launcher.launchers.slurm import SrunLauncher

__all__ = ["ChildLauncher", "LocalLauncher", "MpiexecLauncher", "SrunLauncher",
           "choose_launcher"]
