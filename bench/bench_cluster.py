"""Cluster-mode benchmarks of ensemble_launcher, each against a baseline in the same run.

Every cluster here is started (``EnsembleLauncher.start()``) and warmed with a few tasks
before anything is timed, as the ProcessPoolExecutor baselines are warmed before theirs:
start-up is paid once by a long-lived cluster, so it is left out on both sides.

1. submit     N no-op callables (default 10,000) through ``client.submit``, submit all
              then ``result()`` all, on a cluster at nlevels=0. Baseline:
              ``ProcessPoolExecutor(os.cpu_count())`` doing the same. Ratio of rates;
              goal >= 3. Median of a few rounds, ours and the baseline alternating.
2. map        ``client.map`` over the same N no-ops vs ``EnsembleLauncher(dict of
              Task).run()`` of the same N tasks (nlevels=0, in this process, launcher
              start-up included as in bench_core.py). Ratio map / el-run; goal >= 0.8.
3. roundtrip  one task at a time, submit -> result, 500 times: median and p90 at
              nlevels=0 and at nlevels=1 (one worker on localhost); goals < 1 ms and
              < 2 ms. Baseline: the same with ProcessPoolExecutor.
4. chain      a 1,000-link dependency chain of no-ops, ``f = client.submit(inc, f)``,
              then ``f.result()``: the head resolves each link. Goal <= 2 ms per link.
              Baseline: the same chain with the client waiting for each result before
              it submits the next link (a client round trip per link).
5. idle       a cluster with a connected client left idle for 60 s: CPU (user + system
              time / wall time) of the head, of each of its children (runners, workers)
              and of this process (the client's); goal < 1 % for the busiest.
              Baseline: the worker processes of an idle ProcessPoolExecutor, measured
              over the same seconds.
6. memory     1,000,000 no-ops through ``client.map``: peak RSS, sampled every 0.5 s
              from a thread, of the head, of its children (the largest one, and all of
              them together) and of this process (the client); goal < 300 MB for the
              head and for the client. Baselines: their RSS before the map. The rate is
              printed beside that of a map of N tasks on the same cluster (flatness).

Usage: ``python bench/bench_cluster.py [--quick] [--only NAME ...] [--tasks N]
[--trips N] [--links N] [--idle-seconds S] [--map-tasks N]``. Benchmarks report, they
do not gate: the exit status is 0 whatever the results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import psutil
from bench_core import (
    Row,
    launcher_seconds,
    median_rates,
    noop,
    run_benchmarks,
    say,
    scratch_dir,
    timed,
)

from ensemble_launcher import EnsembleLauncher, Task
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.orchestrator import ClusterClient

POOL_WORKERS = os.cpu_count() or 1
BENCHMARKS = ("submit", "map", "roundtrip", "chain", "idle", "memory")
WARM_TASKS = 200
MB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    tasks: int = 10_000
    rounds: int = 3
    trips: int = 500
    links: int = 1_000
    idle_seconds: float = 60.0
    map_tasks: int = 1_000_000


QUICK = Sizes(tasks=2_000, rounds=1, trips=100, links=200, idle_seconds=5.0,
              map_tasks=20_000)


def ignore(_item: object) -> None:
    """The no-op of a map: it takes the item and drops it."""
    return None


def inc(value: int = 0) -> int:
    return value + 1


# -- clusters and pools --------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    client: ClusterClient
    head: psutil.Process


@contextlib.contextmanager
def running_cluster(nlevels: int = 0) -> Iterator[Cluster]:
    """A started and warmed cluster in a scratch directory, with one connected client;
    stopped (drained) and removed afterwards, whatever happened in between."""
    with scratch_dir() as tmp:
        config = LauncherConfig(cluster=True, checkpoint_dir=str(tmp / "cluster"),
                                nlevels=nlevels)
        launcher = EnsembleLauncher({}, SystemConfig(name="local"), config,
                                    Nodes=["localhost"] if nlevels else None)
        launcher.start()
        try:
            with ClusterClient(tmp / "cluster", client_id="bench") as client:
                assert client.info is not None
                wait_all([client.submit(noop) for _ in range(WARM_TASKS)])
                yield Cluster(client, psutil.Process(client.info.pid))
        finally:
            launcher.stop(timeout=120)


@contextlib.contextmanager
def warm_pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=POOL_WORKERS) as pool:
        wait_all([pool.submit(noop) for _ in range(WARM_TASKS)])
        yield pool


def wait_all(futures: list[Future]) -> None:
    for future in futures:
        future.result()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * len(values))]


# -- 1. submit + result ----------------------------------------------------------------------


def submit_all_seconds(submit: Callable[[], Future], n: int) -> float:
    return timed(lambda: wait_all([submit() for _ in range(n)]))


def bench_submit(sizes: Sizes) -> list[Row]:
    n = sizes.tasks
    with running_cluster() as cluster, warm_pool() as pool:
        ours_rate, base_rate, ratio = median_rates(
            n, sizes.rounds, lambda: submit_all_seconds(lambda: cluster.client.submit(noop), n),
            lambda: submit_all_seconds(lambda: pool.submit(noop), n))
    say(f"[submit] {n} no-ops, submit all then result all: client.submit {ours_rate:,.0f}/s, "
        f"ProcessPoolExecutor({POOL_WORKERS}) {base_rate:,.0f}/s, ratio {ratio:.2f}")
    return [Row(f"{n} no-ops, client.submit (tasks/s)", f"{ours_rate:,.0f}",
                f"{base_rate:,.0f}", ratio, "ratio >= 3", ratio >= 3)]


# -- 2. map vs el run ------------------------------------------------------------------------


def map_seconds(client: ClusterClient, n: int) -> float:
    def drain() -> None:
        for _ in client.map(ignore, range(n)):
            pass

    return timed(drain)


def ignore_task_dict(n: int) -> dict[str, Task]:
    return {f"noop-{i}": Task(task_id=f"noop-{i}", executable=ignore, args=(i,))
            for i in range(n)}


def bench_map(sizes: Sizes) -> list[Row]:
    n = sizes.tasks
    with running_cluster() as cluster:
        ours_rate, base_rate, ratio = median_rates(
            n, sizes.rounds, lambda: map_seconds(cluster.client, n),
            lambda: launcher_seconds(lambda: ignore_task_dict(n), n))
    say(f"[map] {n} no-ops: client.map {ours_rate:,.0f}/s, EnsembleLauncher(dict of Task)"
        f".run() {base_rate:,.0f}/s, ratio {ratio:.2f}")
    return [Row(f"{n} no-ops, client.map vs el run (tasks/s)", f"{ours_rate:,.0f}",
                f"{base_rate:,.0f}", ratio, "ratio >= 0.8", ratio >= 0.8)]


# -- 3. one task's round trip ----------------------------------------------------------------


def round_trips(submit: Callable[[], Future], count: int) -> list[float]:
    trips = []
    for _ in range(count):
        start = time.perf_counter()
        submit().result()
        trips.append(time.perf_counter() - start)
    return trips


def bench_roundtrip(sizes: Sizes) -> list[Row]:
    with warm_pool() as pool:
        base = statistics.median(round_trips(lambda: pool.submit(noop), sizes.trips))
    say(f"[roundtrip] ProcessPoolExecutor({POOL_WORKERS}), one task at a time: median "
        f"{ms(base)}")
    rows = []
    for nlevels, goal in ((0, 1e-3), (1, 2e-3)):
        with running_cluster(nlevels) as cluster:
            trips = round_trips(lambda c=cluster: c.client.submit(noop), sizes.trips)
        median = statistics.median(trips)
        say(f"[roundtrip] nlevels={nlevels}, {sizes.trips} one at a time: median {ms(median)}"
            f", p90 {ms(p90(trips))}; ProcessPoolExecutor median {ms(base)}, ratio "
            f"{median / base:.2f}")
        rows.append(Row(f"round trip, nlevels={nlevels} (median; p90 {ms(p90(trips))})",
                        ms(median), ms(base), median / base, f"< {goal * 1e3:.0f} ms",
                        median < goal))
    return rows


# -- 4. dependency chain ---------------------------------------------------------------------


def chain_in_head_seconds(client: ClusterClient, links: int) -> float:
    def chain() -> None:
        future: Future = client.submit(inc, 0)
        for _ in range(links - 1):
            future = client.submit(inc, future)
        if future.result() != links:
            raise RuntimeError(f"the chain of {links} links ended at {future.result()}")

    return timed(chain)


def chain_by_client_seconds(client: ClusterClient, links: int) -> float:
    def chain() -> None:
        value = 0
        for _ in range(links):
            value = client.submit(inc, value).result()

    return timed(chain)


def bench_chain(sizes: Sizes) -> list[Row]:
    links = sizes.links
    with running_cluster() as cluster:
        ours = chain_in_head_seconds(cluster.client, links) / links
        base = chain_by_client_seconds(cluster.client, links) / links
    say(f"[chain] {links} links: futures resolved in the head {ms(ours)} per link; client "
        f"waiting for each link {ms(base)} per link, ratio {ours / base:.2f}")
    return [Row(f"{links}-link chain (per link)", ms(ours), ms(base), ours / base,
                "<= 2 ms", ours <= 2e-3)]


# -- 5. idle CPU -----------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def idle_shares(processes: dict[str, psutil.Process], seconds: float) -> dict[str, float]:
    """Each process's CPU time over ``seconds`` of wall time, as a fraction of one core."""
    before = {name: cpu_seconds(p) for name, p in processes.items()}
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    shares = {}
    for name, process in processes.items():
        after, first = cpu_seconds(process), before[name]
        if after is not None and first is not None:
            shares[name] = (after - first) / wall
    return shares


