"""The master/worker tree on this host: real child processes, real ZMQ, the names users know."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ensemble_launcher import ConfigError, EnsembleLauncher
from ensemble_launcher.config import LauncherConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import LaunchError, RunAbortedError
from ensemble_launcher.orchestrator.child import pick_entry
from ensemble_launcher.orchestrator.tree import TreeNode, plan_tree
from ensemble_launcher.store import Results

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
    with pytest.raises(RunAbortedError, match="srun") as caught:
        run([Task(task_id="a", executable="true")], tmp_path, ["localhost"] * 2, nlevels=1,
            child_launcher="srun", child_start_timeout=20)
    assert isinstance(caught.value.__cause__, LaunchError)


def test_a_child_that_cannot_start_after_tasks_ran_aborts_the_run_resumably(tmp_path,
                                                                          monkeypatch):
    """The run had started (tasks ran on main.w0) when main.w1's launcher step exited: that
    is not bad input with nothing run (el exit 2) but a run that could not go on (exit 4),
    recorded as interrupted, which resume continues."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "if '\"main.w1\"' in os.environ.get('EL_TREE', ''):\n"
        "    time.sleep(3)\n"
        "    sys.exit(7)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(hook), os.environ.get("PYTHONPATH")) if p))
    tasks = [Task(task_id=f"t{i}", executable="sleep 0.2") for i in range(60)]
    with pytest.raises(RunAbortedError, match="main.w1 on .* did not start") as caught:
        run(tasks, tmp_path, ["localhost"] * 2, nlevels=1)
    assert isinstance(caught.value.__cause__, LaunchError)
    assert f"el resume {tmp_path / 'run'}" in str(caught.value)
    r = Results(tmp_path / "run")
    assert r.meta()["interrupted"] is True and "finished" in r.meta()
    assert r.counts()["succeeded"] >= 1 and set(r.counts()) <= {"succeeded", "not_run"}


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


def test_masters_listen_on_a_named_interface(tmp_path):
    """``bind_address`` as an interface name: TCP on that interface's address."""
    tasks = [Task(task_id=f"c{i}", executable=cube, args=(i,)) for i in range(20)]
    r = run(tasks, tmp_path, ["localhost"] * 2, nlevels=2, nchildren=2, bind_address="lo",
            master_logs=True)
    assert r.counts() == {"succeeded": 20}
    for name in ("master-main.log", "master-main.m0.log"):
        log = (tmp_path / "run" / "logs" / name).read_text()
        assert re.search(r"children connect to tcp://127\.0\.0\.1:\d+", log), log


def send_garbage(master_log: str) -> int:
    """What any process of the user may do, a task included: connect to the master's ipc
    socket (found in its log) and send frames that are not messages of ours."""
    import msgpack
    import zmq

    address = _wait_for_endpoint(Path(master_log))
    ctx = zmq.Context()
    sent = 0
    for identity in (b"intruder", None):
        sock = ctx.socket(zmq.DEALER)
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(address)
        for frames in ([b"\xc1"], [b""], [msgpack.packb([2, "x"])], [msgpack.packb([99])],
                       [msgpack.packb([5, [[1]], []])], [b"two", b"parts"]):
            sock.send_multipart(frames)
            sent += 1
        sock.close(linger=5000)
    ctx.term()
    return sent


def _wait_for_endpoint(master_log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"children connect to (ipc://\S+)",
                          master_log.read_text() if master_log.exists() else "")
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise TimeoutError(f"no endpoint in {master_log}")


