"""Provider benchmarks of ensemble_launcher (issue 13) on the Slurm test cluster, each
against a baseline in the same run.

Everything runs on one test cluster of three 2-CPU hosts that this script starts from
tests/cluster (root only). The provider's root is ``el run FILE --launcher-config
provider.json`` on this machine, the login host, outside any allocation; its blocks'
workers connect back to the bridge address. Between two measurements the queue is empty.

1. first_task  seconds from starting ``el run`` with a provider (init_blocks=1) to the
               start of its one task on a fresh block: the journal's first start_time
               minus the time just before the launch; median of R rounds. Baselines, in
               the same rounds: ``sbatch -N1`` of a script running ``el run`` on the same
               one-task ensemble in the job (sbatch to the task's start), and of a bare
               script stamping ``date +%s.%N`` (sbatch to the job's first command: the
               scheduler's own part). Reported, no goal.
2. throughput  N commands of S s (default 360 x 0.5 s, 30 s of work for the 6 CPUs) over
               3 one-node blocks (init_blocks = max_blocks = 3) vs one ``sbatch -N3`` job
               running ``el run`` with nlevels=1 on the same ensemble. Throughput: tasks /
               (last end - first start) in each run's journal; goal >= 0.9x. Beside it, the
               makespan rate: tasks / (last end - launch), which adds what each way takes
               to start (submission, scheduling, workers connecting). Rounds alternate.

Usage: ``python bench/bench_providers.py [--quick] [--only first_task|throughput]
[--tasks N] [--seconds S] [--rounds R]``, as root. Benchmarks report, they do not gate:
the exit status is 0 whatever the results (1 when the test cluster cannot start here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_core import Row, run_benchmarks, say, sizes_from

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cluster import Cluster, missing_requirements  # noqa: E402

from ensemble_launcher.store import Results  # noqa: E402

EL = [sys.executable, "-m", "ensemble_launcher.cli"]
BENCHMARKS = ("first_task", "throughput")
JOB_TIMEOUT = 600.0
QUEUE_CLEAR_SECONDS = 30.0


@dataclass(frozen=True)
class Sizes:
    tasks: int = 360
    seconds: float = 0.5
    rounds: int = 2
    latency_rounds: int = 3


QUICK = Sizes(tasks=60, seconds=0.2, rounds=1, latency_rounds=1)


@dataclass(frozen=True)
class Span:
    """When one run was launched, and its tasks' first start and last end (time.time())."""

    tasks: int
    launched: float
    first_start: float
    last_end: float

    @property
    def rate(self) -> float:
        """Tasks per second while the ensemble ran."""
        return self.tasks / (self.last_end - self.first_start)

    @property
    def makespan_rate(self) -> float:
        """Tasks per second from the launch to the last task's end."""
        return self.tasks / (self.last_end - self.launched)

    @property
    def to_first_start(self) -> float:
        return self.first_start - self.launched


# -- runs --------------------------------------------------------------------------------


def write_files(work: Path, tasks: int, seconds: float, launcher: dict) -> None:
    work.mkdir(parents=True)
    (work / "ensemble.json").write_text(json.dumps({"ensembles": {"t": {
        "cmd_template": f"sleep {seconds} # {{i}}", "i": f"range({tasks})"}}}))
    (work / "launcher.json").write_text(json.dumps(launcher))


def el_run_argv(work: Path) -> list[str]:
    return [*EL, "run", str(work / "ensemble.json"), "--launcher-config",
            str(work / "launcher.json"), "--out", str(work / "run"), "--no-progress"]


def span_of(work: Path, launched: float, tasks: int) -> Span:
    """The run's span from its journal; an error unless every task succeeded."""
    results = Results(work / "run")
    counts = results.counts()
    if counts != {"succeeded": tasks}:
        raise RuntimeError(f"{work / 'run'}: expected {tasks} successes, got {counts}")
    rows = [r for _, r in results.items()]
    return Span(tasks, launched, min(r.start_time for r in rows), max(r.end_time for r in rows))


def provider_run(cluster: Cluster, work: Path, tasks: int, seconds: float,
                 blocks: int) -> Span:
    """``el run`` here, on the login host, with ``blocks`` one-node Slurm blocks."""
    write_files(work, tasks, seconds, {"provider": {
        "name": "slurm", "address": cluster.bridge_address, "walltime": "00:10:00",
        "init_blocks": blocks, "max_blocks": blocks, "nodes_per_block": 1}})
    launched = time.time()
    done = subprocess.run(el_run_argv(work), cwd=work, env=cluster.client_env(),
                          capture_output=True, text=True, timeout=JOB_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"el run with the provider exited {done.returncode}: "
                           f"{done.stderr.strip()[-1500:]}")
    wait_until_queue_empty(cluster)
    return span_of(work, launched, tasks)


def job_run(cluster: Cluster, work: Path, tasks: int, seconds: float, nodes: int) -> Span:
    """One ``sbatch -N<nodes>`` job whose script runs ``el run`` (nlevels=1 on more than
    one node)."""
    write_files(work, tasks, seconds, {"nlevels": 1} if nodes > 1 else {})
    script = f"#!/bin/sh\ncd {work}\nexec {' '.join(el_run_argv(work))}\n"
    launched = time.time()
    job = cluster.sbatch(script, nodes=nodes, timeout=JOB_TIMEOUT, cwd=work)
    if (job.state, job.exit_code) != ("COMPLETED", 0):
        raise RuntimeError(f"job {job.job_id} {job.state} (exit {job.exit_code}): "
                           f"{job.stderr.strip()[-1500:]}")
    wait_until_queue_empty(cluster)
    return span_of(work, launched, tasks)


