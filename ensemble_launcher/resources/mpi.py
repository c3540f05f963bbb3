"""Which MPI this host has: the flavor of its ``mpiexec`` (MPICH/Hydra, PALS, Open MPI).

Both the children of the tree (``launchers``) and MPI tasks (``executors.mpi``) start
processes with that mpiexec, so what it is lives here, below both.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from ensemble_launcher.errors import LaunchError

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
