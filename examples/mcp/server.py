"""An MCP server that lets an AI agent run a small simulation (a damped oscillator): one
run per tool call, a whole sweep per ensemble call, or the command-line version.

    python examples/mcp/server.py                        # stdio: what an agent starts
    python examples/mcp/server.py streamable-http        # http://127.0.0.1:9276/mcp
    el start --launcher-config cluster.json --return-stdout    # or, with a cluster of
    python examples/mcp/server.py stdio --checkpoint-dir DIR   # yours, attach to it

Without --checkpoint-dir the server starts its own cluster on this node (or this job's
nodes) and stops it when it stops; with it, the tools run in the cluster in DIR.
``client_config.json`` beside this file is what an agent needs to start it, or, over
HTTP, to reach it: the bearer token the server writes to
``$XDG_RUNTIME_DIR/ensemble_launcher/mcp-<port>.token`` (its log says where) goes in its
``Authorization`` header.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from ensemble_launcher.mcp import ELFastMCP, Server

HERE = Path(__file__).resolve().parent


def oscillate(damping: float, frequency: float, steps: int = 20000) -> float:
    """Where a damped oscillator is after `steps` milliseconds, started at x=1 at rest.
    `damping` is the damping rate (1/s), `frequency` the natural frequency (Hz)."""
    x, v, dt = 1.0, 0.0, 1e-3
    for _ in range(steps):
        v += (-(2 * math.pi * frequency) ** 2 * x - 2 * damping * v) * dt
        x += v * dt
    return x


SIM_COMMAND = (f"{shlex.quote(sys.executable)} {shlex.quote(str(HERE.parent / 'sim.py'))} "
               "--damping {damping} --frequency {frequency}")


def register(mcp: Server | ELFastMCP) -> None:
    mcp.tool(oscillate)
    mcp.ensemble_tool(oscillate)
    mcp.ensemble_tool(oscillate, name="oscillate_grid", relation="many-to-many")
    mcp.tool(SIM_COMMAND, name="sim_cli",
             description="Runs examples/sim.py, the command-line oscillator, and returns "
                         "the line it prints.")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transport", nargs="?", default="stdio",
                        choices=["stdio", "streamable-http", "sse"])
    parser.add_argument("--checkpoint-dir", help="attach to the cluster in this directory")
    parser.add_argument("--port", type=int, default=9276)
    args = parser.parse_args(argv)
    mcp = ELFastMCP(checkpoint_dir=args.checkpoint_dir, port=args.port) \
        if args.checkpoint_dir else Server(port=args.port)
    register(mcp)
    mcp.run(args.transport)


if __name__ == "__main__":
    main(sys.argv[1:])