def test_garbage_from_a_peer_and_from_a_task_is_dropped_and_the_run_goes_on(tmp_path):
    master_log = tmp_path / "run" / "logs" / "master-main.log"
    peer_done = tmp_path / "peer-done"
    peer = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
         f"from test_tree import send_garbage; send_garbage({str(master_log)!r}); "
         f"open({str(peer_done)!r}, 'w').close()"])
    tasks = [Task(task_id="from-a-task", executable=send_garbage, args=(str(master_log),))]
    tasks.append(Task(task_id="wait-for-the-peer", timeout=90, executable=[
        "sh", "-c", f"until [ -e {peer_done} ]; do sleep 0.05; done"]))
    tasks += [Task(task_id=f"c{i}", executable=cube, args=(i,)) for i in range(50)]
    try:
        r = run(tasks, tmp_path, ["localhost"] * 2, nlevels=1, comm_name="zmq",
                master_logs=True)
    finally:
        assert peer.wait(timeout=60) == 0
    assert r.counts() == {"succeeded": 52}
    assert r["from-a-task"].value == 12
    drops = [line for line in master_log.read_text().splitlines()
             if "dropped a bad frame from" in line]
    assert len(drops) == 2 * 12
    assert sum("from b'intruder': not a child of this master" in d for d in drops) == 12


def a_tasks_view_of_the_tree(root_pid: int) -> dict:
    """The environment this task has, and the one that every process from its runner (a
    callable runs in it) up to the root started with, as any task can read them."""
    above = []
    pid = os.getpid()
    while pid not in (root_pid, 0, 1):
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().decode(errors="replace").split("\0")
        above.append(dict(e.split("=", 1) for e in entries if "=" in e))
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return {"own": dict(os.environ), "above": above}


@pytest.mark.parametrize("nlevels, comm", [(1, "zmq"), (2, "zmq"), (2, "multiprocessing")])
def test_tasks_see_no_tree_variable_and_no_key(tmp_path, nlevels, comm, monkeypatch):
    from ensemble_launcher.comm import CurveKeys
    from ensemble_launcher.orchestrator.boot import BootDir

    generate, write = CurveKeys.generate, BootDir.write
    keys, handed = [], {}
    monkeypatch.setattr(CurveKeys, "generate", lambda: keys.append(generate()) or keys[-1])
    monkeypatch.setattr(BootDir, "write", lambda self, child, values: (
        handed.__setitem__(child, set(values)), write(self, child, values))[1])
    tasks = [Task(task_id=f"view{i}", executable=a_tasks_view_of_the_tree, args=(os.getpid(),))
             for i in range(8)]
    tasks += [Task(task_id=f"env{i}", executable="env") for i in range(4)]
    r = run(tasks, tmp_path, ["localhost"] * 2, nlevels=nlevels, nchildren=2,
            bind_address="127.0.0.1", comm_name=comm, return_stdout=True)
    assert r.counts() == {"succeeded": 12}
    secrets = [k.decode() for key in keys for k in vars(key).values()]
    assert len(secrets) == (4 if comm == "zmq" else 0)

    def clean(env: dict, allowed: set[str]) -> None:
        assert {k for k in env if k.startswith("EL_")} <= allowed
        assert not any(s in f"{k}={v}" for k, v in env.items() for s in secrets)

    for i in range(4):
        clean(dict(line.split("=", 1) for line in r[f"env{i}"].stdout.splitlines()
                   if "=" in line), set())
    for i in range(8):
        view = r[f"view{i}"].value
        clean(view["own"], set())
        assert len(view["above"]) == 1 + nlevels  # runner, worker[, sub-master]
        for env in view["above"]:
            clean(env, {"EL_TREE", "EL_BOOT", "EL_CHILD_INDEX"})
    # What the root handed its children (workers at nlevels=1, sub-masters at 2): each the
    # keys its role uses.
    client = {"EL_CURVE_SERVER_PUBLIC", "EL_CURVE_CLIENT_PUBLIC", "EL_CURVE_CLIENT_SECRET"}
    expected = set() if comm != "zmq" else client if nlevels == 1 else \
        client | {"EL_CURVE_SERVER_SECRET"}
    assert {child: {n for n in names if n.startswith("EL_CURVE_")}
            for child, names in handed.items()} == dict.fromkeys(
        ["main.w0", "main.w1"] if nlevels == 1 else ["main.m0", "main.m1"], expected)
    assert not list((tmp_path / "run").glob(".boot-*"))


