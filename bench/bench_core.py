"""Core performance benchmarks of ensemble_launcher, each against a baseline in the same run.

Machines are shared and absolute times drift, so every number that has a goal is set
beside a baseline measured in the same run, and the ratio between them is printed:

1. callables  N no-op Python callables (default 10,000). Ours: ``EnsembleLauncher(dict of
              Task).run()`` (launcher construction, pool start-up and shutdown included;
              the dict is built beforehand). Baseline: ``ProcessPoolExecutor(ncores)``,
              submit all then ``result()`` all, pool start-up and shutdown included.
              Ratio = our rate / baseline rate; goal >= 1.0. Median of a few rounds.
2. shell      2,000 ``true`` commands from an ensemble dict (``cmd_template: "true {i}"``)
              vs ``seq N | xargs -P<ncores> -n1 true``. Ratio of rates; goal >= 0.9.
3. sleep      200 x ``sleep 0.1`` on ncores cores. Efficiency = ideal (200 * 0.1 / ncores)
              / actual wall time; goal >= 0.97. ``xargs -P<ncores>`` running the same
              work is the reference.
4. flatness   no-op callables produced by a generator, 100,000 vs 10,000, each in a fresh
              child process; ratio of rates, goal >= 0.8. The 100k child also reports its
              own peak RSS (``ru_maxrss`` of the launcher process, not its runners); goal
              < 300 MB; baseline is the same child's RSS before the run. The dict-of-Task
              variant (the caller holds all 100k Tasks) is reported too.
5. lazy       extra peak RSS of a child process while it iterates every task of a
              1,000 x 1,000 many-to-many ensemble (1,000,000 tasks); goal < 100 MB.
6. latency    median over 5 runs of the time from starting ``el run ENSEMBLE`` (console
              script of this interpreter, else ``el`` on PATH, else ``python -m
              ensemble_launcher.cli``) to its single task writing ``date +%s.%N`` to a file;
              goal <= 0.1 s. Baseline: the same measurement for ``sh -c 'date ...'``.

The child processes of 4 and 5 are started through ``sh``, which forks them: Linux
carries a parent's RSS high-water mark into ``ru_maxrss`` across vfork+exec, so a child
started directly from this (larger) process would report our peak, not its own. VmHWM
from /proc/self/status is printed beside it as a cross-check.

Usage: ``python bench/bench_core.py [--quick] [--only NAME ...]``. Benchmarks report,
they do not gate: the exit status is 0 whatever the results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble_launcher import EnsembleLauncher, Task

NCORES = len(os.sched_getaffinity(0))
BENCHMARKS = ("callables", "shell", "sleep", "flatness", "lazy", "latency")


@dataclass(frozen=True)
class Sizes:
    callables: int = 10_000
    callable_rounds: int = 3
    shell: int = 2_000
    shell_rounds: int = 2
    sleeps: int = 200
    sleep_seconds: float = 0.1
    flat_small: int = 10_000
    flat_large: int = 100_000
    flat_dict: bool = True
    lazy_side: int = 1_000
    latency_rounds: int = 5


QUICK = Sizes(callables=2_000, callable_rounds=1, shell=200, shell_rounds=1, sleeps=20,
              flat_small=2_000, flat_large=20_000, flat_dict=False, lazy_side=300,
              latency_rounds=3)


@dataclass(frozen=True)
class Row:
    name: str
    ours: str
    baseline: str
    ratio: float | None
    goal: str
    passed: bool


def noop() -> None:
    return None


# -- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="el-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def launcher_seconds(make_ensemble: Callable[[], object], expected: int) -> float:
    ensemble = make_ensemble()
    with scratch_dir() as tmp:
        start = time.perf_counter()
        results = EnsembleLauncher(ensemble, out_dir=tmp / "run").run()
        elapsed = time.perf_counter() - start
        counts = results.counts()
    if counts.get("succeeded", 0) != expected:
        raise RuntimeError(f"expected {expected} successes, got {counts}")
    return elapsed


def noop_task_dict(n: int) -> dict[str, Task]:
    return {f"noop-{i}": Task(task_id=f"noop-{i}", executable=noop) for i in range(n)}


def noop_task_gen(n: int) -> Iterator[Task]:
    return (Task(task_id=f"noop-{i}", executable=noop) for i in range(n))


def shell_seconds(script: str) -> float:
    return timed(lambda: subprocess.run(script, shell=True, check=True))


def child_json(*args: str) -> dict:
    argv = ["sh", "-c", '"$@"; exit $?', "sh", sys.executable, __file__, *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def high_water_kb() -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def mb(kb: float) -> float:
    return kb / 1024


def say(text: str) -> None:
    print(text, flush=True)


# -- 1. no-op callables ----------------------------------------------------------------------


def pool_executor_seconds(n: int) -> float:
    def work() -> None:
        with ProcessPoolExecutor(max_workers=NCORES) as pool:
            futures = [pool.submit(noop) for _ in range(n)]
            for future in futures:
                future.result()

    return timed(work)


def median_rates(n: int, rounds: int, ours: Callable[[], float],
                 base: Callable[[], float]) -> tuple[float, float, float]:
    """Alternate rounds of ours and the baseline; return both median rates and their ratio."""
    ours_s, base_s = [], []
    for _ in range(rounds):
        ours_s.append(ours())
        base_s.append(base())
    ours_rate, base_rate = n / statistics.median(ours_s), n / statistics.median(base_s)
    return ours_rate, base_rate, ours_rate / base_rate


def bench_callables(sizes: Sizes) -> list[Row]:
    n = sizes.callables
    ours_rate, base_rate, ratio = median_rates(
        n, sizes.callable_rounds, lambda: launcher_seconds(lambda: noop_task_dict(n), n),
        lambda: pool_executor_seconds(n))
    say(f"[callables] {n} no-ops: ours {ours_rate:,.0f}/s, ProcessPoolExecutor({NCORES}) "
        f"{base_rate:,.0f}/s, ratio {ratio:.2f}")
    return [Row(f"{n} no-op callables (tasks/s)", f"{ours_rate:,.0f}", f"{base_rate:,.0f}",
                ratio, "ratio >= 1.0", ratio >= 1.0)]


# -- 2. shell true ---------------------------------------------------------------------------


def true_ensemble(n: int) -> dict:
    return {"ensembles": {"true": {"cmd_template": "true {i}", "i": f"range({n})"}}}


def bench_shell(sizes: Sizes) -> list[Row]:
    n = sizes.shell
    ours_rate, base_rate, ratio = median_rates(
        n, sizes.shell_rounds, lambda: launcher_seconds(lambda: true_ensemble(n), n),
        lambda: shell_seconds(f"seq {n} | xargs -P{NCORES} -n1 true"))
    say(f"[shell] {n} x true: ours {ours_rate:,.0f}/s, xargs -P{NCORES} {base_rate:,.0f}/s, "
        f"ratio {ratio:.2f}")
    return [Row(f"{n} shell true (tasks/s)", f"{ours_rate:,.0f}", f"{base_rate:,.0f}",
                ratio, "ratio >= 0.9", ratio >= 0.9)]


# -- 3. sleep efficiency ---------------------------------------------------------------------


def sleep_tasks(n: int, seconds: float) -> dict[str, Task]:
    return {f"sleep-{i}": Task(task_id=f"sleep-{i}", executable=f"sleep {seconds}")
            for i in range(n)}


def bench_sleep(sizes: Sizes) -> list[Row]:
    n, seconds = sizes.sleeps, sizes.sleep_seconds
    ideal = n * seconds / NCORES
    ours = ideal / launcher_seconds(lambda: sleep_tasks(n, seconds), n)
    base = ideal / shell_seconds(f"yes {seconds} | head -n {n} | xargs -P{NCORES} -n1 sleep")
    say(f"[sleep] {n} x sleep {seconds} on {NCORES} cores (ideal {ideal:.1f} s): "
        f"efficiency ours {ours:.3f}, xargs {base:.3f}")
    return [Row(f"{n} x sleep {seconds} efficiency", f"{ours:.3f}", f"{base:.3f}",
                ours / base, "ours >= 0.97", ours >= 0.97)]


# -- 4. flatness and peak RSS ------------------------------------------------------------------


def child_callables(n: int, variant: str) -> dict:
    before = max_rss_kb()
    if variant == "dict":
        tasks: object = noop_task_dict(n)
        start = time.perf_counter()
    else:
        start = time.perf_counter()
        tasks = noop_task_gen(n)
    with scratch_dir() as tmp:
        counts = EnsembleLauncher(tasks, out_dir=tmp / "run").run().counts()
        elapsed = time.perf_counter() - start
    return {"n": n, "seconds": elapsed, "succeeded": counts.get("succeeded", 0),
            "rss_before_kb": before, "max_rss_kb": max_rss_kb(), "hwm_kb": high_water_kb()}


def run_child_callables(n: int, variant: str) -> dict:
    result = child_json("--child-callables", str(n), variant)
    if result["succeeded"] != n:
        raise RuntimeError(f"child {variant} run: {result['succeeded']} of {n} succeeded")
    return result


def rss_row(label: str, result: dict) -> Row:
    peak, idle = mb(result["max_rss_kb"]), mb(result["rss_before_kb"])
    say(f"[flatness] {label}: peak RSS {peak:.0f} MB (idle process {idle:.0f} MB; "
        f"VmHWM {hwm_text(result)})")
    return Row(label, f"{peak:.0f} MB", f"{idle:.0f} MB", peak / idle, "ours < 300 MB",
               peak < 300)


def hwm_text(result: dict) -> str:
    return "n/a" if result["hwm_kb"] is None else f"{mb(result['hwm_kb']):.0f} MB"


def bench_flatness(sizes: Sizes) -> list[Row]:
    small = run_child_callables(sizes.flat_small, "gen")
    large = run_child_callables(sizes.flat_large, "gen")
    small_rate = small["n"] / small["seconds"]
    large_rate = large["n"] / large["seconds"]
    ratio = large_rate / small_rate
    say(f"[flatness] generator: {large['n']} at {large_rate:,.0f}/s vs {small['n']} at "
        f"{small_rate:,.0f}/s, ratio {ratio:.2f}")
    rows = [Row(f"{large['n'] // 1000}k vs {small['n'] // 1000}k rate (tasks/s)",
                f"{large_rate:,.0f}", f"{small_rate:,.0f}", ratio, "ratio >= 0.8",
                ratio >= 0.8),
            rss_row(f"peak RSS, {large['n'] // 1000}k from a generator", large)]
    if sizes.flat_dict:
        as_dict = run_child_callables(sizes.flat_large, "dict")
        say(f"[flatness] dict of Task: {as_dict['n']} at "
            f"{as_dict['n'] / as_dict['seconds']:,.0f}/s")
        rows.append(rss_row(f"peak RSS, {as_dict['n'] // 1000}k dict of Task", as_dict))
    return rows


# -- 5. lazy expansion -------------------------------------------------------------------------


def grid_ensemble(side: int) -> dict:
    return {"ensembles": {"grid": {"cmd_template": "true {a} {b}", "a": f"range({side})",
                                   "b": f"range({side})", "relation": "many-to-many"}}}


def child_lazy(side: int) -> dict:
    with scratch_dir() as tmp:
        tasks = EnsembleLauncher(grid_ensemble(side), out_dir=tmp / "run").tasks
        before = max_rss_kb()
        start = time.perf_counter()
        count = sum(1 for _ in tasks)
        elapsed = time.perf_counter() - start
    return {"count": count, "seconds": elapsed, "rss_before_kb": before,
            "max_rss_kb": max_rss_kb(), "hwm_kb": high_water_kb()}


def bench_lazy(sizes: Sizes) -> list[Row]:
    side = sizes.lazy_side
    result = child_json("--child-lazy", str(side))
    if result["count"] != side * side:
        raise RuntimeError(f"iterated {result['count']} tasks, expected {side * side}")
    before, after = mb(result["rss_before_kb"]), mb(result["max_rss_kb"])
    extra = after - before
    say(f"[lazy] {result['count']:,} tasks iterated in {result['seconds']:.1f} s: "
        f"peak RSS {before:.0f} -> {after:.0f} MB (+{extra:.1f} MB; VmHWM {hwm_text(result)})")
    return [Row(f"extra RSS iterating {side}x{side} tasks", f"+{extra:.1f} MB",
                f"{before:.0f} MB", after / before, "extra < 100 MB", extra < 100)]


# -- 6. start latency --------------------------------------------------------------------------


def el_command() -> list[str]:
    beside = Path(sys.executable).parent / "el"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    on_path = shutil.which("el")
    if on_path:
        return [on_path]
    return [sys.executable, "-m", "ensemble_launcher.cli"]


def first_stamp_latency(argv: list[str], stamp: Path) -> float:
    stamp.unlink(missing_ok=True)
    start = time.time()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return float(stamp.read_text().strip()) - start


def el_latency(el: list[str], tmp: Path, round_index: int) -> float:
    stamp = tmp / "stamp"
    ensemble = tmp / f"latency-{round_index}.json"
    ensemble.write_text(json.dumps(
        {"ensembles": {"stamp": {"cmd_template": f"date +%s.%N > {stamp}"}}}))
    argv = [*el, "run", str(ensemble), "--out", str(tmp / f"run-{round_index}"),
            "--no-progress"]
    return first_stamp_latency(argv, stamp)


def sh_latency(tmp: Path) -> float:
    stamp = tmp / "stamp"
    return first_stamp_latency(["sh", "-c", f"date +%s.%N > {stamp}"], stamp)


def bench_latency(sizes: Sizes) -> list[Row]:
    el = el_command()
    with scratch_dir() as tmp:
        ours = statistics.median(el_latency(el, tmp, i) for i in range(sizes.latency_rounds))
        base = statistics.median(sh_latency(tmp) for _ in range(sizes.latency_rounds))
    say(f"[latency] {' '.join(el)} run -> first task: {ours * 1000:.0f} ms; sh -c: "
        f"{base * 1000:.1f} ms; difference {(ours - base) * 1000:.0f} ms")
    return [Row("start latency, el run -> first task", f"{ours * 1000:.0f} ms",
                f"{base * 1000:.1f} ms", ours / base, "ours <= 100 ms", ours <= 0.1)]


# -- driver ------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Sizes], list[Row]]] = {
    "callables": bench_callables, "shell": bench_shell, "sleep": bench_sleep,
    "flatness": bench_flatness, "lazy": bench_lazy, "latency": bench_latency,
}


def print_summary(rows: list[Row]) -> None:
    header = ("benchmark", "ours", "baseline", "ratio", "goal", "result")
    table = [header, *((r.name, r.ours, r.baseline,
                        "-" if r.ratio is None else f"{r.ratio:.3f}", r.goal,
                        "PASS" if r.passed else "MISS") for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    say("")
    for index, line in enumerate(table):
        say("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            say("  ".join("-" * width for width in widths))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke runs")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--child-callables", nargs=2, metavar=("N", "VARIANT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--child-lazy", type=int, metavar="SIDE", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def sizes_from(args: Any, default: Any, quick: Any) -> Any:
    """The sizes a run of a benchmark script uses: its defaults (or its quick ones with
    ``--quick``), with each size given on the command line in their place."""
    sizes = quick if args.quick else default
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(sizes)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(sizes, **given)


def run_benchmarks(kind: str, names: Sequence[str],
                   runners: dict[str, Callable[[Any], list[Row]]], sizes: Any,
                   quick: bool) -> int:
    """Run every named benchmark and print the summary; one that breaks is an error row,
    not the end. The exit status: 0 (benchmarks report, they do not gate)."""
    say(f"ensemble_launcher {kind} benchmarks: {NCORES} cores, Python "
        f"{sys.version.split()[0]}{', quick' if quick else ''}")
    started = time.perf_counter()
    rows: list[Row] = []
    for name in names:
        try:
            rows.extend(runners[name](sizes))
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the rest
            say(f"[{name}] ERROR: {type(exc).__name__}: {exc}")
            rows.append(Row(name, "error", "-", None, "-", False))
    print_summary(rows)
    say(f"\ntotal {time.perf_counter() - started:.0f} s; benchmarks report, they do not gate")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child_callables:
        print(json.dumps(child_callables(int(args.child_callables[0]),
                                         args.child_callables[1])))
        return 0
    if args.child_lazy:
        print(json.dumps(child_lazy(args.child_lazy)))
        return 0
    sizes = QUICK if args.quick else Sizes()
    return run_benchmarks("core", args.only or BENCHMARKS, RUNNERS, sizes, args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
