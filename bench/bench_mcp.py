"""The cost of the MCP layer: an ensemble tool call against the same tasks submitted
directly, in the same run, on the same cluster.

1. ensemble   one ``ensemble_ignore`` call of N no-op elements (default 100), made by the
              official MCP client (a ClientSession over stdio) to an ``ELFastMCP`` server
              attached to the cluster, which submits them through its ClusterClient and
              answers the list of results. Baseline: this process submitting the same N
              tasks through its own ``ClusterClient`` and waiting for all their results.
              Median of R rounds (default 20), ours and the baseline alternating;
              printed: both medians, their ratio and the overhead per element. No goal:
              it reports (protocol, JSON and the server's event loop are what the ratio
              holds; both sides share the cluster's own cost).

The cluster is started and warmed as in bench_cluster.py, and so is the server (one call
before the rounds: it defines the function in the cluster). The server is this script,
run with ``--serve DIR``, so that the no-op reaches the cluster by value.

Usage: ``python bench/bench_mcp.py [--quick] [--elements N] [--rounds R]``. Benchmarks
report, they do not gate: the exit status is 0 whatever the results.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench_cluster import ms, running_cluster, wait_all
from bench_core import Row, run_benchmarks, say, sizes_from

from ensemble_launcher.orchestrator import ClusterClient

BENCHMARKS = ("ensemble",)


@dataclass(frozen=True)
class Sizes:
    elements: int = 100
    rounds: int = 20


QUICK = Sizes(elements=100, rounds=3)


def ignore(item: int) -> None:
    """An ensemble's no-op element: it takes its item and drops it."""
    return None


def serve(checkpoint_dir: str) -> None:
    from ensemble_launcher.mcp import ELFastMCP

    mcp = ELFastMCP(checkpoint_dir=checkpoint_dir, log_level="WARNING")
    mcp.ensemble_tool(ignore)
    mcp.run("stdio")


async def mcp_and_direct_seconds(checkpoint_dir: Path, client: ClusterClient,
                                 sizes: Sizes) -> tuple[list[float], list[float]]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    items = list(range(sizes.elements))
    params = StdioServerParameters(command=sys.executable,
                                   args=[__file__, "--serve", str(checkpoint_dir)])
    ours, direct = [], []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def one_call() -> float:
            start = time.perf_counter()
            result = await session.call_tool("ensemble_ignore", {"item": items})
            seconds = time.perf_counter() - start
            if result.is_error or len(result.structured_content["result"]) != len(items):
                raise RuntimeError(f"the ensemble call failed: {result.content}")
            return seconds

        await one_call()
        for _ in range(sizes.rounds):
            ours.append(await one_call())
            start = time.perf_counter()
            wait_all([client.submit(ignore, item) for item in items])
            direct.append(time.perf_counter() - start)
    return ours, direct


def bench_ensemble(sizes: Sizes) -> list[Row]:
    n = sizes.elements
    with running_cluster() as cluster:
        checkpoint_dir = cluster.client.checkpoint_dir
        ours, direct = asyncio.run(mcp_and_direct_seconds(checkpoint_dir, cluster.client,
                                                          sizes))
    ours_s, direct_s = statistics.median(ours), statistics.median(direct)
    ratio = ours_s / direct_s
    say(f"[ensemble] {n} no-ops, median of {sizes.rounds}: one MCP ensemble call {ms(ours_s)}"
        f", ClusterClient submit + result {ms(direct_s)}, ratio {ratio:.2f}, overhead "
        f"{ms((ours_s - direct_s) / n)} per element")
    return [Row(f"{n}-element ensemble tool call vs ClusterClient (median)", ms(ours_s),
                ms(direct_s), ratio, "report", True)]


RUNNERS = {"ensemble": bench_ensemble}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, for smoke runs")
    parser.add_argument("--elements", type=int, help="elements of the call (100)")
    parser.add_argument("--rounds", type=int, help="rounds of each side (20)")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    return run_benchmarks("mcp", BENCHMARKS, RUNNERS, sizes_from(args, Sizes(), QUICK),
                          args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
