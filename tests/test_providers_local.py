"""Provider runs on the local provider (issue 13): the root submits blocks, their workers
connect back, and the elastic policy, walltime, lost blocks and the run's end behave as they
do on Slurm (tests/test_providers_slurm.py) — here with local processes as blocks, whose
walltime the provider enforces as a scheduler would."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ensemble_launcher.store import Results

EL = [sys.executable, "-m", "ensemble_launcher.cli"]


def write_run(tmp_path: Path, tasks: dict, provider: dict, **launcher) -> tuple[Path, Path]:
    ensemble, config = tmp_path / "ensemble.json", tmp_path / "launcher.json"
    ensemble.write_text(json.dumps({"ensembles": tasks}))
    config.write_text(json.dumps({"provider": {"name": "local", **provider},
                                  "heartbeat_interval": 0.5, "master_logs": True,
                                  "worker_logs": True, **launcher}))
    system = tmp_path / "system.json"
    system.write_text(json.dumps({"name": "blocks", "ncpus": 2}))
    return ensemble, config


def el_run(tmp_path: Path, ensemble: Path, config: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([*EL, "run", str(ensemble), "--launcher-config", str(config),
                             "--system-config", str(tmp_path / "system.json"),
                             "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def blocks(run_dir: Path) -> list[dict]:
    with sqlite3.connect(run_dir / "journal.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM blocks ORDER BY \"index\"")]


def attempts(run_dir: Path) -> int:
    with sqlite3.connect(run_dir / "journal.db") as conn:
        return conn.execute("SELECT count(*) FROM attempts").fetchone()[0]


def sleepers(n: int, seconds: float, name: str = "t") -> dict:
    """``n`` tasks ``name-0``... that each sleep ``seconds``."""
    return {name: {"cmd_template": f"sleep {seconds} # {{i}}", "i": f"range({n})"}}


def master_log(run_dir: Path) -> str:
    path = run_dir / "logs" / "master-main.log"
    return path.read_text()[-4000:] if path.exists() else "(no master log)"


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def test_blocks_are_replaced_before_their_walltime_and_nothing_is_lost(tmp_path):
    """12 s blocks, 1.5 s tasks: each block drains before its walltime (the longest task
    plus our 5 s safety), a replacement is submitted while it drains, and no task is
    killed by a walltime."""
    ensemble, config = write_run(tmp_path, sleepers(24, 1.5),
                                 {"max_blocks": 2, "walltime": "00:12"})
    code, err = finish(el_run(tmp_path, ensemble, config))
    run_dir = tmp_path / "run"
    assert code == 0, err + master_log(run_dir)
    results = Results(run_dir)
    assert results.counts() == {"succeeded": 24}
    assert attempts(run_dir) == 0, "a task ran twice"
    used = blocks(run_dir)
    assert len(used) > 2, used
    states = [(b["state"], b["message"]) for b in used]
    assert all(state in ("completed", "cancelled") for state, _ in states), states


def test_idle_blocks_are_cancelled_while_a_long_task_keeps_the_run_going(tmp_path):
    """A burst of short tasks scales up to 3 blocks; once they are done, the blocks with
    nothing to do are cancelled after max_idletime while the one running the long task
    goes on."""
    tasks = {**sleepers(30, 0.3, "short"), "long": {"cmd_template": "sleep 12"}}
    ensemble, config = write_run(tmp_path, tasks, {"max_blocks": 3, "min_blocks": 0,
                                                   "max_idletime": 2})
    code, err = finish(el_run(tmp_path, ensemble, config))
    run_dir = tmp_path / "run"
    assert code == 0, err + master_log(run_dir)
    results = Results(run_dir)
    assert results.counts() == {"succeeded": 31}
    used = blocks(run_dir)
    assert len(used) >= 2, used
    long_end = results["long-0"].end_time
    cancelled = [b for b in used if b["state"] == "cancelled"]
    assert cancelled and all(b["ended"] < long_end - 2 for b in cancelled), (used, long_end)


def test_a_block_killed_mid_run_has_its_tasks_run_again_in_another(tmp_path):
    ensemble, config = write_run(tmp_path, sleepers(16, 1.0), {"max_blocks": 2,
                                                               "init_blocks": 2})
    proc = el_run(tmp_path, ensemble, config)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 30
    victim = None
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            running = [b for b in blocks(run_dir) if b["hosts"]]
        except sqlite3.Error:
            continue
        victim = running[0] if running else None
    assert victim is not None, master_log(run_dir)
    time.sleep(1.5)
    os.killpg(int(victim["job_id"]), signal.SIGKILL)
    code, err = finish(proc)
    assert code == 0, err + master_log(run_dir)
    assert Results(run_dir).counts() == {"succeeded": 16}
    assert attempts(run_dir) >= 1, "the killed block's tasks did not run again"
    states = {b["index"]: b["state"] for b in blocks(run_dir)}
    assert states[victim["index"]] in ("failed", "cancelled"), states


def test_blocks_that_never_start_end_the_run_with_their_error(tmp_path):
    ensemble, config = write_run(tmp_path, sleepers(4, 0.1),
                                 {"worker_init": "echo cannot load our module >&2; exit 3",
                                  "submit_retries": 2})
    code, err = finish(el_run(tmp_path, ensemble, config))
    assert code == 4, err
    assert "2 block(s) in a row did not start" in err and "status 3" in err, err
    used = blocks(tmp_path / "run")
    assert len(used) == 2 and all(b["state"] == "failed" for b in used), used


def test_sigterm_of_the_root_ends_every_block(tmp_path):
    ensemble, config = write_run(tmp_path, sleepers(20, 3.0), {"max_blocks": 2,
                                                               "init_blocks": 2},
                                 shutdown_grace=1.0)
    proc = el_run(tmp_path, ensemble, config)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            if sum(1 for b in blocks(run_dir) if b["hosts"]) == 2:
                break
        except sqlite3.Error:
            continue
    pids = [int(b["job_id"]) for b in blocks(run_dir)]
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 130, err
    assert all(b["ended"] is not None for b in blocks(run_dir)), blocks(run_dir)
    assert pids_alive(pids) == []
    counts = Results(run_dir).counts()
    assert counts.get("not_run", 0) >= 1 and set(counts) <= {"succeeded", "not_run"}, counts


@pytest.mark.parametrize("bad, why", [
    ({"max_blocks": 0}, "max_blocks"),
    ({"min_blocks": 3, "max_blocks": 2}, "min_blocks"),
    ({"walltime": "ten minutes"}, "walltime"),
])
def test_a_bad_provider_config_is_refused_before_anything_runs(tmp_path, bad, why):
    ensemble, config = write_run(tmp_path, sleepers(2, 0.1), bad)
    code, err = finish(el_run(tmp_path, ensemble, config))
    assert code == 2, err
    assert why in err and str(config) in err, err
    assert not (tmp_path / "run").exists()


def test_a_grow_rule_adds_a_block_the_policy_would_not(tmp_path):
    """Two tasks fit one block of two cores; a rule that grows the pool by one at the start
    makes it two blocks, both of whose workers connect."""
    ensemble, config = write_run(tmp_path, {}, {"max_blocks": 3})
    ensemble.write_text(json.dumps({
        "ensembles": sleepers(2, 4.0),
        "rules": [{"trigger": "start", "action": {"name": "grow", "value": 1}}]}))
    code, err = finish(el_run(tmp_path, ensemble, config))
    run_dir = tmp_path / "run"
    assert code == 0, err + master_log(run_dir)
    assert Results(run_dir).counts() == {"succeeded": 2}
    used = blocks(run_dir)
    assert len(used) == 2 and all(b["hosts"] for b in used), used


def test_a_grow_rule_without_a_provider_is_refused_before_the_run(tmp_path):
    ensemble = tmp_path / "ensemble.json"
    ensemble.write_text(json.dumps({
        "ensembles": sleepers(2, 0.1),
        "rules": [{"trigger": "start", "action": {"name": "shrink"}}]}))
    done = subprocess.run([*EL, "run", str(ensemble), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "'shrink'" in done.stderr and "provider" in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_a_cluster_with_a_provider_shrinks_to_nothing_when_idle_and_grows_on_new_work(
        tmp_path):
    """Cluster mode as a long-lived elastic service: no block until work comes, idle
    blocks cancelled down to min_blocks=0, new blocks for the next submissions."""
    from ensemble_launcher import EnsembleLauncher
    from ensemble_launcher.config import LauncherConfig, SystemConfig
    from ensemble_launcher.orchestrator import ClusterClient

    checkpoint = tmp_path / "ck"
    config = LauncherConfig(cluster=True, checkpoint_dir=str(checkpoint), heartbeat_interval=0.5,
                            provider={"name": "local", "min_blocks": 0, "max_blocks": 2,
                                      "init_blocks": 0, "max_idletime": 1})

    def states() -> list[str]:
        return [b["state"] for b in blocks(checkpoint)]

    with EnsembleLauncher({}, SystemConfig(name="x", ncpus=2), config), \
            ClusterClient(checkpoint) as client:
        assert states() == []
        assert [f.result(timeout=60) for f in [client.submit(pow, 2, i) for i in range(5)]] \
            == [1, 2, 4, 8, 16]
        first = len(states())
        deadline = time.monotonic() + 30
        while any(s != "cancelled" for s in states()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert states() == ["cancelled"] * first, states()
        assert sum(client.map(abs, range(-100, 0))) == 5050
        assert len(states()) > first and "running" in states()
    assert all(s in ("cancelled", "completed") for s in states()), states()


def test_blocks_whose_workers_never_connect_are_cancelled_and_end_the_run(tmp_path):
    """A block that runs but whose workers hang before connecting (a stuck file system,
    say) counts as a block that did not start once child_start_timeout has passed."""
    ensemble, config = write_run(tmp_path, sleepers(2, 0.1),
                                 {"worker_init": "sleep 300", "submit_retries": 2},
                                 child_start_timeout=2)
    started = time.monotonic()
    code, err = finish(el_run(tmp_path, ensemble, config))
    assert code == 4, err
    assert "no worker of it connected" in err and "block-1.out" in err, err
    assert time.monotonic() - started < 60
    used = blocks(tmp_path / "run")
    assert [b["state"] for b in used] == ["cancelled", "cancelled"], used