class _TestParent:
    """The parent of real worker processes (main.w0, or ``names``), played by the test
    (ipc, no keys)."""

    def __init__(self, run_dir: Path, names: tuple[str, ...] = ("main.w0",)) -> None:
        import zmq

        from ensemble_launcher.comm import ParentEndpoint
        from ensemble_launcher.orchestrator.boot import BootDir

        self.run_dir = run_dir
        self.names = names
        self.ctx = zmq.Context()
        self.endpoint = ParentEndpoint(self.ctx, "ipc", None)
        self.boot = BootDir(run_dir / ".boot-main")
        self.got: list = []
        self.got_from: dict[str, list] = {name: [] for name in names}
        self.worker: subprocess.Popen | None = None

    def __enter__(self) -> _TestParent:
        return self

    def __exit__(self, *exc: object) -> None:
        from ensemble_launcher.comm import terminate

        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
        self.endpoint.close()
        self.boot.close()
        terminate(self.ctx)

    def write_boot(self, config: LauncherConfig, ncpus: int = 1) -> None:
        from ensemble_launcher.config import SystemConfig
        from ensemble_launcher.orchestrator.boot import Settings

        for name in self.names:
            self.boot.write(name, {**Settings(
                launcher_config=config.model_dump_json(),
                system_config=SystemConfig(ncpus=ncpus).model_dump_json(),
                run_dir=str(self.run_dir), pin=False, return_stdout=True, check_each=False,
                sys_path=sys.path).to_env(), "EL_PARENT": self.endpoint.address})

    def start_worker(self, hosted: bool = False) -> subprocess.Popen:
        """One process for our worker, or with ``hosted``, one for all of them."""
        import json

        tree = json.dumps([TreeNode(name, "worker", [HERE]).to_dict() for name in self.names])
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "ensemble_launcher.orchestrator.child"],
            env={**os.environ, "EL_BOOT": str(self.boot.path), "EL_TREE": tree,
                 **({"EL_HOSTED": "1"} if hosted else {})})
        return self.worker

    def receive_until(self, kind: type, name: str = "main.w0") -> list:
        deadline = time.monotonic() + 30
        while not any(isinstance(m, kind) for m in self.got_from[name]) and \
                time.monotonic() < deadline:
            self.endpoint.router.poll(50)
            for identity, message in self.endpoint.receive({n.encode() for n in self.names}):
                self.got.append(message)
                self.got_from[identity.decode()].append(message)
        return [m for m in self.got_from[name] if isinstance(m, kind)]


def test_a_worker_drops_garbage_from_its_parent_and_goes_on(tmp_path):
    """A real worker process under a parent played by the test: frames that are not
    messages are dropped and logged, and the task that follows runs."""
    import msgpack

    from ensemble_launcher.comm import Bye, Drain, Hello, ResultBatch, Tasks
    from ensemble_launcher.orchestrator.wire import FunctionTable, task_to_wire

    with _TestParent(tmp_path) as parent:
        parent.write_boot(LauncherConfig(worker_logs=True))
        worker = parent.start_worker()
        assert parent.receive_until(Hello)
        assert not (parent.boot.path / "main.w0.json").exists()
        for frames in ([b"\xc1"], [b""], [msgpack.packb([4, "not a list"])],
                       [msgpack.packb([4, [["short"]], 1])], [msgpack.packb([77])],
                       [b"two", b"parts"]):
            parent.endpoint.router.send_multipart([b"main.w0", *frames])
        task = Task(task_id="after-garbage", executable="echo still here")
        parent.endpoint.send(b"main.w0", Tasks([task_to_wire(1, task, FunctionTable())]))
        parent.endpoint.send(b"main.w0", Drain())
        assert parent.receive_until(Bye)
        rows = [row for m in parent.got if isinstance(m, ResultBatch) for row in m.rows]
        assert [(row[0], row[1]) for row in rows] == [(1, "succeeded")]
        assert worker.wait(timeout=30) == 0
    drops = [line for line in (tmp_path / "logs" / "worker-main.w0.log").read_text()
             .splitlines() if "dropped a bad frame from the parent" in line]
    assert len(drops) == 6