def named_tree(head: psutil.Process) -> dict[str, psutil.Process]:
    named = {f"head {head.pid}": head}
    for child in head.children(recursive=True):
        named[f"head's child {child.pid}"] = child
    return named


def bench_idle(sizes: Sizes) -> list[Row]:
    me = psutil.Process()
    with running_cluster() as cluster, warm_pool():
        ours = named_tree(cluster.head)
        ours["client (this process)"] = me
        pool = {f"pool worker {p.pid}": p for p in me.children()
                if p.pid != cluster.head.pid}
        shares = idle_shares({**ours, **pool}, sizes.idle_seconds)
    ours_shares = {name: shares[name] for name in ours if name in shares}
    pool_shares = [shares[name] for name in pool if name in shares]
    for name, share in ours_shares.items():
        say(f"[idle] {name}: {share * 100:.2f} % CPU over {sizes.idle_seconds:.0f} s")
    busiest = max(ours_shares.values())
    base = max(pool_shares, default=0.0)
    say(f"[idle] busiest of {len(ours_shares)} cluster processes: {busiest * 100:.2f} %; "
        f"busiest idle ProcessPoolExecutor worker {base * 100:.2f} %")
    return [Row(f"idle CPU, busiest of {len(ours_shares)} processes", f"{busiest * 100:.2f} %",
                f"{base * 100:.2f} %", busiest / base if base else None, "< 1 %",
                busiest < 0.01)]


