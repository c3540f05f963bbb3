"""MCP servers whose tools run as tasks of a cluster, for AI agents, and the SSH tunnel
that reaches one on a compute node; needs the `mcp` extra
(pip install 'ensemble_launcher[mcp]').

    from ensemble_launcher.mcp import Server

    mcp = Server()

    @mcp.ensemble_tool
    def sim(P: float, T: float) -> float:
        return P * T

    mcp.run(transport="stdio")

Names load on first use, so that importing this package costs nothing until they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ensemble_launcher._lazy import lazy_exports

_EXPORTS = {
    "ELFastMCP": "ensemble_launcher.mcp.server",
    "Server": "ensemble_launcher.mcp.server",
    "start_tunnel": "ensemble_launcher.mcp.tunnel",
    "stop_tunnel": "ensemble_launcher.mcp.tunnel",
    "Tunnel": "ensemble_launcher.mcp.tunnel",
    "TunnelError": "ensemble_launcher.mcp.tunnel",
}

__all__ = ["ELFastMCP", "Server", "Tunnel", "TunnelError", "start_tunnel", "stop_tunnel"]

__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from ensemble_launcher.mcp.server import ELFastMCP, Server
    from ensemble_launcher.mcp.tunnel import Tunnel, TunnelError, start_tunnel, stop_tunnel
