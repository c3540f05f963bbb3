"""Hosts as network namespaces joined by one bridge, with iproute2 only.

Only addresses in 10.77.X.0/24 are ever assigned, and nothing routes out of the bridge: no
NAT, no forwarding, no default route inside the hosts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from pathlib import Path

from .procs import ClusterError

TEST_RANGE = "10.77.{}.0/24"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """IPv4 networks of every address and route on this machine (root namespace)."""
    networks = []
    for line in ip("-o", "-4", "addr", "show").stdout.splitlines():
        networks.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] not in ("default", "broadcast", "local", "unreachable"):
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.ip_network(words[0], strict=False))
    return networks


def free_test_subnets(also_taken: set[int]) -> list[int]:
    """Values of X for which 10.77.X.0/24 overlaps nothing on this machine."""
    used = networks_in_use()
    return [
        x
        for x in range(256)
        if x not in also_taken
        and not any(ipaddress.ip_network(TEST_RANGE.format(x)).overlaps(n) for n in used)
    ]


def create_bridge(name: str, address: str) -> None:
    ip("link", "add", name, "type", "bridge")
    ip("addr", "add", f"{address}/24", "dev", name)
    ip("link", "set", name, "up")


def create_host(netns: str, veth: str, bridge: str, address: str) -> None:
    """A namespace whose `eth0` is one end of a veth pair; the other end joins the bridge."""
    ip("netns", "add", netns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", veth, "master", bridge, "up")
    ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "link", "set", "lo", "up")


def set_link(veth: str, up: bool) -> None:
    ip("link", "set", veth, "up" if up else "down")


def forwarding(veth: str) -> bool:
    """True once the bridge forwards through this port (operstate up, port state 3)."""
    try:
        operstate = Path(f"/sys/class/net/{veth}/operstate").read_text().strip()
        port_state = Path(f"/sys/class/net/{veth}/brport/state").read_text().strip()
    except OSError:
        return False
    return operstate == "up" and port_state == "3"


def link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


def netns_names() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def delete_netns(name: str) -> None:
    """Remove the namespace's name (its veth pair goes with it once no process is left in it)."""
    if name in netns_names():
        ip("netns", "del", name)


def delete_link(name: str) -> None:
    """Delete a link unless it is gone; the kernel may remove a veth pair on its own, once
    the namespace holding its peer is gone, between our look and our delete."""
    if not link_exists(name):
        return
    result = ip("link", "del", name, check=False)
    if result.returncode != 0 and link_exists(name):
        raise ClusterError(f"`ip link del {name}` failed: {result.stderr.strip()}")
