"""The one address a master listens on over TCP (``bind_address``): never every interface.

We take an IP address of this host, or the name of one of its network interfaces (``ib0``,
``hsn0``): a name suits trees whose masters run on several hosts, each binding that
interface's address on its own host. Wildcards (``0.0.0.0``, ``::``, ``*``) are refused:
they would accept connections from every network the host is on.
"""

from __future__ import annotations

import ipaddress
import socket

_FIX = ("set bind_address to the IP address of the one interface that reaches the other "
        "nodes (e.g. 10.0.0.5) or that interface's name (e.g. ib0), or leave it unset to use "
        "the address that routes to the children")


def check_bind_address(value: str) -> str:
    """``value`` when it names one address of this host; ValueError saying how to fix it
    otherwise."""
    check_not_wildcard(value)
    ip = _ip(value)
    if ip is not None:
        _check_assigned_here(value, ip)
    elif value not in interface_names():
        shown = ", ".join(interface_names()[:12])
        raise ValueError(f"bind_address {value!r} is neither an IP address nor a network "
                         f"interface of this host ({socket.gethostname()}: {shown}); {_FIX}")
    return value


def check_not_wildcard(value: str) -> str:
    """``value`` unless it listens on every interface: checked also where the host it names
    is not this one (a run recorded on another node)."""
    if value.strip() in ("*", "") or _is_wildcard(value):
        raise ValueError(f"bind_address {value!r} listens on every interface of the host, "
                         f"which we never do; {_FIX}")
    return value


def tcp_bind(value: str) -> str:
    """The ZMQ endpoint (without a port) that binds a checked ``bind_address``."""
    ip = _ip(value)
    if ip is None:
        return f"tcp://{value}"
    return f"tcp://[{ip}]" if ip.version == 6 else f"tcp://{ip}"


def interface_names() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None


def _is_wildcard(value: str) -> bool:
    ip = _ip(value)
    return ip is not None and ip.is_unspecified


def _check_assigned_here(value: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError as exc:
        raise ValueError(f"bind_address {value!r} is not an address of this host "
                         f"({socket.gethostname()}): {exc.strerror}; {_FIX}") from None
