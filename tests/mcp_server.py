"""An MCP server for tests/test_mcp.py, served over the transport its first argument names.

    python mcp_server.py stdio CHECKPOINT_DIR                   a Server, its own cluster
    python mcp_server.py streamable-http|sse PORT CHECKPOINT_DIR      (in CHECKPOINT_DIR)
    python mcp_server.py open PORT CHECKPOINT_DIR       streamable-http, require_token=False
    python mcp_server.py attach CHECKPOINT_DIR                  ELFastMCP over stdio

The tools are defined here, in __main__, so the cluster gets them by value (cloudpickle),
and tests import this file to call the same functions directly.
"""

from __future__ import annotations

import asyncio
import sys
import time

from ensemble_launcher.config import LauncherConfig


def simulate(pressure: float, temperature: float = 300.0) -> float:
    """Pressure times temperature over a constant: a stand-in for a simulation."""
    return pressure * temperature / 8.314


def flaky(x: int) -> float:
    """1 / x, which fails for x = 0."""
    return 1 / x


def pause(seconds: float) -> float:
    """Sleeps, then answers how long it slept."""
    time.sleep(seconds)
    return seconds


async def double_later(x: int) -> int:
    """Twice x, after an await."""
    await asyncio.sleep(0.01)
    return 2 * x


def attempts(path: str) -> int:
    """Fails until it has been tried three times (a retry test): counts the tries in path."""
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        tries = len(f.read())
    if tries < 3:
        raise RuntimeError(f"try {tries}")
    return tries


def environment_value(name: str) -> str | None:
    """The value of an environment variable where the task runs."""
    import os

    return os.environ.get(name)


def environment() -> dict[str, str]:
    """The whole environment where the task runs."""
    import os

    return dict(os.environ)


ECHO = "echo P={P} T={T}"
EXIT = "sh -c 'echo out {code}; echo err {code} >&2; exit {code}'"
AWK = "awk 'BEGIN {{print {a} + 1}}'"


def register(mcp) -> None:
    mcp.tool(simulate)
    mcp.ensemble_tool(simulate)
    mcp.ensemble_tool(relation="many-to-many", name="grid")(simulate)
    mcp.ensemble_tool(flaky)
    mcp.ensemble_tool(pause)
    mcp.tool(double_later)
    mcp.ensemble_tool(double_later)
    mcp.tool(ECHO, name="echo", description="Echoes P and T.")
    mcp.ensemble_tool(EXIT, name="exit_with", description="Exits with code.")
    mcp.tool(AWK, name="awk_plus", description="Adds one, in awk.")


def main(argv: list[str]) -> None:
    from ensemble_launcher.mcp import ELFastMCP, Server

    transport, *rest = argv
    if transport == "attach":
        attached = ELFastMCP(checkpoint_dir=rest[0])
        register(attached)
        attached.run("stdio")
        return
    port, checkpoint_dir = (int(rest[0]), rest[1]) if transport != "stdio" else (0, rest[0])
    if transport == "open":
        Server(port=port, checkpoint_dir=checkpoint_dir, require_token=False) \
            .run("streamable-http")
        return
    mcp = Server(port=port, checkpoint_dir=checkpoint_dir)
    register(mcp)
    mcp.tool(attempts, launcher_config=LauncherConfig(retries=2))
    mcp.tool(environment_value, env={"SIM_MODE": "fast"})
    mcp.tool(environment)
    mcp.run(transport)


if __name__ == "__main__":
    main(sys.argv[1:])
