"""The pieces of the orchestrator, in-process, each with small fakes around it: the Ledger's
book, a node's slots, the multi-node gangs, a link's credit, the one termination
policy, and the settings a child is given. Whole runs cover them too; these say what each
promises on its own."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ensemble_launcher.comm import Hello, Hold, PipeParentEndpoint, Release, Request, RunHeld, Tasks
from ensemble_launcher.ensemble import Task
from ensemble_launcher.executors.command import stop_processes
from ensemble_launcher.executors.mpi import MpiLaunch
from ensemble_launcher.monitor import Counts
from ensemble_launcher.orchestrator.boot import OUR_VARIABLES, Settings
from ensemble_launcher.orchestrator.gangs import GangScheduler
from ensemble_launcher.orchestrator.ledger import Ledger, RetryPolicy, Submission
from ensemble_launcher.orchestrator.parent_link import ParentLink
from ensemble_launcher.orchestrator.wire import WireTask
from ensemble_launcher.scheduler import NodeSlots
from ensemble_launcher.states import FAILED, LOST, SUCCEEDED, RunResult

# -- the Ledger ----------------------------------------------------------------------------


class FakeStore:
    """The journal as the ledger sees it: nothing finished in an earlier life."""

    def archive_final(self, task_id: str) -> None:
        pass

    def final_outcome(self, task_id: str) -> None:
        return None


class FakeRecorder:
    """Keeps what the ledger records, as (task_id, state, reason, attempt, final)."""

    def __init__(self) -> None:
        self.counts = Counts({})
        self.store = FakeStore()
        self.rows: list[tuple] = []

    def add(self, task, result, host, cpus, gpus, attempt=1, final=True) -> None:
        self.rows.append((task.task_id, result.state, result.reason, attempt, final))

    def finals(self) -> dict[str, tuple]:
        return {row[0]: row[1:3] for row in self.rows if row[4]}


def result(state: str, reason: str | None = None, value: bytes | None = None) -> RunResult:
    return RunResult(0, state, reason, 0 if state == SUCCEEDED else 1, None, value, None, None,
                     None, "", 1.0, 2.0)


def ledger(stream=(), *, closed=True, retries=0, node_loss_retries=3):
    recorder = FakeRecorder()
    book = Ledger(list(stream), recorder, RetryPolicy(retries=retries,
                                                      node_loss_retries=node_loss_retries),
                  closed=closed)
    return book, recorder


def command(task_id: str, **options) -> Task:
    return Task(task_id=task_id, executable="true", **options)


def take_all(book: Ledger) -> list[tuple[int, Task]]:
    out = []
    while (item := book.take()) is not None:
        out.append(item)
    return out


def test_the_ledger_hands_out_by_priority_the_stream_before_equal_submissions():
    book, _ = ledger([command("s0"), command("s1")], closed=False)
    for task_id, priority in (("low", -1), ("zero", 0), ("high", 5), ("high2", 5)):
        book.submit(Submission(command(task_id), priority=priority))
    order = [task.task_id for _, task in take_all(book)]
    assert order == ["high", "high2", "s0", "s1", "zero", "low"]


def test_an_open_ledger_is_never_exhausted_a_closed_one_once_nothing_is_left_to_hand_out():
    book, _ = ledger(closed=False)
    assert book.take() is None and not book.exhausted
    book.submit(Submission(command("a")))
    book.close()
    assert not book.exhausted
    (key, _), = take_all(book)
    assert book.exhausted
    book.finished(key, result(SUCCEEDED), "h", "0", "")
    assert book.exhausted


def test_a_failure_is_retried_under_a_fresh_key_and_every_attempt_recorded():
    book, recorder = ledger([command("a")], retries=1)
    (first, _), = take_all(book)
    book.finished(first, result(FAILED, "exit_code"), "h", "0", "")
    (second, task), = take_all(book)
    assert task.task_id == "a" and second != first
    book.finished(first, result(SUCCEEDED), "h", "0", "")
    book.finished(second, result(FAILED, "exit_code"), "h", "0", "")
    assert recorder.rows == [("a", FAILED, "exit_code", 1, False),
                             ("a", FAILED, "exit_code", 2, True)]
    assert book.exhausted


def test_a_lost_node_runs_its_task_again_and_a_late_answer_is_dropped():
    book, recorder = ledger([command("a")], node_loss_retries=1)
    (first, _), = take_all(book)
    book.lost([first], "main.w0", "h0", "no heartbeat")
    (second, _), = take_all(book)
    book.finished(first, result(SUCCEEDED), "h0", "0", "")
    assert recorder.finals() == {}
    book.lost([second], "main.w1", "h1", "no heartbeat")
    assert recorder.finals() == {"a": (LOST, "node_lost")}


def test_a_dependent_waits_for_its_dependency_and_gets_its_value():
    book, recorder = ledger(closed=False)
    seen = {}

    def resolve(task, values):
        seen.update(values)
        return task

    book.submit(Submission(command("a")))
    book.submit(Submission(command("b"), after=("a",), resolve=resolve))
    (key, task), = take_all(book)
    assert task.task_id == "a"
    book.finished(key, result(SUCCEEDED), "h", "0", "")
    (_, task), = take_all(book)
    assert task.task_id == "b" and list(seen) == ["a"]


def test_a_failed_dependency_fails_its_dependents_which_never_run():
    book, recorder = ledger(closed=False)
    book.submit(Submission(command("a")))
    book.submit(Submission(command("b"), after=("a",)))
    book.submit(Submission(command("c"), after=("b",)))
    (key, _), = take_all(book)
    book.finished(key, result(FAILED, "exit_code"), "h", "0", "")
    assert take_all(book) == []
    assert recorder.finals() == {"a": (FAILED, "exit_code"), "b": (FAILED, "dependency"),
                                 "c": (FAILED, "dependency")}


def test_a_cancel_records_a_waiting_task_at_once_and_passes_a_running_ones_key_on():
    book, recorder = ledger(closed=False)
    book.submit(Submission(command("running")))
    book.submit(Submission(command("waiting"), priority=-1))
    key, _ = book.take()
    assert book.cancel("waiting") and book.cancel("running")
    assert recorder.finals() == {"waiting": ("cancelled", "cancelled")}
    assert book.take_cancels() == [key] and take_all(book) == []
    assert not book.cancel("never-submitted")


# -- a node's slots ------------------------------------------------------------------------


def test_one_core_tasks_queue_round_robin_up_to_the_depth():
    slots = NodeSlots([4, 5], [], depth=2)
    lanes = [slots.place(command(f"t{i}")) for i in range(4)]
    assert [p.lane for p in lanes] == [0, 1, 0, 1] and [p.cpus for p in lanes[:2]] == [(4,), (5,)]
    assert slots.place(command("t4")) is None and not slots.has_room() and slots.room() == 0
    slots.release(lanes[1])
    assert slots.room() == 1 and slots.place(command("t5")).lane == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["one", "wide", "pinned", "release", "depth"]),
                          st.integers(0, 7)), max_size=60))
def test_the_room_a_node_asks_for_is_what_its_lanes_would_queue(steps):
    """room() is kept up to date as tasks come and go (a node asks on every turn); it must
    say what counting the lanes says, whatever the mix of queued and exclusive tasks."""
    slots = NodeSlots([0, 1, 2, 3], [], depth=2)
    placed = []
    for kind, n in steps:
        if kind == "release" and placed:
            slots.release(placed.pop(n % len(placed)))
        elif kind == "depth":
            slots.depth = 1 + n % 4
        elif kind != "release":
            task = {"one": command("t"), "wide": command("w", ppn=1 + n % 3),
                    "pinned": command("p", cpu_affinity=[n % 4])}[kind]
            placement = slots.place(task)
            if placement is not None:
                placed.append(placement)
        counted = sum(slots.depth - q for lane, q in enumerate(slots.queued)
                      if not slots._held[lane] and q < slots.depth)
        assert slots.room() == counted


def test_an_exclusive_task_waits_for_idle_lanes_and_holds_them():
    slots = NodeSlots([0, 1, 2], [], depth=4)
    queued = slots.place(command("short"))
    wide = command("wide", ppn=3)
    assert slots.place(wide) is None
    slots.release(queued)
    placement = slots.place(wide)
    assert placement.cpus == (0, 1, 2) and placement.exclusive
    assert slots.place(command("short")) is None
    slots.release(placement)
    assert slots.place(command("short")) is not None


def test_gpu_slots_go_to_distinct_devices_before_two_share_one():
    slots = NodeSlots([0, 1, 2, 3], ["0", "0", "1", "1"])
    first = slots.place(command("a", ngpus_per_process=1))
    second = slots.place(command("b", ngpus_per_process=1))
    assert {first.gpus, second.gpus} == {("0",), ("1",)}
    both = NodeSlots([0, 1], ["0", "0", "1", "1"]).place(command("c", ngpus_per_process=2))
    assert both.gpus == ("0", "1")


# -- multi-node gangs ----------------------------------------------------------------------


def wire(key: int, nnodes: int = 2, ppn: int = 2) -> WireTask:
    return WireTask(key, f"mpi-{key}", None, "./a.out", None, None, nnodes, ppn, 0, [], [],
                    None, None, None, None, None, 0.0)


WORKERS = {b"main.w0": ("h0", [0, 1, 2, 3], []), b"main.w1": ("h1", [0, 1, 2, 3], []),
           b"main.w2": ("h2", [0, 1, 2, 3], [])}
HOSTS = {name: host for name, (host, _, _) in WORKERS.items()}


def gangs() -> tuple[GangScheduler, list]:
    sent: list = []
    return GangScheduler(lambda member, message: sent.append((member, message)),
                         lambda: MpiLaunch("hydra")), sent


def test_a_gang_is_reserved_on_all_its_nodes_then_run_once_by_its_leader():
    book, sent = gangs()
    book.offer(1, wire(1))
    book.offer(2, wire(2))
    assert book.advance(WORKERS) is None
    assert sent == [(b"main.w0", Hold(1, [0, 1], [])), (b"main.w1", Hold(1, [0, 1], []))]
    sent.clear()
    assert book.advance(WORKERS) is None and sent == []
    assert book.held(b"main.w0", 1, HOSTS) is None
    leader, key, task = book.held(b"main.w1", 1, HOSTS)
    assert (leader, key) == (b"main.w0", 1) and "h0,h1" in " ".join(task.command)
    assert sent == [(b"main.w0", RunHeld(1, task))]
    sent.clear()
    assert book.finished(1) == "h0,h1" and sent == [(b"main.w1", Release(1))]
    sent.clear()
    book.advance(WORKERS)
    assert [type(m) for _, m in sent] == [Hold, Hold] and sent[0][1].key == 2


def test_a_gang_wider_than_the_live_workers_is_refused_and_a_lost_member_frees_the_rest():
    book, sent = gangs()
    book.offer(1, wire(1, nnodes=4))
    assert book.advance(WORKERS) == (1, wire(1, nnodes=4)) and not book.busy
    book.offer(2, wire(2))
    book.advance(WORKERS)
    sent.clear()
    assert book.member_lost(b"main.w0") == 2
    assert sent == [(b"main.w1", Release(2))] and not book.busy


# -- a link's credit -----------------------------------------------------------------------


def test_a_link_asks_for_its_shortfall_once_it_is_worth_a_message():
    parent = PipeParentEndpoint()
    fd = parent.pair_for(b"main.w0").detach()
    link = ParentLink(None, f"fd://{fd}", "main.w0", None, heartbeat_interval=60,
                      decode_tasks=False)
    try:
        def requests() -> list[int]:
            """The credit asked for so far: a Hello sent after it marks the end (a pipe
            keeps the order), so that "nothing asked" needs no waiting."""
            link.hello([], [])
            deadline = time.monotonic() + 5
            got: list = []
            while time.monotonic() < deadline and not any(isinstance(m, Hello) for m in got):
                got += [m for _, m in parent.receive({b"main.w0"})]
            return [m.credit for m in got if isinstance(m, Request)]

        link.want(10)
        assert requests() == [10]
        link.want(10)
        parent.send(b"main.w0", Tasks([list(wire(k, nnodes=1)) for k in range(6)]))
        keys: list[int] = []
        deadline = time.monotonic() + 5
        while len(keys) < 6 and time.monotonic() < deadline:
            link.pump()
            while (item := link.take()) is not None:
                keys.append(item[0])
        assert keys == list(range(6))
        link.want(10)
        assert requests() == [6]
        link.want(7)
        assert requests() == []
    finally:
        link.close()
        parent.close()


# -- the one termination policy ------------------------------------------------------------


def _sleep(ready) -> None:
    ready.set()
    time.sleep(60)


def _ignore_sigterm_and_sleep(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _sleep(ready)


@pytest.mark.parametrize("target, ends_by", [(_sleep, signal.SIGTERM),
                                             (_ignore_sigterm_and_sleep, signal.SIGKILL)])
def test_stop_processes_sends_sigterm_then_sigkill_after_the_grace(target, ends_by):
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    proc = context.Process(target=target, args=(ready,))
    proc.start()
    assert ready.wait(10)
    stop_processes([proc], grace=0.5)
    assert proc.exitcode == -ends_by


# -- what a child of the tree is given -----------------------------------------------------


def test_a_childs_settings_read_back_as_they_were_written():
    settings = Settings(launcher_config='{"kill_grace": 2.0}', system_config="{}",
                        run_dir="/runs/r 1", pin=True, return_stdout=False, check_each=True,
                        sys_path=["/home/me/proj", ""])
    env = settings.to_env()
    assert set(env) <= OUR_VARIABLES and all(type(v) is str for v in env.values())
    assert Settings.from_env({**env, "EL_USERS_OWN": "x"}) == settings


# -- a run given no config -----------------------------------------------------------------


def test_the_defaults_a_run_without_configs_uses_are_the_models_defaults():
    from ensemble_launcher.config import LauncherConfig, SystemConfig
    from ensemble_launcher.config.defaults import (
        LAUNCHER_DEFAULTS,
        config_dump,
        launcher_defaults,
        system_defaults,
    )

    assert LauncherConfig().model_dump() == LAUNCHER_DEFAULTS
    assert config_dump(launcher_defaults()) == LauncherConfig().model_dump()
    assert config_dump(system_defaults()) == SystemConfig(name="local").model_dump()


def test_a_run_without_configs_starts_without_pydantic_and_records_the_default_configs(
        tmp_path):
    script = f"""
import sys
from ensemble_launcher import EnsembleLauncher
el = EnsembleLauncher({{"ensembles": {{"one": {{"cmd_template": "true"}}}}}},
                      out_dir={str(tmp_path / "run")!r})
assert el.run().counts() == {{"succeeded": 1}}
assert "pydantic" not in sys.modules, "pydantic was imported"
from ensemble_launcher.config import LauncherConfig, SystemConfig
assert el.launcher_config == LauncherConfig()
assert el.system_config == SystemConfig(name="local")
from ensemble_launcher.store import Results
meta = Results(el.run_dir).meta()
assert meta["launcher_config"] == LauncherConfig().model_dump(), meta["launcher_config"]
assert meta["system_config"] == SystemConfig(name="local").model_dump()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
