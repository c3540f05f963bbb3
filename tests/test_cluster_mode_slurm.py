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
    """sbatch -N3 a script whose ``el start --wait`` lasts until the cluster stops; a
    second call starts the cluster again on the same checkpoint directory."""
    checkpoint, script = work / "checkpoint", work / "job.sh"
    if not script.exists():
        work.mkdir(exist_ok=True)
        (work / "launcher.json").write_text(json.dumps({
            "cluster": True, "checkpoint_dir": str(checkpoint), "nlevels": 1,
            "heartbeat_interval": HEARTBEAT, "shutdown_grace": 1.0,
            "master_logs": True, "worker_logs": True}))
        el_start = " ".join([*EL, "start", "--wait", "--launcher-config", "launcher.json",
                             "--return-stdout"])
        script.write_text(f"#!/bin/sh\ncd {work}\n{el_start}\necho \"el exit $?\"\n")
    submitted = cluster.run(["sbatch", "--parsable", "--nodes=3",
                             f"--output={work / 'job-%j.out'}", str(script)],
                            cwd=work, capture_output=True, text=True,
                            env=cluster.client_env({"XDG_STATE_HOME": str(work / "state")}))
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip().split(";")[0])
    return ClusterJob(job_id, checkpoint, work / f"job-{job_id}.out")


def head_log(job: ClusterJob) -> str:
    log = job.checkpoint_dir / "logs" / "head.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no head.log)"


def job_state(cluster, job: ClusterJob) -> str:
    return cluster.job_info(job.job_id).get("JobState", "")


def wait_for_cluster_file(cluster, job: ClusterJob, timeout: float = 60) -> dict:
    """cluster.json, once the head in the job has written it; fails at once if the job
    ended first."""
    path = job.checkpoint_dir / "cluster.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        state = job_state(cluster, job)
        assert state not in FINISHED_STATES, \
            f"job {job.job_id} {state}:\n{job.printed()}\n{head_log(job)}"
        assert time.monotonic() < deadline, \
            f"no {path} within {timeout} s; job {state}:\n{job.printed()}\n{head_log(job)}"
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


def value_of(future, checkpoint_dir: Path, timeout: float = 30):
    """The future's value; on a timeout, fail with what the journal holds for its task
    (a future must not hang once its task is final)."""
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        row = Results(checkpoint_dir).get(future.task_id)
        pytest.fail(f"no result for {future.task_id} within {timeout} s; journal: {row}")


