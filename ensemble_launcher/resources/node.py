"""The CPUs and GPUs of a node, and the check that every task can ever fit."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ensemble_launcher.ensemble import Requirement
from ensemble_launcher.errors import ResourceError

if TYPE_CHECKING:
    from ensemble_launcher.config import SystemConfig


@dataclass(frozen=True, slots=True)
class NodeResources:
    """One node: its host name, the CPU ids tasks may use, and its GPU slots.

    A GPU id listed twice is two slots on one device (overloading).
    """

    host: str
    cpus: tuple[int, ...]
    gpus: tuple[str, ...]


def local_node(system: SystemConfig, *, pin: bool) -> NodeResources:
    """This host, with the CPUs and GPUs of ``system``; with ``pin``, every CPU must be
    one this process may run on."""
    if pin:
        usable = os.sched_getaffinity(0)
        foreign = sorted(set(system.cpus) - usable)
        if foreign:
            raise ResourceError(
                f"SystemConfig.cpus lists CPUs {foreign} that this process may not run on "
                f"(allowed: {_ids(tuple(sorted(usable)))}); fix cpus, or disable pinning")
    return NodeResources(socket.gethostname(), tuple(system.cpus),
                         tuple(str(g) for g in system.gpus))


def is_this_host(name: str) -> bool:
    """Whether ``name`` is this host: its name, its fully qualified name, or loopback, in
    full or short. The fully qualified name, a lookup (milliseconds, more with a slow
    resolver), is asked only when the others do not match."""
    return _names_this_host(name, (socket.gethostname(), "localhost", "127.0.0.1")) or \
        _names_this_host(name, (socket.getfqdn(),))


def _names_this_host(name: str, here: tuple[str, ...]) -> bool:
    return name in here or name.split(".")[0] in {h.split(".")[0] for h in here}


def check_requirements(requirements: Iterable[Requirement], nodes: list[NodeResources]) -> None:
    """Raise ResourceError, naming the task group and the numbers, for a task that can
    never run on these nodes."""
    node = nodes[0]
    for req in requirements:
        problems = []
        if req.nnodes > len(nodes):
            problems.append(f"nnodes={req.nnodes} but the allocation has {len(nodes)} node(s)")
        if req.ncpus > len(node.cpus):
            problems.append(f"ppn={req.ncpus} processes but a node has {len(node.cpus)} CPUs "
                            f"({_ids(node.cpus)})")
        if req.ngpus > len(node.gpus):
            problems.append(f"{req.ngpus} GPU(s) per node but a node has {len(node.gpus)} "
                            "GPU slot(s); set SystemConfig.ngpus or gpus")
        bad_cpus = sorted(set(req.cpu_affinity) - set(node.cpus))
        if bad_cpus:
            problems.append(f"cpu_affinity names CPUs {_ids(tuple(bad_cpus))} that are not "
                            f"among the node's CPUs ({_ids(node.cpus)})")
        bad_gpus = sorted(set(req.gpu_affinity) - set(node.gpus))
        if bad_gpus:
            problems.append(f"gpu_affinity names GPUs {_ids(tuple(bad_gpus))} that are not "
                            f"among the node's GPUs ({_ids(node.gpus)})")
        if req.is_callable and (req.nnodes > 1 or req.ncpus > 1):
            problems.append("a Python callable runs as one process on one core; use ppn=1 and "
                            "nnodes=1, or make the task a command (e.g. an mpi4py script)")
        if problems:
            raise ResourceError(f"{req.label} can never run: " + "; ".join(problems))


def _ids(ids: tuple) -> str:
    shown = ",".join(str(i) for i in ids[:16])
    return shown + (",..." if len(ids) > 16 else "") if ids else "none"
