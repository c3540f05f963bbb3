"""Benchmarks of the master/worker tree, each against a baseline in the same run.

1. levels     N no-op callables through a tree on this machine (workers on localhost,
              ipc) at nlevels=1 and nlevels=2, vs nlevels=0 (no tree) in the same run.
              Ratio = tree rate / nlevels=0 rate; goal for nlevels=1 >= 0.8 (the original
              launcher: 0.42). Also the root's own CPU time per task (user + system of
              this process / tasks); goal <= 5 us at nlevels=1.
2. scale      the ``simulate`` executor (a task completes after its estimated_runtime,
              without a process) on trees of 256 and 2,048 logical nodes at nlevels=2 and
              8,192 at nlevels=3, 64 slots each, 64 logical nodes per worker process
              (``simulated_nodes_per_process``; masters and the root are real processes).
              Reports when the last node connected, the root's dispatch rate from then
              on, and the root's CPU per task; goals for 2,048 nodes: connected < 60 s,
              >= 50,000 tasks/s. Baseline: nlevels=0 on one 64-slot node.
3. latency    round trip of one task at a time through main -> main.w0 over loopback TCP
              (CURVE, as between real nodes): from the root handing the task out to its
              result arriving back. Median of 200; goal < 1 ms. Baseline: a bare ZMQ
              DEALER/ROUTER ping-pong with the same encryption.

Usage: ``python bench/bench_tree.py [--quick] [--only NAME ...]``. Benchmarks report;
the exit status is 0 whatever the results.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ensemble_launcher import EnsembleLauncher, Task
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.orchestrator.feeds import LocalFeed

BENCHMARKS = ("levels", "scale", "latency")


@dataclass
class Row:
    name: str
    ours: str
    baseline: str
    ratio: float
    goal: str
    ok: bool


def say(text: str) -> None:
    print(text, flush=True)


def noop() -> None:
    return None


@dataclass
class Measured:
    rate: float
    """Tasks per second."""
    root_us: float
    """The root process's own CPU time (user + system) per task, in microseconds: what
    decides whether one root can feed a whole machine."""


def root_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_run(tasks, n: int, nodes=None, **config) -> Measured:
    """One EnsembleLauncher run, start-up and shut-down included."""
    out = Path(tempfile.mkdtemp(prefix="el-bench-"))
    try:
        cpu, start = root_cpu(), time.perf_counter()
        results = EnsembleLauncher(tasks, config.pop("system", None), LauncherConfig(**config),
                                   Nodes=nodes, out_dir=out / "run").run()
        elapsed, cpu = time.perf_counter() - start, root_cpu() - cpu
        done = results.counts().get("succeeded", 0)
        if done != n:
            raise RuntimeError(f"only {done} of {n} tasks succeeded: {results.counts()}")
        return Measured(n / elapsed, cpu / n * 1e6)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- 1. levels -------------------------------------------------------------------------------


def noop_tasks(n: int):
    return (Task(task_id=f"t{i}", executable=noop) for i in range(n))


def bench_levels(n: int, workers: int, rounds: int) -> list[Row]:
    runs: dict[str, list[Measured]] = {"0": [], "1": [], "2": []}
    local = ["localhost"] * workers
    for _ in range(rounds):
        runs["0"].append(timed_run(noop_tasks(n), n, nlevels=0))
        runs["1"].append(timed_run(noop_tasks(n), n, local, nlevels=1))
        runs["2"].append(timed_run(noop_tasks(n), n, local, nlevels=2, nchildren=2))
    base = statistics.median(m.rate for m in runs["0"])
    base_us = statistics.median(m.root_us for m in runs["0"])
    say(f"[levels] nlevels=0: {base:,.0f}/s, root CPU {base_us:.1f} us/task (its one worker "
        "runs in the root)")
    rows = []
    for level in ("1", "2"):
        rate = statistics.median(m.rate for m in runs[level])
        root_us = statistics.median(m.root_us for m in runs[level])
        ratio = rate / base
        say(f"[levels] {n} no-ops, {workers} workers on localhost: nlevels={level} "
            f"{rate:,.0f}/s vs nlevels=0 {base:,.0f}/s, ratio {ratio:.2f}; root CPU "
            f"{root_us:.1f} us/task")
        goal_ok = ratio >= 0.8 if level == "1" else True
        rows.append(Row(f"nlevels={level} vs 0 ({n} no-ops)", f"{rate:,.0f}/s", f"{base:,.0f}/s",
                        ratio, ">= 0.8" if level == "1" else "report", goal_ok))
        rows.append(Row(f"root CPU per task, nlevels={level}", f"{root_us:.1f} us",
                        f"{base_us:.1f} us", root_us / base_us,
                        "<= 5 us" if level == "1" else "report",
                        root_us <= 5 if level == "1" else True))
    return rows


# -- 2. scale --------------------------------------------------------------------------------


def sim_tasks(n: int, seconds: float):
    return (Task(task_id=f"s{i}", executable="true", estimated_runtime=seconds)
            for i in range(n))


@dataclass
class ScaleRun:
    steady: float
    """Tasks/s through the root once every child is connected: what the tree sustains."""
    whole: float
    """Tasks/s from the first task's start to the last one's end, start-up included."""
    startup: float
    """Seconds from the run's start until its last child connected."""
    root_us: float
    """The root's CPU time per task, microseconds."""