def test_a_child_log_on_a_full_disk_drops_its_lines_without_tracebacks(tmp_path):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "worker-main.w0.log").symlink_to("/dev/full")
    r = run([Task(task_id=f"t{i}", executable="true") for i in range(20)], tmp_path,
            ["localhost"], nlevels=1, worker_logs=True)
    assert r.counts() == {"succeeded": 20}
    launch_log = (logs / "launch-main-0.log").read_text()
    assert "Logging error" not in launch_log and "Traceback" not in launch_log, launch_log


def _el_run(tmp_path: Path, ensemble: dict, launcher: dict, env: dict[str, str],
            nodes: list[str]) -> dict:
    """``el run`` as a user runs it, on ``nodes`` (a PBS node file); its results."""
    import json

    (tmp_path / "e.json").write_text(json.dumps(ensemble))
    (tmp_path / "launcher.json").write_text(json.dumps(launcher))
    (tmp_path / "nodes").write_text("\n".join(nodes) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "ensemble_launcher.cli", "run", str(tmp_path / "e.json"),
         "--launcher-config", str(tmp_path / "launcher.json"), "--return-stdout", "--json",
         str(tmp_path / "results.json"), "--out", str(tmp_path / "run")],
        env={**env, "PBS_NODEFILE": str(tmp_path / "nodes")}, capture_output=True, text=True,
        timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.parametrize("nlevels", [0, 1, 2])
def test_the_users_el_variables_reach_tasks_and_ours_do_not(tmp_path, nlevels):
    """A variable of the user named EL_*, set for ``el run`` or in a task's env, reaches the
    task at every depth; none of the variables we set for the tree does."""
    ensemble = {"ensembles": {"view": {"cmd_template": "sh -c 'env; : {i}'", "i": [0, 1, 2, 3],
                                       "env": {"EL_TASK_SETTING": "from-the-task"}}}}
    launcher = {"nlevels": nlevels, **({"nchildren": 2} if nlevels == 2 else {})}
    results = _el_run(tmp_path, ensemble, launcher, {**os.environ, "EL_MY_SETTING": "mine"},
                      [HERE] if nlevels == 0 else [HERE, "localhost"])
    assert len(results) == 4
    for result in results.values():
        seen = dict(line.split("=", 1) for line in result["stdout"].splitlines() if "=" in line)
        assert {k: v for k, v in seen.items() if k.startswith("EL_")} == {
            "EL_MY_SETTING": "mine", "EL_TASK_SETTING": "from-the-task"}