def test_a_login_host_client_spreads_work_over_the_job_and_el_stop_ends_it(cluster):
    """The head listens on the address of its host that routes to the others (which the
    login host reaches too); callables, commands and a value passed through a future;
    el stop from the login host ends the cluster, the script and the job."""
    job = start_cluster_job(cluster, cluster.run_dir / "work")
    info = wait_for_cluster_file(cluster, job)
    first = cluster.hosts[0]
    assert info["address"].startswith(f"tcp://{cluster.addresses[first]}:"), info
    assert info["host"] == first

    where = host_reporter()
    with ClusterClient(job.checkpoint_dir) as client:
        calls = [client.submit(where, i) for i in range(30)]
        commands = [client.submit(f"sh -c 'sleep 0.2; echo $(hostname) {i}'")
                    for i in range(6)]
        named = client.submit(socket.gethostname)
        greeting = client.submit("{} says hello".format, named)
        ran_on = dict(value_of(f, job.checkpoint_dir) for f in calls)
        printed = [value_of(f, job.checkpoint_dir) for f in commands]
        said = value_of(greeting, job.checkpoint_dir)

    assert sorted(ran_on) == list(range(30))
    spread = Counter(ran_on.values())
    assert set(spread) == set(cluster.hosts), f"not every host ran tasks: {spread}"
    assert [line.split()[1] for line in printed] == [str(i) for i in range(6)]
    assert {line.split()[0] for line in printed} <= set(cluster.hosts)
    assert said == f"{named.result()} says hello"

    stopped = cluster.run([*EL, "stop", str(job.checkpoint_dir)], capture_output=True,
                          text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    ended = wait_for_job_end(cluster, job)
    assert (ended["JobState"], ended["ExitCode"]) == ("COMPLETED", "0:0"), job.printed()
    assert job.printed().splitlines() == [str(job.checkpoint_dir), "el exit 0"]

    results = Results(job.checkpoint_dir)
    assert results.counts() == {"succeeded": 38}
    assert {f.task_id: results[f.task_id].host for f in calls} == \
        {f.task_id: ran_on[i] for i, f in enumerate(calls)}


def test_clients_routed_to_two_hosts_pass_a_value_between_them(cluster):
    """One client's future as the argument of a task that another client routes to
    another host, while a third client keeps the cluster busy: the clients' messages
    reach the head in any order."""
    job = start_cluster_job(cluster, cluster.run_dir / "work")
    wait_for_cluster_file(cluster, job)
    first, _, last = cluster.hosts
    where = host_reporter()
    with ClusterClient(job.checkpoint_dir) as busy, \
            ClusterClient(job.checkpoint_dir, node_id="main.w0") as on_first, \
            ClusterClient(job.checkpoint_dir, node_id="main.w2") as on_last:
        work = [busy.submit(where, i) for i in range(30)]
        named = on_first.submit(socket.gethostname)
        greeting = on_last.submit("{} says hello".format, named)
        said = value_of(greeting, job.checkpoint_dir)
        assert sorted(value_of(f, job.checkpoint_dir)[0] for f in work) == list(range(30))
    assert said == f"{first} says hello"
    results = Results(job.checkpoint_dir)
    assert (results[named.task_id].host, results[greeting.task_id].host) == (first, last)


def test_a_short_task_first_does_not_pull_the_later_work_to_one_host(cluster):
    """Workers size their prefetch by the task durations they see: a no-op that one of
    them finished first must not let it take the whole queue of longer tasks while the
    other hosts idle (30 tasks of 0.3 s on three hosts of two cores: about 10 each)."""
    job = start_cluster_job(cluster, cluster.run_dir / "work")
    wait_for_cluster_file(cluster, job)
    where = host_reporter()
    with ClusterClient(job.checkpoint_dir) as client:
        value_of(client.submit(socket.gethostname), job.checkpoint_dir)
        calls = [client.submit(where, i) for i in range(30)]
        spread = Counter(value_of(f, job.checkpoint_dir)[1] for f in calls)
    assert min(spread.get(host, 0) for host in cluster.hosts) >= 5, spread


def submit_a_running_task_and_its_dependent(client, work: Path):
    """A command that runs until the job ends (the first time; run again, it exits at
    once), and a task waiting for it; returns once the command runs."""
    started = work / "started"
    running = client.submit(f"sh -c 'test -e {started} && exit 0; touch {started} && "
                            "exec sleep 60'")
    waiting = client.submit(socket.gethostname, dependencies=[running])
    wait_for_file(started)
    return running, waiting


def wait_until_final(checkpoint_dir: Path, task_ids: list[str], timeout: float = 60):
    """The journal's results of these tasks, once each has a final one."""
    deadline = time.monotonic() + timeout
    while True:
        results = Results(checkpoint_dir)
        if all(t in results and results[t].state != "not_run" for t in task_ids):
            return results
        assert time.monotonic() < deadline, \
            f"not final within {timeout} s: {[results.get(t) for t in task_ids]}"
        time.sleep(0.1)


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


def test_scancel_leaves_the_running_task_not_run_and_a_restart_runs_it(cluster):
    """Slurm sends SIGTERM to every process of the job, the task's and the head's: the
    task was interrupted, not failed (as for el run), so its future and its dependent's
    raise TaskNotRun, and the client learns that the cluster stopped. A new job that
    starts the cluster on the same checkpoint directory runs both."""
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
    assert not (job.checkpoint_dir / "cluster.json").exists()
    results = Results(job.checkpoint_dir)
    assert [(results[f.task_id].state, results[f.task_id].reason)
            for f in (running, waiting)] == [("not_run", "interrupted")] * 2

    again = start_cluster_job(cluster, work)
    wait_for_cluster_file(cluster, again)
    ids = [running.task_id, waiting.task_id]
    results = wait_until_final(again.checkpoint_dir, ids)
    assert [(results[t].state, results[t].attempt) for t in ids] == [("succeeded", 2)] * 2
    stopped = cluster.run([*EL, "stop", str(again.checkpoint_dir)], capture_output=True,
                          text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for_job_end(cluster, again)["JobState"] == "COMPLETED", again.printed()


def test_a_head_killed_in_its_job_fails_the_client_s_futures_within_3_heartbeats(cluster):
    """kill -9 of the head inside the job (a plain scancel sends SIGTERM first, and the
    head drains): it dies without a word, and the client on the login host, where the
    head's pid means nothing, notices the silence (the test kills the head by its pid
    from cluster.json: the hosts share this machine's pid namespace). A new job that
    starts the cluster on the same checkpoint directory runs the tasks that had no final
    result."""
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

    again = start_cluster_job(cluster, work)
    wait_for_cluster_file(cluster, again)
    ids = [running.task_id, waiting.task_id]
    results = wait_until_final(again.checkpoint_dir, ids)
    assert [results[t].state for t in ids] == ["succeeded"] * 2
    stopped = cluster.run([*EL, "stop", str(again.checkpoint_dir)], capture_output=True,
                          text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for_job_end(cluster, again)["JobState"] == "COMPLETED", again.printed()