@dataclass
class Shape:
    nodes: int
    level: int
    nchildren: int | None = None


def scale_run(n: int, shape: Shape, system: SystemConfig, seconds: float,
              per_process: int) -> ScaleRun:
    out = Path(tempfile.mkdtemp(prefix="el-bench-"))
    try:
        began, cpu = time.time(), root_cpu()
        results = EnsembleLauncher(
            sim_tasks(n, seconds), system,
            LauncherConfig(nlevels=shape.level, nchildren=shape.nchildren,
                           task_executor_name="simulate", master_logs=True,
                           child_start_timeout=600, heartbeat_interval=30.0,
                           node_sample_interval=0, simulated_nodes_per_process=per_process),
            Nodes=["localhost"] * shape.nodes if shape.nodes else None,
            out_dir=out / "run").run()
        cpu = root_cpu() - cpu
        if results.counts().get("succeeded", 0) != n:
            raise RuntimeError(f"not every task succeeded: {results.counts()}")
        ends = [r.end_time for r in results.values()]
        first, last = min(r.start_time for r in results.values()), max(ends)
        up = max(connection_times(out / "run" / "logs"), default=first)
        after = sum(1 for e in ends if e >= up)
        return ScaleRun(after / (last - up), n / (last - first), up - began, cpu / n * 1e6)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def connection_times(logs: Path) -> list[float]:
    """When each child connected, from the masters' logs ("... main.m0.w3 connected ...")."""
    import datetime

    times = []
    for log in logs.glob("master-*.log"):
        for line in log.read_text().splitlines():
            if " connected from " in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                times.append(stamp.timestamp())
    return times


#: Goals by tree: (all connected within seconds, tasks/s through the root once up).
SCALE_GOALS = {(2048, 2): (60.0, 50_000.0)}