def _in_every_child(tmp_path: Path, monkeypatch, code: str) -> None:
    """Run ``code`` first in every Python process started from now on (a sitecustomize on
    PYTHONPATH): how a test makes a real child of the tree misbehave."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(hook), os.environ.get("PYTHONPATH")) if p))


def test_bad_result_rows_from_a_known_child_are_dropped_and_every_task_recorded_once(
        tmp_path, monkeypatch):
    """A real worker, patched to send a bad row before the real one for three tasks (a list
    for the signal, a map for the reason, a map for the value): the master drops and logs
    each, and the run ends with every task recorded once, as it ran."""
    _in_every_child(tmp_path, monkeypatch,
        "import os\n"
        "if os.environ.get('EL_TREE'):\n"
        "    from ensemble_launcher.comm import ResultBatch\n"
        "    from ensemble_launcher.orchestrator.parent_link import ParentLink\n"
        "    BAD = {'bad-signal': (4, [15]), 'bad-reason': (2, {'why': 1}),\n"
        "           'bad-value': (5, {'v': 1})}\n"
        "    record = ParentLink.record\n"
        "    def record_after_a_bad_row(self, key, task, result, cpus, gpus):\n"
        "        if task.task_id in BAD:\n"
        "            field, value = BAD[task.task_id]\n"
        "            row = [*result, self._host, cpus, gpus]\n"
        "            row[1:5] = ['failed', 'signal', -15, 15]\n"
        "            row[field] = value\n"
        "            self._send(ResultBatch([row]))\n"
        "        record(self, key, task, result, cpus, gpus)\n"
        "    ParentLink.record = record_after_a_bad_row\n")
    bad = ["bad-signal", "bad-reason", "bad-value"]
    tasks = [Task(task_id=t, executable="true") for t in bad]
    tasks += [Task(task_id=f"c{i}", executable=cube, args=(i,)) for i in range(20)]
    r = run(tasks, tmp_path, ["localhost"], nlevels=1, master_logs=True)
    assert r.counts() == {"succeeded": 23}
    assert all(len(r.attempts(t)) == 1 and r[t].signal is None for t in bad)
    drops = [line for line in (tmp_path / "run" / "logs" / "master-main.log").read_text()
             .splitlines() if "dropped a bad frame from main.w0" in line]
    assert len(drops) == 3 and all("ResultBatch.rows" in d and "row 0 is not" in d for d in drops)


def test_a_child_waits_for_a_start_up_file_that_shows_late(tmp_path):
    """On NFS a file another node has just created can be out of sight for a moment: a real
    worker that finds no start-up file looks again, and connects once the file is there."""
    from ensemble_launcher.comm import Bye, Drain, Hello

    with _TestParent(tmp_path) as parent:
        worker = parent.start_worker()
        time.sleep(2)  # the file shows 2 s after the worker started (it looks for 5 s)
        assert worker.poll() is None
        parent.write_boot(LauncherConfig())
        assert parent.receive_until(Hello)
        parent.endpoint.send(b"main.w0", Drain())
        assert parent.receive_until(Bye)
        assert worker.wait(timeout=30) == 0


def test_a_start_up_file_that_never_shows_is_a_boot_error_naming_it(tmp_path):
    from ensemble_launcher.orchestrator.boot import BootError, read_boot

    with pytest.raises(BootError, match=r"main\.w3: cannot read its start-up file .*main\.w3"
                                         r"\.json \(tried for 0\.3 s\)"):
        read_boot(str(tmp_path), "main.w3", wait=0.3)


def _conversation(parent: _TestParent, name: str, tasks: list[Task]) -> list[tuple]:
    """Hand ``tasks`` to worker ``name`` one at a time, as a master does: the first once it
    asked for work, each next one once the last one's result is back; then drain it. What
    it said, heartbeats and running reports left out (their timing is the clock's), each
    message as its kind and the fields that must agree."""
    from ensemble_launcher.comm import Bye, Drain, Hello, Request, ResultBatch, Tasks
    from ensemble_launcher.orchestrator.wire import FunctionTable, task_to_wire

    def results() -> int:
        return sum(len(m.rows) for m in parent.got_from[name] if isinstance(m, ResultBatch))

    assert parent.receive_until(Hello, name) and parent.receive_until(Request, name)
    for key, task in enumerate(tasks):
        parent.endpoint.send(name.encode(), Tasks([task_to_wire(key, task, FunctionTable())]))
        deadline = time.monotonic() + 30
        while results() <= key and time.monotonic() < deadline:
            parent.endpoint.router.poll(50)
            for identity, message in parent.endpoint.receive({n.encode() for n in parent.names}):
                parent.got_from[identity.decode()].append(message)
    parent.endpoint.send(name.encode(), Drain())
    assert parent.receive_until(Bye, name)
    said = []
    for message in parent.got_from[name]:
        if isinstance(message, Hello):
            said.append(("Hello", message.name, len(message.cpus), tuple(message.gpus)))
        elif isinstance(message, Request):
            said.append(("Request", message.credit))
        elif isinstance(message, ResultBatch) and message.rows:
            said.append(("ResultBatch", tuple((row[0], row[1]) for row in message.rows)))
        elif isinstance(message, Bye):
            said.append(("Bye",))
    return said


def test_a_simulated_node_speaks_the_protocol_of_a_real_worker(tmp_path):
    """A logical node hosted with others in one process (simulated_nodes_per_process)
    runs the real worker's code: given the same tasks, it says to its master what a real
    worker process running real commands says, message for message."""
    tasks = [Task(task_id=f"t{i}", executable="sleep 0.2", estimated_runtime=0.2)
             for i in range(4)]
    quiet = {"node_sample_interval": 0, "heartbeat_interval": 30.0}
    with _TestParent(tmp_path / "real") as parent:
        parent.write_boot(LauncherConfig(**quiet), ncpus=2)
        real = parent.start_worker()
        said_by_real = _conversation(parent, "main.w0", tasks)
        assert real.wait(timeout=30) == 0
    with _TestParent(tmp_path / "simulated", ("main.w0", "main.w1")) as parent:
        parent.write_boot(LauncherConfig(task_executor_name="simulate",
                                         simulated_nodes_per_process=2, **quiet), ncpus=2)
        hosted = parent.start_worker(hosted=True)
        said_by_simulated = _conversation(parent, "main.w0", tasks)
        said_by_its_neighbour = _conversation(parent, "main.w1", tasks[:1])
        assert hosted.wait(timeout=30) == 0
    assert said_by_simulated == said_by_real
    assert said_by_real[0] == ("Hello", "main.w0", 2, ())
    assert [kind for kind, *_ in said_by_real].count("ResultBatch") == 4
    assert said_by_its_neighbour == [("Hello", "main.w1", 2, ()), ("Request", 2),
                                     ("ResultBatch", ((0, "succeeded"),)), ("Request", 1),
                                     ("Bye",)]


def test_simulated_nodes_share_processes_and_run_a_tree_through_real_masters(tmp_path):
    """Twelve logical nodes at nlevels=2, four to a process: the masters start two
    processes each for their six workers, every node connects, every task runs once."""
    from ensemble_launcher.config import SystemConfig

    tasks = (Task(task_id=f"s{i}", executable="true", estimated_runtime=0.02)
             for i in range(3000))
    results = EnsembleLauncher(tasks, SystemConfig(name="simulated", cpus=list(range(8))),
                               LauncherConfig(nlevels=2, nchildren=2, master_logs=True,
                                              task_executor_name="simulate",
                                              simulated_nodes_per_process=4),
                               Nodes=["localhost"] * 12, out_dir=tmp_path / "run").run()
    assert results.counts() == {"succeeded": 3000}
    logs = tmp_path / "run" / "logs"
    for master in ("main.m0", "main.m1"):
        text = (logs / f"master-{master}.log").read_text()
        assert len(re.findall(rf"{master}: started ({master}\.w\d, )*{master}\.w\d on", text)) \
            == 2
        assert len(re.findall(rf"{master}\.w\d connected from", text)) == 6


def test_only_the_simulate_executor_hosts_several_nodes_in_a_process():
    from ensemble_launcher.config.files import build_model

    with pytest.raises(ConfigError) as caught:
        build_model(LauncherConfig, {"simulated_nodes_per_process": 8}, "launcher.json")
    assert "key 'simulated_nodes_per_process'" in str(caught.value)
    assert "only the 'simulate' task executor" in str(caught.value)
    assert LauncherConfig(task_executor_name="simulate",
                          simulated_nodes_per_process=8).simulated_nodes_per_process == 8
