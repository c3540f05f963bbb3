"""Provider runs on the Slurm test cluster (issue 13, Acceptance): the root runs here, on the
login host, outside any allocation, as ``el run FILE --launcher-config provider.json`` (or
``el start`` for cluster mode); it submits blocks (batch jobs of one node) through PSI/J,
and their workers connect back to the bridge address over CURVE TCP. The run directories
are in the cluster's run directory, which every host sees. Each test has a fresh cluster,
so every job in its queue is one of ours.

The tasks write what they did to files of their own (``ran/<task id>``: host and time),
so that "each task ran once" is checked against what ran, not only against the journal.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ensemble_launcher.orchestrator import ClusterClient
from ensemble_launcher.states import BlockRecord
from ensemble_launcher.store import Results, queries

EL = [sys.executable, "-m", "ensemble_launcher.cli"]
HEARTBEAT = 0.5
#: Seconds Slurm gives a cancelled job between SIGTERM and SIGKILL (KillWait in
#: tests/cluster/slurm.py), plus what slurmctld takes to forget a completing job.
QUEUE_CLEAR_SECONDS = 10.0


@dataclass(frozen=True)
class ProviderRun:
    """The files of one ``el run`` with a provider, in the cluster's shared run dir."""

    work: Path
    ensemble: Path
    config: Path

    @property
    def run_dir(self) -> Path:
        return self.work / "run"

    @property
    def ran(self) -> Path:
        """One file per task that finished its command: ``<host> <time.time()>``."""
        return self.work / "ran"


def provider_config(cluster, **provider) -> dict:
    return {"name": "slurm", "address": cluster.bridge_address, "walltime": "00:05:00",
            **provider}


def prepare_run(cluster, tasks: int, seconds: float, provider: dict,
                **launcher) -> ProviderRun:
    """A run of ``tasks`` recording tasks of ``seconds`` each (see recording_tasks)."""
    work = cluster.run_dir / "work"
    work.mkdir()
    (work / "ran").mkdir()
    run = ProviderRun(work, work / "ensemble.json", work / "provider.json")
    run.ensemble.write_text(json.dumps({"ensembles": recording_tasks(run.ran, tasks,
                                                                     seconds)}))
    run.config.write_text(json.dumps({
        "provider": provider_config(cluster, **provider), "heartbeat_interval": HEARTBEAT,
        "master_logs": True, "worker_logs": True, **launcher}))
    return run


def recording_tasks(ran: Path, n: int, seconds: float, name: str = "t") -> dict:
    """``n`` tasks ``<name>-<i>`` that sleep ``seconds``, then append their host and the
    time to ``ran/<name>-<i>`` (a task run twice leaves two lines)."""
    mark = f'echo "$(hostname) $(date +%s.%N)" >> {ran}/{name}-{{i}}'
    return {name: {"cmd_template": f"sh -c 'sleep {seconds}; {mark}'", "i": f"range({n})"}}


def el_run(cluster, run: ProviderRun) -> subprocess.Popen:
    return subprocess.Popen(
        [*EL, "run", str(run.ensemble), "--launcher-config", str(run.config),
         "--out", str(run.run_dir), "--no-progress"],
        cwd=run.work, env=cluster.client_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, run: ProviderRun, timeout: float = 150) -> tuple[int, str]:
    """The root's exit status and stderr; on a timeout, it is killed and the test fails
    with its logs."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"el run still running after {timeout} s\n{err[-2000:]}\n"
                             f"{diagnostics(run.run_dir)}") from None
    return proc.returncode, err


def diagnostics(run_dir: Path) -> str:
    """The ends of the master's log and of the blocks' outputs, for failure messages."""
    paths = [run_dir / "logs" / "master-main.log", *sorted((run_dir / "blocks").glob("*.err")),
             *sorted((run_dir / "blocks").glob("*.out"))]
    parts = []
    for path in paths:
        if path.exists() and path.stat().st_size:
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts) or f"(no logs in {run_dir})"


def queued(cluster) -> list[str]:
    """squeue's lines (job id, name, state): on a fresh cluster, all of them ours."""
    shown = cluster.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True,
                        timeout=15)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.split("\n")[:-1]


