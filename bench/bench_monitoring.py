"""The cost of monitoring: the same runs with resource accounting and node sampling on
(the defaults) and with both off, in the same process, alternating.

1. callables  N no-op callables (default 10,000) through ``EnsembleLauncher.run()`` at
              nlevels=0 on this node. Ours: ``resource_usage=True`` (each call's CPU time
              and peak RSS measured in its runner) and ``node_sample_interval=5.0``.
              Baseline: ``resource_usage=False``, ``node_sample_interval=0``. Median wall
              time of R rounds each (default 3); goal: at most 5% slower.
2. commands   M ``true`` commands (default 2,000), the same two configurations: each
              command's rusage comes from ``wait4``, which replaces the ``waitpid`` a run
              makes anyway.

Each benchmark also prints the difference per task, and the first the runner's own cost
of measuring one call (two ``getrusage``, and the reset of the RSS mark when a call raised
it), timed in this process.

Usage: ``python bench/bench_monitoring.py [--quick] [--callables N] [--commands M]
[--rounds R]``. Benchmarks report, they do not gate: the exit status is 0 whatever the
results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_core import NCORES, Row, noop, run_benchmarks, say, sizes_from

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.executors.runner import _Meter
from ensemble_launcher.monitor.progress import Reporter

BENCHMARKS = ("callables", "commands")
GOAL = 1.05


@dataclass(frozen=True)
class Sizes:
    callables: int = 10_000
    commands: int = 2_000
    rounds: int = 3


QUICK = Sizes(callables=2_000, commands=200, rounds=1)


def monitoring(on: bool) -> LauncherConfig:
    """The defaults (on), or resource accounting and node sampling both off; node sampling
    only where this version has it."""
    settings: dict[str, object] = {"nlevels": 0, "resource_usage": on}
    if "node_sample_interval" in LauncherConfig.model_fields:
        settings["node_sample_interval"] = 5.0 if on else 0
    return LauncherConfig(**settings)


def run_seconds(tasks: Callable[[], Iterator[Task]], n: int, on: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        launcher = EnsembleLauncher(tasks(), SystemConfig(name="local", ncpus=NCORES),
                                    monitoring(on), out_dir=Path(tmp) / "run",
                                    reporter=Reporter())
        start = time.perf_counter()
        results = launcher.run()
        seconds = time.perf_counter() - start
        done = results.counts().get("succeeded", 0)
        measured = next(iter(results.values())).max_rss is not None
    if done != n:
        raise RuntimeError(f"{done} of {n} tasks succeeded")
    if measured != on:
        raise RuntimeError(f"resource_usage={on}, yet max_rss was "
                           f"{'recorded' if measured else 'not recorded'}")
    return seconds


def compare(name: str, what: str, tasks: Callable[[], Iterator[Task]], n: int,
            rounds: int) -> tuple[Row, float]:
    """Median wall time with monitoring on and off, alternating, after one warm-up run;
    the row and the difference per task (us)."""
    run_seconds(tasks, n, True)
    on, off = [], []
    for _ in range(rounds):
        off.append(run_seconds(tasks, n, False))
        on.append(run_seconds(tasks, n, True))
    on_s, off_s = statistics.median(on), statistics.median(off)
    ratio = on_s / off_s
    per_task = (on_s - off_s) / n * 1e6
    say(f"[{name}] {n} {what}, median of {rounds}: monitoring on {on_s:.2f} s "
        f"({n / on_s:,.0f} tasks/s), off {off_s:.2f} s ({n / off_s:,.0f} tasks/s), "
        f"ratio {ratio:.3f}, {per_task:+.2f} us per task; fastest rounds: on "
        f"{min(on):.2f} s, off {min(off):.2f} s, ratio {min(on) / min(off):.3f}")
    return Row(f"{n} {what}, monitoring on vs off (wall, median)", f"{on_s:.2f} s",
               f"{off_s:.2f} s", ratio, f"<= {GOAL:.2f}x", ratio <= GOAL), per_task


def meter_seconds_per_call() -> float:
    """What measuring one no-op call costs a runner: start() and stop() of its meter, timed
    in a forked child, single-threaded as a runner is (``getrusage`` of a process costs
    more with each thread, and this one has ZMQ's)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            meter = _Meter()

            def measure_one() -> None:
                meter.start()
                meter.stop()

            number = 20_000
            best = min(timeit.repeat(measure_one, number=number, repeat=5)) / number
            os.write(write, struct.pack("d", best))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return struct.unpack("d", data)[0]


def noop_tasks(n: int) -> Callable[[], Iterator[Task]]:
    return lambda: (Task(task_id=f"noop-{i}", executable=noop) for i in range(n))


def true_tasks(n: int) -> Callable[[], Iterator[Task]]:
    return lambda: (Task(task_id=f"true-{i}", executable="true") for i in range(n))


def bench_callables(sizes: Sizes) -> list[Row]:
    row, _ = compare("callables", "no-op callables", noop_tasks(sizes.callables),
                     sizes.callables, sizes.rounds)
    say(f"[callables] the runner's cost of measuring one call: "
        f"{meter_seconds_per_call() * 1e6:.2f} us")
    return [row]


def bench_commands(sizes: Sizes) -> list[Row]:
    row, _ = compare("commands", "true commands", true_tasks(sizes.commands),
                     sizes.commands, sizes.rounds)
    return [row]


RUNNERS = {"callables": bench_callables, "commands": bench_commands}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 callables, 200 commands, one round")
    parser.add_argument("--only", action="append", choices=BENCHMARKS)
    parser.add_argument("--callables", type=int, help="no-op callables per run (10,000)")
    parser.add_argument("--commands", type=int, help="true commands per run (2,000)")
    parser.add_argument("--rounds", type=int, help="rounds of each side (3)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return run_benchmarks("monitoring", args.only or BENCHMARKS, RUNNERS,
                          sizes_from(args, Sizes(), QUICK), args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
