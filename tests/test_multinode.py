"""The tree across real hosts: network namespaces running slurmd, real srun and mpiexec,
ZMQ over TCP between hosts (see tests/cluster)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

EL = [sys.executable, "-m", "ensemble_launcher.cli"]
WHERE = "sh -c 'sleep 0.02; echo $(hostname) $(hostname -I) {i}'"


def write_run_files(work: Path, ntasks: int, **launcher_config) -> None:
    work.mkdir(exist_ok=True)
    (work / "ensemble.json").write_text(json.dumps(
        {"ensembles": {"where": {"cmd_template": WHERE, "i": f"range({ntasks})"}}}))
    (work / "launcher.json").write_text(json.dumps(
        {"master_logs": True, "worker_logs": True, **launcher_config}))


def el_run_argv(work: Path) -> list[str]:
    return [*EL, "run", "ensemble.json", "--launcher-config", "launcher.json", "--out",
            str(work / "run"), "--json", str(work / "results.json"), "--return-stdout"]


def batch_script(work: Path) -> str:
    return f"#!/bin/sh\ncd {work}\n{' '.join(el_run_argv(work))}\necho \"el exit $?\"\n"


def check_every_task_ran_where_recorded(cluster, work: Path, ntasks: int) -> Counter:
    results = json.loads((work / "results.json").read_text())
    assert len(results) == ntasks
    assert Counter(r["state"] for r in results.values()) == {"succeeded": ntasks}
    for result in results.values():
        hostname, address, _ = result["stdout"].split()
        assert hostname == result["host"]
        assert address == cluster.addresses[result["host"]]
    hosts = Counter(r["host"] for r in results.values())
    assert set(hosts) == set(cluster.hosts), f"not every host ran tasks: {hosts}"
    return hosts


def test_sbatch_three_nodes_runs_the_sweep_on_every_host(cluster):
    work = cluster.run_dir / "work"
    write_run_files(work, 300)
    job = cluster.sbatch(batch_script(work), nodes=3, timeout=180)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), job.stdout + job.stderr
    assert "el exit 0" in job.stdout
    check_every_task_ran_where_recorded(cluster, work, 300)
    logs = {p.name for p in (work / "run" / "logs").iterdir()}
    assert {"worker-main.w0.log", "worker-main.w1.log", "worker-main.w2.log"} <= logs


def hydra_args(cluster) -> list[str]:
    return ["-launcher", "ssh", "-launcher-exec", cluster.rsh, "-iface", "eth0"]


def test_mpiexec_places_workers_from_a_pbs_nodefile(cluster):
    work = cluster.run_dir / "work"
    write_run_files(work, 300, child_launcher="mpiexec", child_launcher_args=hydra_args(cluster))
    (work / "nodes").write_text("".join(f"{h}\n{h}\n" for h in cluster.hosts))
    out = cluster.run_on(cluster.hosts[0], el_run_argv(work), cwd=work, capture_output=True,
                         text=True, timeout=180,
                         env=cluster.client_env({"PBS_NODEFILE": str(work / "nodes")}))
    assert out.returncode == 0, out.stderr
    check_every_task_ran_where_recorded(cluster, work, 300)
    launch_log = (work / "run" / "logs" / "master-main.log").read_text()
    assert "with mpiexec" in launch_log


def test_two_levels_put_sub_masters_on_other_hosts(cluster):
    work = cluster.run_dir / "work"
    write_run_files(work, 300, nlevels=2, nchildren=2)
    job = cluster.sbatch(batch_script(work), nodes=3, timeout=180)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), job.stdout + job.stderr
    check_every_task_ran_where_recorded(cluster, work, 300)
    logs = work / "run" / "logs"
    first, _, third = cluster.hosts
    assert f"main.m0@{first}" in (logs / "master-main.m0.log").read_text()
    assert f"main.m1@{third}" in (logs / "master-main.m1.log").read_text()
    assert f"main.m1.w0@{third}" in (logs / "worker-main.m1.w0.log").read_text()
    root_log = (logs / "master-main.log").read_text()
    assert f"main.m1 connected from {third}" in root_log


def test_a_node_name_that_does_not_resolve_is_a_clear_error(cluster):
    work = cluster.run_dir / "work"
    write_run_files(work, 10)
    (work / "nodes").write_text(f"{cluster.hosts[0]}\nno-such-node.invalid\n")
    start = time.monotonic()
    out = cluster.run_on(cluster.hosts[0], el_run_argv(work), cwd=work, capture_output=True,
                         text=True, timeout=120,
                         env=cluster.client_env({"PBS_NODEFILE": str(work / "nodes")}))
    assert out.returncode == 2
    assert "no-such-node.invalid" in out.stderr and "does not resolve" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - start < 60
    assert not (work / "run").exists()


def submit_and_wait_for_script(cluster, work: Path, timeout: float) -> str:
    """sbatch, then wait for the script's last line: a job with an unreachable node stays
    COMPLETING in Slurm long after its script has ended. On a timeout, ``el`` is asked for
    its stack (SIGUSR1), which lands in the job's output."""
    script, out = work / "job.sh", work / "job.out"
    script.write_text(batch_script(work))
    submitted = cluster.run(["sbatch", "--parsable", "--nodes=3", f"--output={out}",
                             str(script)], cwd=work, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and "el exit" in out.read_text():
            return out.read_text()
        time.sleep(0.2)
    subprocess.run(["pkill", "-USR1", "-f", "ensemble_launcher.cli run"], check=False)
    time.sleep(1)
    log = work / "run" / "logs" / "master-main.log"
    raise AssertionError(f"the batch script did not finish within {timeout} s:\n"
                         f"{out.read_text() if out.exists() else ''}\n"
                         f"{log.read_text()[-4000:] if log.exists() else '(no master log)'}")


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_a_host_that_does_not_answer_is_a_clear_error_in_bounded_time(cluster, launcher):
    """The other hosts may have run tasks by then: el exits 4 (the run could not go on,
    resume continues), not 2 (bad input, nothing ran)."""
    work = cluster.run_dir / "work"
    extra = {"child_launcher_args": hydra_args(cluster)} if launcher == "mpiexec" else {}
    write_run_files(work, 10, child_launcher=launcher, child_start_timeout=15, **extra)
    silent = cluster.hosts[2]
    cluster.cut_link(silent)
    if launcher == "srun":
        output = submit_and_wait_for_script(cluster, work, timeout=120)
        assert "el exit 4" in output
    else:
        (work / "nodes").write_text("".join(f"{h}\n" for h in cluster.hosts))
        out = cluster.run_on(cluster.hosts[0], el_run_argv(work), cwd=work,
                             capture_output=True, text=True, timeout=180,
                             env=cluster.client_env({"PBS_NODEFILE": str(work / "nodes")}))
        output = out.stdout + out.stderr
        assert out.returncode == 4
    assert "el: error:" in output and "Traceback" not in output
    assert silent in output
    assert "did not connect within 15 s" in output or "did not start" in output


def _appending_work(work: Path, ntasks: int, seconds: float, **launcher_config) -> Path:
    work.mkdir(exist_ok=True)
    log = work / "ran.txt"
    (work / "ensemble.json").write_text(json.dumps({"ensembles": {"work": {
        "cmd_template": f"sh -c 'sleep {seconds}; echo work-{{i}} $(hostname) >> {log}'",
        "i": f"range({ntasks})"}}}))
    (work / "launcher.json").write_text(json.dumps(
        {"master_logs": True, "worker_logs": True, "heartbeat_interval": 0.5,
         **launcher_config}))
    return log


def _ran(log: Path) -> Counter:
    return Counter(line.split()[0] for line in log.read_text().splitlines()) \
        if log.exists() else Counter()


def _start_root(cluster, work: Path):
    (work / "nodes").write_text("".join(f"{h}\n" for h in cluster.hosts))
    (work / "launcher.json").write_text(json.dumps({
        **json.loads((work / "launcher.json").read_text()),
        "child_launcher": "mpiexec", "child_launcher_args": hydra_args(cluster)}))
    return cluster.popen_on(cluster.hosts[0], el_run_argv(work), cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cluster.client_env({"PBS_NODEFILE": str(work / "nodes")}))


def _wait_until_running_on(log: Path, host: str, minimum: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and sum(host in line for line in log.read_text().splitlines()) >= \
                minimum:
            return
        time.sleep(0.05)
    raise AssertionError(f"{host} did not run {minimum} tasks within {timeout} s")


def _lost_attempts(work: Path, host: str) -> list:
    from ensemble_launcher.store import Results

    results = Results(work / "run")
    return [a for tid in results for a in results.attempts(tid)
            if a.state == "lost" and a.host == host]


def _strike_mid_run(cluster, victim: str, strike) -> tuple[Path, Path, dict]:
    """Run 90 appending tasks on the 3 hosts, ``strike(victim)`` once it has run two, and
    check that the run still completes with every task done: (work, log, results)."""
    work = cluster.run_dir / "work"
    log = _appending_work(work, 90, 0.5)
    root = _start_root(cluster, work)
    _wait_until_running_on(log, victim, 2)
    strike(victim)
    _, err = root.communicate(timeout=180)
    assert root.returncode == 0, err
    results = json.loads((work / "results.json").read_text())
    assert Counter(r["state"] for r in results.values()) == {"succeeded": 90}
    assert set(_ran(log)) == {f"work-{i}" for i in range(90)}
    return work, log, results


def test_a_crashed_host_has_its_tasks_rerun_elsewhere(cluster):
    victim = cluster.hosts[2]
    work, log, results = _strike_mid_run(cluster, victim, cluster.kill_host)
    assert max(_ran(log).values()) == 1, "a killed task never appends, so nothing ran twice"
    lost = _lost_attempts(work, victim)
    assert lost and all(a.reason == "node_lost" for a in lost)
    assert all(results[a.task_id]["host"] != victim for a in lost)


def test_a_partitioned_host_is_detected_within_three_heartbeats(cluster):
    victim = cluster.hosts[1]
    cut_at: list[float] = []

    def cut(host: str) -> None:
        cut_at.append(time.time())
        cluster.cut_link(host)

    work, _, _ = _strike_mid_run(cluster, victim, cut)
    lost = _lost_attempts(work, victim)
    assert lost
    detected = min(a.end_time for a in lost) - cut_at[0]
    assert detected < 3 * 0.5 + 0.5, f"detected {detected:.2f} s after the cut"
    assert "no heartbeat" in lost[0].exception


KILL_RUNNER_JOB = '''
import socket, sys, time
from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig
from ensemble_launcher.ensemble import Task

LOG = sys.argv[1]


def append(i):
    time.sleep(0.3)
    with open(LOG, "a") as f:
        f.write(f"t{i} {socket.gethostname()}\\n")
    return i


if __name__ == "__main__":
    tasks = {f"t{i}": Task(task_id=f"t{i}", executable=append, args=(i,)) for i in range(90)}
    config = LauncherConfig(nlevels=1, retries=1, child_launcher="mpiexec",
                            child_launcher_args=sys.argv[2:])
    EnsembleLauncher(tasks, launcher_config=config, out_dir="run").run()
'''


def _runner_pids(cluster, host: str) -> list[int]:
    """The Python runner processes of the worker on ``host``: forked from the worker, so
    both have the worker's command line."""
    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            return ""

    def parent(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    child = "ensemble_launcher.orchestrator.child"
    return sorted(pid for pid in cluster.host_pids(host)
                  if child in cmdline(pid) and child in cmdline(parent(pid)))


def test_kill_9_of_a_python_runner_on_a_host_reruns_only_its_task(cluster):
    from ensemble_launcher.store import Results

    work = cluster.run_dir / "work"
    work.mkdir()
    (work / "job.py").write_text(KILL_RUNNER_JOB)
    (work / "nodes").write_text("".join(f"{h}\n" for h in cluster.hosts))
    log = work / "ran.txt"
    root = cluster.popen_on(cluster.hosts[0], [sys.executable, "job.py", str(log),
                                               *hydra_args(cluster)],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cluster.client_env({"PBS_NODEFILE": str(work / "nodes")}))
    victim = cluster.hosts[2]
    _wait_until_running_on(log, victim, 2)
    runners = _runner_pids(cluster, victim)
    assert len(runners) == 2, runners
    os.kill(runners[0], signal.SIGKILL)
    _, err = root.communicate(timeout=180)
    assert root.returncode == 0, err
    results = Results(work / "run")
    assert len(results) == 90 and results.counts() == {"succeeded": 90}
    lost = [a for tid in results for a in results.attempts(tid) if a.reason == "worker_lost"]
    assert len(lost) == 1 and lost[0].host == victim
    assert "killed by signal 9" in lost[0].exception
    assert results[lost[0].task_id].attempt == 2
    assert _ran(log) == Counter({f"t{i}": 1 for i in range(90)})