def wait_until_queue_empty(cluster, timeout: float = QUEUE_CLEAR_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while left := queued(cluster):
        assert time.monotonic() < deadline, f"jobs still queued {timeout} s later: {left}"
        time.sleep(0.2)


def journal_blocks(run_dir: Path) -> list[BlockRecord]:
    """The journal's blocks, [] while the journal is not there yet."""
    try:
        return queries.blocks(run_dir)
    except Exception:  # noqa: BLE001 - the root may not have created its journal yet
        return []


def wait_for_blocks(run_dir: Path, connected: int, proc: subprocess.Popen,
                    timeout: float = 60) -> list[BlockRecord]:
    """The journal's blocks once ``connected`` of them have a worker connected."""
    deadline = time.monotonic() + timeout
    while True:
        found = journal_blocks(run_dir)
        if sum(1 for b in found if b.hosts) >= connected:
            return found
        assert proc.poll() is None, f"el exited {proc.returncode}:\n{diagnostics(run_dir)}"
        assert time.monotonic() < deadline, \
            f"not {connected} blocks connected within {timeout} s: {found}\n" \
            f"{diagnostics(run_dir)}"
        time.sleep(0.2)


def marks(run: ProviderRun) -> dict[str, list[tuple[str, float]]]:
    """Each task's lines in ``ran/``: (host, time) of each time its command finished."""
    found = {}
    for path in run.ran.iterdir():
        lines = path.read_text().splitlines()
        found[path.name] = [(host, float(at)) for host, at in map(str.split, lines)]
    return found


def assert_each_succeeded_once(run: ProviderRun, task_ids: list[str]) -> Results:
    """Every task has one final result, succeeded, and one succeeded attempt, and its
    command finished once (one line in ``ran/``, from the host of its result)."""
    results = Results(run.run_dir)
    assert results.counts() == {"succeeded": len(task_ids)}, \
        f"{results.counts()}: {[r for r in results.failed()][:5]}"
    ran = marks(run)
    assert sorted(ran) == sorted(task_ids)
    twice = {t: lines for t, lines in ran.items() if len(lines) != 1}
    assert not twice, f"commands that finished more than once: {twice}"
    for task_id in task_ids:
        succeeded = [a for a in results.attempts(task_id) if a.state == "succeeded"]
        assert len(succeeded) == 1, results.attempts(task_id)
        assert ran[task_id][0][0] == results[task_id].host, (task_id, ran[task_id])
    return results


def ids(name: str, n: int) -> list[str]:
    return [f"{name}-{i}" for i in range(n)]


# -- the tests ---------------------------------------------------------------------------


def test_300_tasks_over_three_one_node_blocks_run_once_each_on_every_host(cluster):
    """init_blocks=1 grows to max_blocks=3 for 300 tasks: each runs once, on all three
    hosts, the journal's blocks say which jobs ran them, and the root ends every job."""
    run = prepare_run(cluster, 300, 0.1, {"max_blocks": 3})
    code, err = finish(el_run(cluster, run), run)
    assert code == 0, f"{err[-2000:]}\n{diagnostics(run.run_dir)}"
    wait_until_queue_empty(cluster)

    results = assert_each_succeeded_once(run, ids("t", 300))
    hosts = Counter(r.host for _, r in results.items())
    assert set(hosts) == set(cluster.hosts), hosts
    blocks = results.blocks()
    assert 2 <= len(blocks) <= 3, blocks
    assert all(b.state == "completed" for b in blocks), blocks
    ran_in = Counter(results.block_of(t).job_id for t in ids("t", 300))
    assert len(ran_in) >= 2, ran_in
    assert set(ran_in) <= {b.job_id for b in blocks}


def test_cluster_mode_scales_up_for_a_burst_and_cancels_idle_blocks(cluster):
    """``el start`` with a provider of min_blocks=0, init_blocks=0: no job until work
    comes; a burst of 40 tasks from a client on this host scales up to more than one
    block; once they are idle for max_idletime the blocks are cancelled, down to none,
    while the cluster keeps serving: the next burst gets new blocks."""
    idle = 5.0
    work = cluster.run_dir / "work"
    work.mkdir()
    checkpoint = work / "checkpoint"
    config = work / "launcher.json"
    config.write_text(json.dumps({
        "cluster": True, "checkpoint_dir": str(checkpoint), "heartbeat_interval": HEARTBEAT,
        "master_logs": True, "worker_logs": True,
        "provider": provider_config(cluster, init_blocks=0, min_blocks=0, max_blocks=3,
                                    max_idletime=idle)}))
    started = cluster.run([*EL, "start", "--launcher-config", str(config)], cwd=work,
                          capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        assert not queued(cluster) and queries.blocks(checkpoint) == []
        first = burst(checkpoint, 40)
        scaled = queries.blocks(checkpoint)
        assert len(scaled) > 1, scaled
        assert len({host for host, _ in first}) > 1, first

        cancelled = wait_for_states(checkpoint, {"cancelled"}, len(scaled), timeout=60)
        last_end = last_end_per_host(Results(checkpoint))
        for block in cancelled:
            assert block.ended - last_end[block.hosts] >= idle - 1.0, (block, last_end)
        wait_until_queue_empty(cluster)

        again = burst(checkpoint, 12)
        assert {h for h, _ in again} <= set(cluster.hosts)
        later = queries.blocks(checkpoint)
        assert len(later) > len(scaled), later
    finally:
        stopped = cluster.run([*EL, "stop", str(checkpoint)], capture_output=True, text=True,
                              timeout=90)
    assert stopped.returncode == 0, stopped.stderr + diagnostics(checkpoint)
    wait_until_queue_empty(cluster)
    assert Results(checkpoint).counts() == {"succeeded": 52}


def where_and_when():
    """A callable the hosts can load (cloudpickle ships it by value)."""

    def task(i: int) -> tuple[str, float]:
        time.sleep(0.5)
        return socket.gethostname(), time.time()

    return task


def last_end_per_host(results: Results) -> dict[str, float]:
    ends: dict[str, float] = {}
    for _, result in results.items():
        ends[result.host] = max(ends.get(result.host, 0.0), result.end_time)
    return ends


def burst(checkpoint: Path, n: int) -> list[tuple[str, float]]:
    with ClusterClient(checkpoint) as client:
        task = where_and_when()
        futures = [client.submit(task, i) for i in range(n)]
        return [f.result(timeout=90) for f in futures]


def wait_for_states(run_dir: Path, states: set[str], count: int,
                    timeout: float) -> list[BlockRecord]:
    """The blocks, once ``count`` of them are in one of ``states``."""
    deadline = time.monotonic() + timeout
    while len(found := [b for b in queries.blocks(run_dir) if b.state in states]) < count:
        assert time.monotonic() < deadline, \
            f"not {count} blocks {states} within {timeout} s: {queries.blocks(run_dir)}\n" \
            f"{diagnostics(run_dir)}"
        time.sleep(0.2)
    return found


def test_scancel_of_one_block_reruns_its_tasks_in_the_others(cluster):
    """Three blocks run 48 tasks of 2 s; someone's scancel of one of them mid-run: the
    tasks it had in flight run again in the other blocks, every task succeeds once, and
    the run still ends with exit 0."""
    run = prepare_run(cluster, 48, 2, {"max_blocks": 3, "init_blocks": 3})
    proc = el_run(cluster, run)
    blocks = wait_for_blocks(run.run_dir, 3, proc)
    victim = blocks[0]
    wait_for_marks(run, victim.hosts, 2, proc)
    scancel = cluster.run(["scancel", victim.job_id], capture_output=True, text=True)
    assert scancel.returncode == 0, scancel.stderr
    code, err = finish(proc, run)
    assert code == 0, f"{err[-2000:]}\n{diagnostics(run.run_dir)}"
    wait_until_queue_empty(cluster)

    results = assert_each_succeeded_once(run, ids("t", 48))
    states = {b.index: b.state for b in results.blocks()}
    assert states[victim.index] == "cancelled", results.blocks()
    rerun = {t: results.attempts(t) for t in ids("t", 48) if len(results.attempts(t)) > 1}
    assert rerun, "no task of the cancelled block ran again"
    for attempts in rerun.values():
        assert attempts[0].host == victim.hosts and attempts[0].state != "succeeded", attempts
        assert attempts[-1].host != victim.hosts, attempts


def wait_for_marks(run: ProviderRun, host: str, count: int, proc: subprocess.Popen,
                   timeout: float = 60) -> None:
    """Until ``count`` tasks finished on ``host``."""
    deadline = time.monotonic() + timeout
    while sum(lines[0][0] == host for lines in marks(run).values()) < count:
        assert proc.poll() is None, f"el exited {proc.returncode}:\n{diagnostics(run.run_dir)}"
        assert time.monotonic() < deadline, f"not {count} tasks done on {host}"
        time.sleep(0.1)


def test_blocks_near_their_walltime_are_replaced_and_no_task_is_killed(cluster):
    """One-minute blocks, two at a time, 60 tasks of 5 s (75 s of work for 4 slots): each
    block drains before its walltime and a replacement runs the rest; no task is killed
    by Slurm's time limit, none runs twice, and more than max_blocks blocks were used."""
    run = prepare_run(cluster, 60, 5, {"max_blocks": 2, "init_blocks": 2,
                                    "walltime": "00:01:00"})
    code, err = finish(el_run(cluster, run), run, timeout=240)
    assert code == 0, f"{err[-2000:]}\n{diagnostics(run.run_dir)}"
    wait_until_queue_empty(cluster)

    results = assert_each_succeeded_once(run, ids("t", 60))
    for task_id in ids("t", 60):
        assert [(a.state, a.signal) for a in results.attempts(task_id)] == \
            [("succeeded", None)], results.attempts(task_id)
    blocks = results.blocks()
    assert len(blocks) > 2, blocks
    timed_out = [b for b in blocks if b.state == "failed"]
    assert not timed_out, f"blocks that ran out of walltime: {timed_out}"
    ran_in = Counter(results.block_of(t).index for t in ids("t", 60))
    assert len(ran_in) > 2, ran_in


def test_a_bad_partition_fails_the_run_with_slurm_s_message(cluster):
    """sbatch refuses every block: after submit_retries tries the root exits 4 with
    Slurm's own words, no job is left queued, and no task claims to have run."""
    run = prepare_run(cluster, 5, 0.1, {"partition": "nosuchpartition", "submit_retries": 2})
    code, err = finish(el_run(cluster, run), run, timeout=90)
    assert code == 4, f"exit {code}: {err[-2000:]}"
    assert "invalid partition" in err.lower(), err
    assert "2 block(s) in a row did not start" in err, err
    assert "Traceback" not in err, err
    assert not queued(cluster)
    results = Results(run.run_dir)
    assert "succeeded" not in results.counts(), results.counts()
    assert not list(run.ran.iterdir())


def test_sigterm_of_the_root_cancels_its_jobs_and_keeps_what_finished(cluster):
    """SIGTERM to ``el run`` mid-run: it exits 130, every job of ours has left the queue
    within seconds, the journal holds each result that finished before the signal, and
    ``el resume`` runs only the rest."""
    run = prepare_run(cluster, 60, 1, {"max_blocks": 3, "init_blocks": 3})
    proc = el_run(cluster, run)
    wait_for_blocks(run.run_dir, 3, proc)
    for host in cluster.hosts:
        wait_for_marks(run, host, 4, proc)
    signalled_at = time.time()
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, run, timeout=60)
    assert code == 130, f"exit {code}: {err[-2000:]}\n{diagnostics(run.run_dir)}"
    wait_until_queue_empty(cluster, timeout=5)
    blocks = Results(run.run_dir).blocks()
    assert len(blocks) == 3 and all(b.state in ("completed", "cancelled") and b.ended
                                    for b in blocks), blocks

    results = Results(run.run_dir)
    done_before = {t for t, lines in marks(run).items() if lines[0][1] < signalled_at - 1.0}
    assert done_before
    kept = {t for t, r in results.items() if r.state == "succeeded"}
    assert done_before <= kept, sorted(done_before - kept)
    assert len(kept) < 60, "every task finished before the signal: nothing to resume"
    before = marks(run)

    resumed = cluster.run([*EL, "resume", str(run.run_dir), "--no-progress"], cwd=run.work,
                          capture_output=True, text=True, timeout=150)
    assert resumed.returncode == 0, f"{resumed.stderr[-2000:]}\n{diagnostics(run.run_dir)}"
    wait_until_queue_empty(cluster)
    after = assert_each_succeeded_once(run, ids("t", 60))
    assert all(marks(run)[t] == before[t] for t in kept)
    assert all(after[t].start_time > signalled_at for t in set(ids("t", 60)) - set(before))