def bench_scale(n: int, shapes: list[Shape], slots: int, seconds: float,
                per_process: int) -> list[Row]:
    system = SystemConfig(name="simulated", cpus=list(range(slots)))
    base = scale_run(min(n, 10_000), Shape(0, 0), system, seconds, 1)
    say(f"[scale] baseline nlevels=0, one {slots}-slot node: {base.steady:,.0f} tasks/s, root "
        f"CPU {base.root_us:.1f} us/task")
    rows = []
    for shape in shapes:
        tasks = n * max(1, shape.nodes // 2048)
        run = scale_run(tasks, shape, system, seconds, per_process)
        name = f"simulate {shape.nodes}x{slots}, nlevels={shape.level}"
        say(f"[scale] {shape.nodes} nodes x {slots} slots, nlevels={shape.level}"
            f"{f', nchildren={shape.nchildren}' if shape.nchildren else ''}, {per_process} "
            f"nodes per process, {tasks:,} tasks: all connected {run.startup:.1f} s after the "
            f"start; then {run.steady:,.0f} tasks/s through the root; {run.whole:,.0f}/s from "
            f"first start to last end; root CPU {run.root_us:.1f} us/task")
        connect_goal, rate_goal = SCALE_GOALS.get((shape.nodes, shape.level), (None, None))
        rows.append(Row(f"{name}: rate once up", f"{run.steady:,.0f}/s", f"{base.steady:,.0f}/s",
                        run.steady / base.steady,
                        f">= {rate_goal:,.0f}/s" if rate_goal else "report",
                        rate_goal is None or run.steady >= rate_goal))
        rows.append(Row(f"{name}: all connected", f"{run.startup:.1f} s", "-", 0.0,
                        f"< {connect_goal:.0f} s" if connect_goal else "report",
                        connect_goal is None or run.startup < connect_goal))
        rows.append(Row(f"{name}: root CPU per task", f"{run.root_us:.1f} us",
                        f"{base.root_us:.1f} us", run.root_us / base.root_us, "report", True))
    return rows


# -- 3. latency ------------------------------------------------------------------------------


def bench_latency(count: int) -> list[Row]:
    ours = tree_round_trips(count)
    base = zmq_round_trips(count)
    ours_ms, base_ms = statistics.median(ours) * 1e3, statistics.median(base) * 1e3
    say(f"[latency] one task main -> main.w0 -> main over loopback TCP: median {ours_ms:.3f} ms"
        f" (p90 {sorted(ours)[int(0.9 * len(ours))] * 1e3:.3f} ms); bare ZMQ CURVE ping-pong "
        f"{base_ms:.3f} ms")
    return [Row("one-task round trip, nlevels=1, TCP", f"{ours_ms:.3f} ms", f"{base_ms:.3f} ms",
                ours_ms / base_ms, "< 1 ms", ours_ms < 1.0)]


def tree_round_trips(count: int) -> list[float]:
    """Hand out one task at a time through a real root Master and worker; time each trip."""
    import zmq

    from ensemble_launcher.comm import CurveKeys
    from ensemble_launcher.launchers import LocalLauncher
    from ensemble_launcher.orchestrator.boot import Settings
    from ensemble_launcher.orchestrator.master import Master, TreeSettings
    from ensemble_launcher.orchestrator.tree import plan_tree

    upstream = OneAtATime(count)
    out = Path(tempfile.mkdtemp(prefix="el-bench-"))
    env = Settings(launcher_config=LauncherConfig().model_dump_json(),
                   system_config=SystemConfig().model_dump_json(), run_dir=str(out),
                   pin=True, return_stdout=False, check_each=False,
                   sys_path=list(sys.path)).to_env()
    settings = TreeSettings(LocalLauncher(), "tcp://127.0.0.1", 1.0, 60.0, out, env)
    ctx = zmq.Context()
    try:
        Master(plan_tree(["localhost"], 1), upstream, ctx, settings,
               CurveKeys.generate()).run()
    finally:
        ctx.term()
        shutil.rmtree(out, ignore_errors=True)
    return upstream.trips[10:]


class OneAtATime(LocalFeed):
    """An upstream for a root Master that releases the next task only when the previous
    result is back."""

    def __init__(self, count: int) -> None:
        from ensemble_launcher.orchestrator.wire import FunctionTable, task_to_wire

        self.functions = FunctionTable()
        self._encode = lambda key: task_to_wire(key, Task(task_id=f"l{key}", executable=noop),
                                                self.functions)
        self._left = count + 10
        self._sent_at: float | None = None
        self.trips: list[float] = []
        self.exhausted = False
        self.halted = False

    def take(self):
        if self._sent_at is not None or self.exhausted:
            return None
        if self._left == 0:
            self.exhausted = True
            return None
        self._left -= 1
        self._sent_at = time.perf_counter()
        return self._left, self._encode(self._left)

    def record_rows(self, rows) -> None:
        self.trips.append(time.perf_counter() - self._sent_at)
        self._sent_at = None

    def node_lost(self, *args) -> None:
        raise RuntimeError(f"the worker was lost: {args}")

    def report_running(self, by_ensemble) -> None:
        pass

    def report_started(self, keys) -> None:
        pass

    def record_samples(self, samples) -> None:
        pass

    def tick(self) -> None:
        pass


def zmq_round_trips(count: int) -> list[float]:
    """The floor: a DEALER/ROUTER ping-pong over the same CURVE-secured loopback TCP."""
    import zmq

    from ensemble_launcher.comm import ChildEndpoint, CurveKeys, Heartbeat, ParentEndpoint

    ctx = zmq.Context()
    keys = CurveKeys.generate()
    parent = ParentEndpoint(ctx, "tcp://127.0.0.1", keys)
    child = ChildEndpoint(ctx, parent.address, "echo", keys)
    poller = zmq.Poller()
    for sock in parent.sockets():
        poller.register(sock, zmq.POLLIN)
    trips = []
    try:
        child.send(Heartbeat(0.0))
        while not parent.receive({b"echo"}):
            poller.poll(100)
        for _ in range(count):
            start = time.perf_counter()
            parent.send(b"echo", Heartbeat(start))
            while not child.receive():
                child.socket.poll(100)
            child.send(Heartbeat(start))
            while not parent.receive({b"echo"}):
                poller.poll(100)
            trips.append(time.perf_counter() - start)
    finally:
        child.close(0)
        parent.close()
        ctx.term()
    return trips


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", action="append", choices=BENCHMARKS)
    args = parser.parse_args()
    chosen = args.only or list(BENCHMARKS)
    quick = args.quick
    say(f"ensemble_launcher tree benchmarks: {len(os.sched_getaffinity(0))} cores, "
        f"Python {sys.version.split()[0]}")
    plan: dict[str, Callable[[], list[Row]]] = {
        "levels": lambda: bench_levels(10_000 if quick else 200_000, 2, 1 if quick else 3),
        "scale": lambda: bench_scale(
            20_000 if quick else 300_000,
            [Shape(16, 2)] if quick else [Shape(256, 2), Shape(2048, 2, 16), Shape(8192, 3, 8)],
            64, 0.05, 8 if quick else 64),
        "latency": lambda: bench_latency(50 if quick else 200),
    }
    rows: list[Row] = []
    started = time.perf_counter()
    for name in chosen:
        try:
            rows += plan[name]()
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the rest
            say(f"[{name}] ERROR: {type(exc).__name__}: {exc}")
            rows.append(Row(name, "error", "-", 0.0, "-", False))
    say("")
    say(f"{'benchmark':42} {'ours':>14} {'baseline':>14} {'ratio':>7}  {'goal':12} result")
    for r in rows:
        say(f"{r.name:42} {r.ours:>14} {r.baseline:>14} {r.ratio:7.3f}  {r.goal:12} "
            f"{'PASS' if r.ok else 'MISS'}")
    say(f"\ntotal {time.perf_counter() - started:.0f} s; benchmarks report, they do not gate")


if __name__ == "__main__":
    main()
