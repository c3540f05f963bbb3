"""Cluster mode on the Slurm test cluster (issue 10, point 10): ``el start --wait`` inside
``sbatch -N3`` keeps a cluster alive for as long as the job runs, and a client on the login
host (this machine, outside the job's hosts) submits to it over TCP, proving itself with
the CURVE keys from cluster.json. The checkpoint directory is in the cluster's run
directory, which every host sees (see tests/cluster)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster.slurm import FINISHED_STATES

from ensemble_launcher.errors import ClusterLost, TaskNotRun
from ensemble_launcher.orchestrator import ClusterClient
from ensemble_launcher.store import Results

EL = [sys.executable, "-m", "ensemble_launcher.cli"]
HEARTBEAT = 0.5
#: Seconds Slurm gives a cancelled job between SIGTERM and SIGKILL (KillWait in
#: tests/cluster/slurm.py).
KILL_WAIT = 2.0


@dataclass
class ClusterJob:
    """A batch job whose script runs ``el start --wait``."""

    job_id: int
    checkpoint_dir: Path
    output: Path

    def printed(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


def start_cluster_job(cluster, work: Path) -> ClusterJob:
    """sbatch -N3 a script whose ``el start --wait`` lasts until the cluster stops."""
    work.mkdir()
    checkpoint = work / "checkpoint"
    (work / "launcher.json").write_text(json.dumps({
        "cluster": True, "checkpoint_dir": str(checkpoint), "nlevels": 1,
        "heartbeat_interval": HEARTBEAT, "shutdown_grace": 1.0,
        "master_logs": True, "worker_logs": True}))
    script, output = work / "job.sh", work / "job.out"
    el_start = " ".join([*EL, "start", "--wait", "--launcher-config", "launcher.json",
                         "--return-stdout"])
    script.write_text(f"#!/bin/sh\ncd {work}\n{el_start}\necho \"el exit $?\"\n")
    submitted = cluster.run(["sbatch", "--parsable", "--nodes=3", f"--output={output}",
                             str(script)], cwd=work, capture_output=True, text=True,
                            env=cluster.client_env({"XDG_STATE_HOME": str(work / "state")}))
    assert submitted.returncode == 0, submitted.stderr
    return ClusterJob(int(submitted.stdout.strip().split(";")[0]), checkpoint, output)


def job_state(cluster, job: ClusterJob) -> str:
    return cluster.job_info(job.job_id).get("JobState", "")


def wait_for_cluster_file(cluster, job: ClusterJob, timeout: float = 60) -> dict:
    """cluster.json, once the head in the job has written it; fails at once if the job
    ended first."""
    path = job.checkpoint_dir / "cluster.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        state = job_state(cluster, job)
        assert state not in FINISHED_STATES, f"job {job.job_id} {state}:\n{job.printed()}"
        assert time.monotonic() < deadline, \
            f"no {path} within {timeout} s; job {state}:\n{job.printed()}"
        time.sleep(0.1)
    return json.loads(path.read_text())


def wait_for_job_end(cluster, job: ClusterJob, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (info := cluster.job_info(job.job_id)).get("JobState") not in FINISHED_STATES:
        assert time.monotonic() < deadline, \
            f"job {job.job_id} still {info.get('JobState')} after {timeout} s:\n{job.printed()}"
        time.sleep(0.1)
    return info


def wait_for_file(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path} within {timeout} s"
        time.sleep(0.05)


def host_reporter():
    """A callable the hosts can load: defined in a function, cloudpickle ships it by
    value, since the hosts cannot import this test module."""

    def where(i: int) -> tuple[int, str]:
        time.sleep(0.3)
        return i, socket.gethostname()

    return where


def test_a_login_host_client_spreads_work_over_the_job_and_el_stop_ends_it(cluster):
    job = start_cluster_job(cluster, cluster.run_dir / "work")
    info = wait_for_cluster_file(cluster, job)
    first, _, last = cluster.hosts
    assert info["address"].startswith(f"tcp://{cluster.addresses[first]}:"), info
    assert info["host"] == first

    where = host_reporter()
    with ClusterClient(job.checkpoint_dir) as client, \
            ClusterClient(job.checkpoint_dir, node_id="main.w0") as on_first, \
            ClusterClient(job.checkpoint_dir, node_id="main.w2") as on_last:
        calls = [client.submit(where, i) for i in range(30)]
        commands = [client.submit(f"sh -c 'sleep 0.2; echo $(hostname) {i}'")
                    for i in range(6)]
        named = on_first.submit(socket.gethostname)
        greeting = on_last.submit("{} says hello".format, named)
        ran_on = dict(f.result(timeout=60) for f in calls)
        printed = [f.result(timeout=60) for f in commands]
        assert greeting.result(timeout=60) == f"{first} says hello"

    assert sorted(ran_on) == list(range(30))
    spread = Counter(ran_on.values())
    assert set(spread) == set(cluster.hosts), f"not every host ran tasks: {spread}"
    assert {line.split()[0] for line in printed} <= set(cluster.hosts)
    assert [int(line.split()[1]) for line in printed] == list(range(6))

    stopped = cluster.run([*EL, "stop", str(job.checkpoint_dir)], capture_output=True,
                          text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    ended = wait_for_job_end(cluster, job)
    assert (ended["JobState"], ended["ExitCode"]) == ("COMPLETED", "0:0"), job.printed()
    assert job.printed().splitlines() == [str(job.checkpoint_dir), "el exit 0"]

    results = Results(job.checkpoint_dir)
    assert results.counts() == {"succeeded": 38}
    assert {results[f.task_id].host for f in calls} == set(cluster.hosts)
    assert (results[named.task_id].host, results[greeting.task_id].host) == (first, last)


def submit_a_running_task_and_its_dependent(client, work: Path):
    """A command that runs until the job ends, and a task waiting for it; returns once
    the command runs."""
    started = work / "started"
    running = client.submit(f"sh -c 'touch {started} && exec sleep 60'")
    waiting = client.submit(socket.gethostname, dependencies=[running])
    wait_for_file(started)
    return running, waiting


def wait_until_lost(client, timeout: float) -> None:
    """Until the client knows its cluster is gone: submit() then raises ClusterLost."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.submit(socket.gethostname)
        except ClusterLost:
            return
        assert time.monotonic() < deadline, f"the client still submits after {timeout} s"
        time.sleep(0.05)


