"""Which nodes the job has: explicit names, PBS_NODEFILE, Slurm's node list, or this host.

Slurm's hostlist syntax (``nid[001-004,007]``) is expanded by Slurm itself
(``scontrol show hostnames``) when it is on PATH, else by the python-hostlist library.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from ensemble_launcher.errors import ConfigError


def discover_nodes(explicit: list[str] | None = None) -> tuple[list[str], str]:
    """The job's node names and where they came from."""
    if explicit is not None:
        return list(explicit), "Nodes"
    nodefile = os.environ.get("PBS_NODEFILE")
    if nodefile:
        return _read_nodefile(Path(nodefile)), f"PBS_NODEFILE={nodefile}"
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if nodelist:
        return expand_hostlist(nodelist), f"SLURM_JOB_NODELIST={nodelist}"
    return [socket.gethostname()], "this host"


def _read_nodefile(path: Path) -> list[str]:
    """Unique host names in file order (PBS lists a host once per slot)."""
    try:
        lines = path.read_text().split()
    except OSError as exc:
        raise ConfigError(f"cannot read PBS_NODEFILE {path}: {exc.strerror}") from None
    nodes = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not nodes:
        raise ConfigError(f"PBS_NODEFILE {path} lists no host")
    return nodes


def expand_hostlist(text: str) -> list[str]:
    scontrol = shutil.which("scontrol")
    if scontrol:
        out = subprocess.run([scontrol, "show", "hostnames", text], capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()
    import hostlist

    try:
        return hostlist.expand_hostlist(text)
    except hostlist.BadHostlist as exc:
        raise ConfigError(f"cannot expand Slurm node list {text!r}: {exc}") from None


def check_resolvable(nodes: list[str]) -> None:
    """Fail at once, naming the node, when a node name does not resolve."""
    for node in dict.fromkeys(nodes):
        try:
            socket.getaddrinfo(node, None, socket.AF_INET)
        except socket.gaierror as exc:
            raise ConfigError(f"node name {node!r} does not resolve ({exc.strerror}); check "
                              "Nodes, PBS_NODEFILE or SLURM_JOB_NODELIST") from None


def local_address_for(host: str) -> str:
    """The local IP address that reaches ``host`` (no packet is sent)."""
    target = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((target, 9))
        return probe.getsockname()[0]


def address_for_workers() -> str:
    """Where workers on other nodes reach this host when no address is configured: the
    address of its name, unless that is a loopback one; else the one on the default route
    (no packet is sent)."""
    try:
        named = socket.gethostbyname(socket.gethostname())
    except OSError:
        named = ""
    if named and not named.startswith("127."):
        return named
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        return probe.getsockname()[0]