def bare_job_seconds(cluster: Cluster, work: Path) -> float:
    """sbatch to the first command of a one-node job's script."""
    work.mkdir(parents=True)
    stamp = work / "stamp"
    launched = time.time()
    job = cluster.sbatch(f"date +%s.%N > {stamp}\n", nodes=1, timeout=JOB_TIMEOUT, cwd=work)
    if job.state != "COMPLETED":
        raise RuntimeError(f"job {job.job_id} {job.state}: {job.stderr.strip()[-1500:]}")
    wait_until_queue_empty(cluster)
    return float(stamp.read_text()) - launched


def wait_until_queue_empty(cluster: Cluster) -> None:
    deadline = time.monotonic() + QUEUE_CLEAR_SECONDS
    while cluster.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs still queued {QUEUE_CLEAR_SECONDS:.0f} s after a run")
        time.sleep(0.2)


# -- 1. launch to the first task on a fresh block ------------------------------------------


def bench_first_task(cluster: Cluster, sizes: Sizes) -> list[Row]:
    ours, in_job, bare = [], [], []
    for r in range(sizes.latency_rounds):
        root = cluster.run_dir / f"first-{r}"
        ours.append(provider_run(cluster, root / "provider", 1, 0, 1).to_first_start)
        in_job.append(job_run(cluster, root / "job", 1, 0, 1).to_first_start)
        bare.append(bare_job_seconds(cluster, root / "bare"))
    mine, job, floor = (statistics.median(v) for v in (ours, in_job, bare))
    say(f"[first_task] el run on the login host to the first task on a fresh block: median "
        f"{mine:.2f} s of {len(ours)} ({', '.join(f'{s:.2f}' for s in ours)}); sbatch of a "
        f"job running el run to its task: {job:.2f} s, ratio {mine / job:.2f}; sbatch to a "
        f"bare job's first command (Slurm's part): {floor:.2f} s")
    return [Row("el run (provider) to first task on a fresh block", f"{mine:.2f} s",
                f"{job:.2f} s", mine / job, "report (baseline: sbatch + el run in the job)",
                True),
            Row("sbatch to a bare job's first command (Slurm's part)", f"{floor:.2f} s", "-",
                None, "report", True)]


# -- 2. three one-node blocks vs one three-node job ----------------------------------------


def bench_throughput(cluster: Cluster, sizes: Sizes) -> list[Row]:
    n, seconds = sizes.tasks, sizes.seconds
    ours, base = [], []
    for r in range(sizes.rounds):
        root = cluster.run_dir / f"throughput-{r}"
        runs = [("blocks", lambda w: provider_run(cluster, w, n, seconds, 3)),
                ("job", lambda w: job_run(cluster, w, n, seconds, 3))]
        for name, runner in runs if r % 2 == 0 else reversed(runs):
            (ours if name == "blocks" else base).append(runner(root / name))
    rate, base_rate = median_of(ours, "rate"), median_of(base, "rate")
    made, base_made = median_of(ours, "makespan_rate"), median_of(base, "makespan_rate")
    ideal = 3 * 2 / seconds
    say(f"[throughput] {n} x sleep {seconds} on 3 hosts x 2 CPUs (ideal {ideal:.1f}/s): 3 "
        f"one-node blocks {rate:.2f}/s, one sbatch -N3 job running el run {base_rate:.2f}/s, "
        f"ratio {rate / base_rate:.3f} (first start to last end)")
    say(f"[throughput] launch to last end: blocks {made:.2f}/s, job {base_made:.2f}/s, ratio "
        f"{made / base_made:.3f}; seconds to the first task: blocks "
        f"{statistics.median(s.to_first_start for s in ours):.2f}, job "
        f"{statistics.median(s.to_first_start for s in base):.2f}")
    return [Row(f"{n} x {seconds} s, 3 blocks vs sbatch -N3 (tasks/s)", f"{rate:.2f}",
                f"{base_rate:.2f}", rate / base_rate, "ratio >= 0.9", rate / base_rate >= 0.9),
            Row(f"{n} x {seconds} s, launch to last end (tasks/s)", f"{made:.2f}",
                f"{base_made:.2f}", made / base_made, "report", True)]


def median_of(spans: list[Span], rate: str) -> float:
    return statistics.median(getattr(span, rate) for span in spans)


# -- driver ------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke runs")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--tasks", type=int, help="commands of the throughput run (360)")
    parser.add_argument("--seconds", type=float, help="seconds each command sleeps (0.5)")
    parser.add_argument("--rounds", type=int, help="rounds of the throughput run (2)")
    parser.add_argument("--latency-rounds", type=int, help="rounds of first_task (3)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    problems = missing_requirements()
    if problems:
        say("cannot start the test cluster: " + "; ".join(problems))
        return 1
    sizes = sizes_from(args, Sizes(), QUICK)
    with Cluster() as cluster:
        runners: dict[str, Callable[[Sizes], list[Row]]] = {
            "first_task": lambda s: bench_first_task(cluster, s),
            "throughput": lambda s: bench_throughput(cluster, s)}
        return run_benchmarks("provider", args.only or BENCHMARKS, runners, sizes, args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
