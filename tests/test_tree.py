"""The master/worker tree on this host: real child processes, real ZMQ, the names users know."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ensemble_launcher import ConfigError, EnsembleLauncher
from ensemble_launcher.config import LauncherConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import LaunchError
from ensemble_launcher.orchestrator.child import pick_entry
from ensemble_launcher.orchestrator.tree import TreeNode, plan_tree

HERE = socket.gethostname()


def cube(x, offset=0):
    return x ** 3 + offset


def fail(x):
    raise RuntimeError(f"task {x} failed on purpose")


def pid_and_affinity():
    return os.getpid(), sorted(os.sched_getaffinity(0))


def names(node: TreeNode) -> list[str]:
    return [node.name] + [n for c in node.children for n in names(c)]


def test_tree_names_and_node_groups():
    hosts = ["n1", "n2", "n3"]
    one = plan_tree(hosts, 1)
    assert names(one) == ["main", "main.w0", "main.w1", "main.w2"]
    assert [w.host for w in one.workers()] == hosts
    two = plan_tree(hosts, 2, nchildren=2)
    assert names(two) == ["main", "main.m0", "main.m0.w0", "main.m0.w1", "main.m1",
                          "main.m1.w0"]
    assert [m.hosts for m in two.children] == [["n1", "n2"], ["n3"]]
    three = plan_tree([f"n{i}" for i in range(8)], 3, nchildren=2)
    assert names(three)[:4] == ["main", "main.m0", "main.m0.m0", "main.m0.m0.w0"]
    assert len(three.workers()) == 8


def test_default_fanout_spreads_levels_evenly():
    tree = plan_tree([f"n{i}" for i in range(100)], 2)
    assert len(tree.children) == 10
    assert all(len(m.children) == 10 for m in tree.children)


def test_child_finds_its_entry_by_host_then_by_rank():
    entries = [TreeNode("main.w0", "worker", ["a"]), TreeNode("main.w1", "worker", ["b"])]
    assert pick_entry(entries, "b.cluster.org", {}).name == "main.w1"
    same = [TreeNode("main.w0", "worker", ["x"]), TreeNode("main.w1", "worker", ["x"])]
    assert pick_entry(same, "x", {"SLURM_PROCID": "1"}).name == "main.w1"
    assert pick_entry(same, "x", {"PMI_RANK": "0"}).name == "main.w0"


def run(tasks, tmp_path, nodes, **config):
    if isinstance(tasks, list):
        tasks = {t.task_id: t for t in tasks}
    el = EnsembleLauncher(tasks, Nodes=nodes, launcher_config=LauncherConfig(**config),
                          out_dir=tmp_path / "run")
    return el.run()


@pytest.mark.parametrize("nlevels, nchildren, comm", [
    (1, None, "zmq"), (2, 2, "zmq"), (1, None, "multiprocessing"), (2, 2, "multiprocessing")])
def test_callables_and_commands_through_the_tree(tmp_path, nlevels, nchildren, comm):
    tasks = [Task(task_id=f"c{i}", executable=cube, args=(i,), kwargs={"offset": 1})
             for i in range(300)]
    tasks += [Task(task_id=f"s{i}", executable=f"echo shell {i}") for i in range(50)]
    tasks.append(Task(task_id="boom", executable=fail, args=(7,)))
    tasks.append(Task(task_id="exit", executable="sh -c 'exit 5'"))
    r = run(tasks, tmp_path, ["localhost"] * 3, nlevels=nlevels, nchildren=nchildren,
            comm_name=comm, master_logs=True, worker_logs=True)
    assert len(r) == 352
    assert all(r[f"c{i}"].value == i ** 3 + 1 for i in range(300))
    assert all(r[f"s{i}"].state == "succeeded" for i in range(50))
    assert r["boom"].exception == "RuntimeError: task 7 failed on purpose"
    assert "in fail" in r["boom"].traceback
    assert (r["exit"].reason, r["exit"].returncode) == ("exit_code", 5)
    assert {res.host for res in r.values()} == {HERE}
    logs = sorted(p.name for p in (tmp_path / "run" / "logs").iterdir())
    workers = [n for n in logs if n.startswith("worker-")]
    assert len(workers) == 3
    if nlevels == 2:
        assert "master-main.m0.log" in logs and "master-main.m1.log" in logs
        assert "worker-main.m0.w0.log" in workers


def test_every_worker_takes_work_and_tasks_stay_pinned(tmp_path):
    tasks = [Task(task_id=f"t{i}", executable=pid_and_affinity) for i in range(200)]
    tasks += [Task(task_id=f"nap{i}", executable="sleep 0.2") for i in range(8)]
    r = run(tasks, tmp_path, ["localhost"] * 2, nlevels=1)
    runners = {r[f"t{i}"].value[0] for i in range(200)}
    assert len(runners) >= 3
    assert all(r[f"t{i}"].value[1] == list(r[f"t{i}"].cpus) for i in range(200))


def test_long_tasks_are_shared_between_workers(tmp_path):
    tasks = [Task(task_id=f"s{i}", executable=["sh", "-c", "sleep 0.3; echo $PPID"])
             for i in range(8)]
    r = run(tasks, tmp_path, ["localhost"] * 2, nlevels=1, return_stdout=True)
    runners = {r[f"s{i}"].stdout for i in range(8)}
    assert len(runners) == 4, "two workers x two runners should all have run a sleeper"


def test_unresolvable_node_is_refused_before_anything_starts(tmp_path):
    start = time.monotonic()
    with pytest.raises(ConfigError, match="no-such-node.invalid.*does not resolve"):
        EnsembleLauncher({"a": Task(task_id="a", executable="true")},
                         Nodes=[HERE, "no-such-node.invalid"], out_dir=tmp_path / "run")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "run").exists()


def test_a_launcher_that_cannot_start_children_is_a_clear_error(tmp_path):
    with pytest.raises(LaunchError, match="srun"):
        run([Task(task_id="a", executable="true")], tmp_path, ["localhost"] * 2, nlevels=1,
            child_launcher="srun", child_start_timeout=20)


def test_a_stalled_worker_is_declared_lost_and_its_tasks_run_elsewhere(tmp_path):
    marker = tmp_path / "stalled"
    stall_worker = (f"if mkdir {marker} 2>/dev/null; then "
                    "kill -STOP $(ps -o ppid= -p $PPID); sleep 30; fi; sleep 0.2")
    tasks = [Task(task_id=f"t{i}", executable=["sh", "-c", stall_worker]) for i in range(12)]
    start = time.monotonic()
    r = run(tasks, tmp_path, ["localhost"] * 2, nlevels=1, heartbeat_interval=0.3)
    assert time.monotonic() - start < 60
    assert len(r) == 12 and r.counts() == {"succeeded": 12}
    moved = [tid for tid in r if r[tid].attempt == 2]
    assert moved
    for tid in moved:
        first, final = r.attempts(tid)
        assert (first.state, first.reason) == ("lost", "node_lost")
        assert "main.w0 on" in first.exception or "main.w1 on" in first.exception
        assert "was lost: no heartbeat" in first.exception
        assert final.state == "succeeded"


def test_sigterm_at_the_root_stops_the_whole_tree(tmp_path):
    import subprocess
    import sys

    (tmp_path / "e.json").write_text(
        '{"ensembles": {"nap": {"cmd_template": "sh -c \'echo $$ > ' + str(tmp_path) +
        '/pid.{i}; exec sleep 60\'", "i": "range(4)"}}}')
    (tmp_path / "lc.json").write_text('{"nlevels": 1, "shutdown_grace": 1}')
    code = ("import sys; from ensemble_launcher.cli import main; sys.argv=['el','run',"
            f"'{tmp_path}/e.json','--launcher-config','{tmp_path}/lc.json','--out',"
            f"'{tmp_path}/run']; main()")
    env = {**os.environ, "PBS_NODEFILE": str(tmp_path / "nodes")}
    (tmp_path / "nodes").write_text("localhost\nlocalhost\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pid.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in tmp_path.glob("pid.*")]
    assert pids
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_three_levels_run(tmp_path):
    tasks = [Task(task_id=f"c{i}", executable=cube, args=(i,)) for i in range(100)]
    r = run(tasks, tmp_path, ["localhost"] * 4, nlevels=3, nchildren=2, master_logs=True)
    assert r.counts() == {"succeeded": 100} and r["c9"].value == 729
    logs = {p.name for p in (tmp_path / "run" / "logs").iterdir()}
    assert {"master-main.m0.m0.log", "master-main.m1.m1.log"} <= logs


def test_a_lost_sub_master_has_its_subtrees_tasks_rerun(tmp_path):
    marker = tmp_path / "killed"
    kill_sub_master = (f"if mkdir {marker} 2>/dev/null; then "
                       "kill -9 $(ps -o ppid= -p $(ps -o ppid= -p $PPID)); sleep 30; fi; "
                       "sleep 0.1")
    tasks = [Task(task_id=f"t{i}", executable=["sh", "-c", kill_sub_master]) for i in range(30)]
    r = run(tasks, tmp_path, ["localhost"] * 2, nlevels=2, nchildren=2, heartbeat_interval=0.3)
    assert r.counts() == {"succeeded": 30}
    lost = [a for tid in r for a in r.attempts(tid) if a.state == "lost"]
    assert lost and all("main.m" in a.exception for a in lost)


def test_a_tree_process_starts_without_importing_pydantic():
    """Thousands of children start at once on a big run; the root validated the configs,
    so a child reads them as plain values and skips pydantic's import cost."""
    code = ("import sys, ensemble_launcher.orchestrator.child, "
            "ensemble_launcher.orchestrator.roles; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