# -- 6. memory over a long map ---------------------------------------------------------------


@dataclass
class Peaks:
    head: int = 0
    largest_child: int = 0
    children: int = 0
    client: int = 0


class RssSampler:
    """Samples the RSS of the head, its children and this process every ``interval``
    seconds on a thread, keeping the peaks."""

    def __init__(self, head: psutil.Process, interval: float = 0.5) -> None:
        self.head, self.interval = head, interval
        self.me = psutil.Process()
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peaks.head = max(self.peaks.head, self.head.memory_info().rss)
        sizes = []
        for child in self.head.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                sizes.append(child.memory_info().rss)
        self.peaks.largest_child = max(self.peaks.largest_child, max(sizes, default=0))
        self.peaks.children = max(self.peaks.children, sum(sizes))
        self.peaks.client = max(self.peaks.client, self.me.memory_info().rss)


def bench_memory(sizes: Sizes) -> list[Row]:
    n, small = sizes.map_tasks, sizes.tasks
    with running_cluster() as cluster:
        small_rate = small / map_seconds(cluster.client, small)
        before = RssSampler(cluster.head)
        before.sample()
        with RssSampler(cluster.head) as sampler:
            rate = n / map_seconds(cluster.client, n)
    peaks, idle = sampler.peaks, before.peaks
    say(f"[memory] client.map of {n:,} no-ops: {rate:,.0f}/s (map of {small:,}: "
        f"{small_rate:,.0f}/s, ratio {rate / small_rate:.2f})")
    say(f"[memory] peak RSS: head {peaks.head / MB:.0f} MB (before {idle.head / MB:.0f}), "
        f"client {peaks.client / MB:.0f} MB (before {idle.client / MB:.0f}), largest child "
        f"of the head {peaks.largest_child / MB:.0f} MB, its children together "
        f"{peaks.children / MB:.0f} MB")
    return [Row(f"{n // 1000}k map vs {small // 1000}k map rate (tasks/s)", f"{rate:,.0f}",
                f"{small_rate:,.0f}", rate / small_rate, "report", True),
            rss_row(f"head peak RSS, {n // 1000}k map", peaks.head, idle.head),
            rss_row(f"client peak RSS, {n // 1000}k map", peaks.client, idle.client)]


def rss_row(label: str, peak: int, before: int) -> Row:
    return Row(label, f"{peak / MB:.0f} MB", f"{before / MB:.0f} MB", peak / before,
               "ours < 300 MB", peak < 300 * MB)


# -- driver ----------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Sizes], list[Row]]] = {
    "submit": bench_submit, "map": bench_map, "roundtrip": bench_roundtrip,
    "chain": bench_chain, "idle": bench_idle, "memory": bench_memory,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke runs")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--tasks", type=int, help="no-ops of submit and map (10,000)")
    parser.add_argument("--rounds", type=int, help="rounds of submit and map (3)")
    parser.add_argument("--trips", type=int, help="one-at-a-time round trips (500)")
    parser.add_argument("--links", type=int, help="links of the dependency chain (1,000)")
    parser.add_argument("--idle-seconds", type=float, help="idle measurement (60; quick 5)")
    parser.add_argument("--map-tasks", type=int, help="no-ops of the memory map (1,000,000)")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(Sizes)
             if getattr(args, field.name) is not None}
    return dataclasses.replace(sizes, **given)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return run_benchmarks("cluster", args.only or BENCHMARKS, RUNNERS, sizes_from(args),
                          args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
