"""MPI tasks: the command line that starts a task's ranks with the site's launcher, each
rank bound to its cores, and seeing only its GPUs.

    MpiLaunch(flavor).command(argv, hosts, ranks_per_node, cpus_per_rank, gpus_per_rank)

One method per flavor spells the binding the way that launcher wants it:

    hydra    mpiexec -n N -ppn P -hosts h1,h2 -bind-to user:0+1,2+3
    pals     mpiexec -n N --ppn P --hosts h1,h2 --cpu-bind list:0,1:2,3
    openmpi  mpiexec -n N --host h1:P,h2:P --map-by ppr:P:node:PE=2 --bind-to core
             --cpu-set 0,1,2,3
    srun     srun --overlap -N 2 -n N --ntasks-per-node P -w h1,h2 --cpu-bind=mask_cpu:0x3,0xc

Core ids are the same on every node of a task. GPUs are set per rank by ``bind_gpus.sh``,
which picks the rank's ids from a list by the launcher's local-rank variable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from ensemble_launcher.errors import ConfigError
from ensemble_launcher.resources.mpi import detect_mpi_flavor

BIND_GPUS = Path(__file__).with_name("bind_gpus.sh")
LAUNCHERS = ("hydra", "pals", "openmpi", "srun")


def choose_mpi_launcher(launcher: str, flavor: str) -> str:
    """``auto``: mpiexec when there is one (under Slurm it reaches the nodes through srun
    itself, with the PMI the MPI library expects), else srun inside a Slurm job."""
    if launcher == "srun" or (launcher == "auto" and not shutil.which("mpiexec")
                              and os.environ.get("SLURM_JOB_ID") and shutil.which("srun")):
        return "srun"
    if flavor != "auto":
        return flavor
    return detect_mpi_flavor()


class MpiLaunch:
    def __init__(self, kind: str, extra_args: Sequence[str] = (),
                 gpu_selector: str = "ZE_AFFINITY_MASK") -> None:
        if kind not in LAUNCHERS:
            raise ConfigError(f"unknown MPI launcher {kind!r}; one of {', '.join(LAUNCHERS)}")
        self.kind = kind
        self.extra_args = list(extra_args)
        self.gpu_selector = gpu_selector

    def command(self, argv: list[str], hosts: list[str], ppn: int,
                cpus_per_rank: list[list[int]], gpus_per_rank: list[list[str]],
                local: bool = False) -> list[str]:
        """The full command line; ``cpus_per_rank`` and ``gpus_per_rank`` are the ranks of
        one node (the same ids on each node). ``local``: the only host is this one."""
        head = getattr(self, f"_{self.kind}")(hosts, ppn, cpus_per_rank, local)
        if any(gpus_per_rank):
            lists = ";".join(",".join(g) for g in gpus_per_rank)
            argv = ["sh", str(BIND_GPUS), self.gpu_selector, lists, *argv]
        return [*head, *self.extra_args, *argv]

    @staticmethod
    def _hydra(hosts: list[str], ppn: int, cpus: list[list[int]], local: bool) -> list[str]:
        head = ["mpiexec", "-n", str(ppn * len(hosts)), "-ppn", str(ppn), "-hosts",
                ",".join(hosts)]
        if local:
            head += ["-launcher", "fork"]
        if cpus:
            head += ["-bind-to", "user:" + ",".join("+".join(map(str, c)) for c in cpus)]
        return head

    @staticmethod
    def _pals(hosts: list[str], ppn: int, cpus: list[list[int]], local: bool) -> list[str]:
        head = ["mpiexec", "-n", str(ppn * len(hosts)), "--ppn", str(ppn), "--hosts",
                ",".join(hosts)]
        if cpus:
            head += ["--cpu-bind", "list:" + ":".join(",".join(map(str, c)) for c in cpus)]
        return head

    @staticmethod
    def _openmpi(hosts: list[str], ppn: int, cpus: list[list[int]], local: bool) -> list[str]:
        per_rank = len(cpus[0]) if cpus else 1
        mapping = f"ppr:{ppn}:node" + (f":PE={per_rank}" if per_rank > 1 else "")
        head = ["mpiexec", "-n", str(ppn * len(hosts)), "--host",
                ",".join(f"{h}:{ppn}" for h in hosts), "--map-by", mapping]
        if cpus:
            head += ["--bind-to", "core", "--cpu-set",
                     ",".join(str(c) for rank in cpus for c in rank)]
        return head

    @staticmethod
    def _srun(hosts: list[str], ppn: int, cpus: list[list[int]], local: bool) -> list[str]:
        head = ["srun", "--overlap", "-N", str(len(hosts)), "-n", str(ppn * len(hosts)),
                "--ntasks-per-node", str(ppn), "-w", ",".join(hosts), "--export=ALL"]
        if cpus:
            masks = ",".join(hex(sum(1 << c for c in rank)) for rank in cpus)
            head.append(f"--cpu-bind=mask_cpu:{masks}")
        return head


def mpi_launch_factory(launcher: str, flavor: str, extra_args: Sequence[str],
                       gpu_selector: str) -> Callable[[], MpiLaunch]:
    """A callable that makes the MpiLaunch when the first MPI task needs it (detecting the
    flavor runs ``mpiexec --version``, which a run without MPI tasks should not pay for)."""
    return lambda: MpiLaunch(choose_mpi_launcher(launcher, flavor), extra_args, gpu_selector)


def split_per_rank(ids: Sequence, ranks: int) -> list[list]:
    """Deal a node's allocated ids to its ranks in equal contiguous shares."""
    if not ids:
        return [[] for _ in range(ranks)]
    share = len(ids) // ranks
    return [list(ids[r * share:(r + 1) * share]) for r in range(ranks)]