def failure_of(future, timeout: float) -> BaseException | None:
    try:
        future.result(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - the test compares what each future raised
        return exc
    return None


def test_scancel_leaves_the_running_task_not_run_for_a_restart(cluster):
    """Slurm sends SIGTERM to every process of the job, the task's and the head's: the
    task was interrupted, not failed (as for el run), so its future and its dependent's
    raise TaskNotRun, the journal has both not run, and the client learns that the
    cluster stopped."""
    work = cluster.run_dir / "work"
    job = start_cluster_job(cluster, work)
    wait_for_cluster_file(cluster, job)
    with ClusterClient(job.checkpoint_dir) as client:
        running, waiting = submit_a_running_task_and_its_dependent(client, work)
        scancel = cluster.run(["scancel", str(job.job_id)], capture_output=True, text=True)
        assert scancel.returncode == 0, scancel.stderr
        bound = KILL_WAIT + 3 * HEARTBEAT + 10
        errors = [failure_of(running, bound), failure_of(waiting, bound)]
        wait_until_lost(client, bound)
    assert [type(e) for e in errors] == [TaskNotRun, TaskNotRun], errors
    assert wait_for_job_end(cluster, job)["JobState"] == "CANCELLED"
    results = Results(job.checkpoint_dir)
    assert [(results[f.task_id].state, results[f.task_id].reason)
            for f in (running, waiting)] == [("not_run", "interrupted")] * 2


def test_a_head_killed_in_its_job_fails_the_client_s_futures_within_3_heartbeats(cluster):
    """kill -9 of the head inside the job (a plain scancel sends SIGTERM first, and the
    head drains): it dies without a word, and the client on the login host, where the
    head's pid means nothing, notices the silence."""
    work = cluster.run_dir / "work"
    job = start_cluster_job(cluster, work)
    head = wait_for_cluster_file(cluster, job)
    with ClusterClient(job.checkpoint_dir) as client:
        running, waiting = submit_a_running_task_and_its_dependent(client, work)
        killed_at = time.monotonic()
        os.kill(head["pid"], signal.SIGKILL)
        for future in (running, waiting):
            with pytest.raises(ClusterLost, match="3 heartbeats"):
                future.result(timeout=3 * HEARTBEAT + 10)
        lost_after = time.monotonic() - killed_at
    assert lost_after < 3 * HEARTBEAT + 1.0, f"ClusterLost {lost_after:.1f} s after the kill"
    assert wait_for_job_end(cluster, job)["JobState"] in FINISHED_STATES
