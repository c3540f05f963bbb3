"""The cost of event rules: the same run with 20 rules evaluated on every event, and
without rules, in the same process, alternating.

1. rules   N short tasks (default 100,000 no-op callables, one group) through
           ``EnsembleLauncher.run()`` at nlevels=0 on this node. Ours: the run steered by
           20 rules that watch every event of the group and never act: 8 metric rules on
           its counts, 6 on its duration and pending statistics (iqr and mad included), 6
           job rules on the triggers its tasks pass (depend, sched, run, finish, success,
           cleanup) that name another group. Baseline: the same run without rules. Median
           wall time of R rounds each (default 5: on 2 shared cores single rounds vary
           by 10%); goal: at most 10% slower.

Usage: ``python bench/bench_rules.py [--quick] [--tasks N] [--rounds R]``. Benchmarks
report, they do not gate: the exit status is 0 whatever the results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_core import NCORES, Row, noop, run_benchmarks, say, sizes_from

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.rules import Group, Rule, Steering
from ensemble_launcher.monitor.progress import Reporter

BENCHMARKS = ("rules",)
GOAL = 1.10


@dataclass(frozen=True)
class Sizes:
    tasks: int = 100_000
    rounds: int = 5


QUICK = Sizes(tasks=2_000, rounds=1)


def _idle_group() -> Group:
    """A group the job rules name: it is never submitted."""
    return Group("idle", 0, lambda count, submission: [])


TWENTY_RULES = [
    *({"trigger": "metric", "name": f"count.work.{key}", "when": when,
       "action": {"name": "terminate"}}
      for key, when in [("submitted", "> 1e9"), ("pending", "> 1e9"), ("running", "> 1e6"),
                        ("finished", "< 0"), ("success", "> 1e9"), ("failed", ">= 1"),
                        ("cancelled", ">= 1"), ("success", "== -1")]),
    *({"trigger": "metric", "name": name, "when": "> 1e6", "action": {"name": "terminate"}}
      for name in ["mean.work-duration", "max.work-duration", "variance.work-duration",
                   "iqr.work-duration", "mad.work-duration", "mean.work-pending"]),
    *({"trigger": trigger, "name": "idle", "action": {"name": "terminate"}}
      for trigger in ["job-depend", "job-sched", "job-run", "job-finish", "job-success",
                      "job-cleanup"]),
]


def run_seconds(n: int, steered: bool) -> float:
    tasks = (Task(task_id=f"work-{i}", executable=noop, ensemble="work") for i in range(n))
    with tempfile.TemporaryDirectory() as tmp:
        launcher = EnsembleLauncher(tasks, SystemConfig(name="local", ncpus=NCORES),
                                    LauncherConfig(nlevels=0), out_dir=Path(tmp) / "run",
                                    reporter=Reporter())
        if steered:
            launcher.tasks.steering = Steering(
                rules=[Rule(item) for item in TWENTY_RULES], groups={"idle": _idle_group()},
                held=frozenset({"idle"}))
        start = time.perf_counter()
        results = launcher.run()
        seconds = time.perf_counter() - start
        done = results.counts().get("succeeded", 0)
        if done != n:
            raise RuntimeError(f"{done} of {n} tasks succeeded")
    return seconds


def bench_rules(sizes: Sizes) -> list[Row]:
    n = sizes.tasks
    run_seconds(min(n, 2_000), True)
    ours, plain = [], []
    for _ in range(sizes.rounds):
        plain.append(run_seconds(n, False))
        ours.append(run_seconds(n, True))
    ours_s, plain_s = statistics.median(ours), statistics.median(plain)
    ratio = ours_s / plain_s
    say(f"[rules] {n} no-op callables, median of {sizes.rounds}: 20 rules {ours_s:.2f} s "
        f"({n / ours_s:,.0f} tasks/s), no rules {plain_s:.2f} s ({n / plain_s:,.0f} tasks/s)"
        f", ratio {ratio:.3f}, {(ours_s - plain_s) / n * 1e6:.2f} us per task")
    return [Row(f"{n} tasks, 20 rules vs none (wall, median)", f"{ours_s:.2f} s",
                f"{plain_s:.2f} s", ratio, f"<= {GOAL:.2f}x", ratio <= GOAL)]


RUNNERS = {"rules": bench_rules}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, one round")
    parser.add_argument("--tasks", type=int, help="tasks per run (100,000)")
    parser.add_argument("--rounds", type=int, help="rounds of each side (5)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return run_benchmarks("rules", BENCHMARKS, RUNNERS, sizes_from(args, Sizes(), QUICK),
                          args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
