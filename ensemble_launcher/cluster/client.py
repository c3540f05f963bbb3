"""``ClusterClient``: submit tasks to a running cluster and get ``concurrent.futures`` back.

    user threads --submit()--> outbox (deque) --wake--> client thread --Submit--> head
    user threads <--Future.set_result()-- client thread <--Done-- head

One thread per client owns the socket (ZMQ sockets are not thread-safe); ``submit()``
only builds the task record, appends it and, when the thread is not already awake, wakes
it. The thread batches everything waiting into one message, resolves futures from the
head's results, and fails every pending future with ClusterLost when the head has been
silent for three heartbeats (at once, when the head ran on this host and its pid is gone).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, wait
from concurrent.futures.process import _RemoteTraceback  # type: ignore[attr-defined]
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NamedTuple, cast

import zmq

from ensemble_launcher.cluster.checkpoint import ClusterFile, ClusterInfo, process_alive
from ensemble_launcher.cluster.protocol import (
    AddRule,
    Cancel,
    Closing,
    Done,
    DoneRow,
    Join,
    Ref,
    Refused,
    Shutdown,
    Submit,
    SubmitMap,
    SubmitRecord,
    Welcome,
)
from ensemble_launcher.comm import Define, Heartbeat, Message
from ensemble_launcher.comm.messages import Inbox
from ensemble_launcher.comm.zmq_transport import pending_frames
from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import (
    ClusterLost,
    CommandFailed,
    DependencyFailed,
    InvalidTask,
    LauncherClosedError,
    TaskCancelled,
    TaskError,
    TaskLost,
    TaskNotRun,
    TaskTimedOut,
)
from ensemble_launcher.executors.pickling import pickle_any
from ensemble_launcher.orchestrator.wire import FunctionTable
from ensemble_launcher.states import CANCELLED, LOST, NOT_RUN, SUCCEEDED, TIMED_OUT

log = logging.getLogger("ensemble_launcher")

#: How long start() waits for the head's Welcome.
JOIN_TIMEOUT = 30.0
#: Seconds cancel() waits for the cluster to say how the task ended (a running command
#: is given kill_grace to stop).
_CANCEL_WAIT = 30.0
#: Task records per Submit message.
_SUBMIT_BATCH = 2048
#: Distinct callables a client keeps pickled (a new lambda per task would otherwise pin
#: them all); past this it starts afresh, and sends a callable again if it comes again.
_FUNCTIONS_KEPT = 1024
#: A task submitted this soon after the last one sent at once is left to our thread,
#: which batches a burst of submits into few messages.
_BURST_GAP = 0.0005
#: Seconds between two looks at whether the head is alive (its pid, its heartbeats).
_LIVENESS_CHECK = 0.05
#: Futures ``map`` keeps in flight: enough to keep a large cluster busy, few enough that
#: a million inputs never sit in memory at once.
MAP_WINDOW = 8192
#: Items of a map per message at most: the head starts on the first ones of a window
#: while we pickle the rest.
_MAP_CHUNK = 1024
_TASK_FIELDS = tuple(f.name for f in fields(Task))
_NOT_SPEC = frozenset({"task_id", "executable", "args", "kwargs"})


class ClusterFuture(Future):
    """A task's future. ``cancel()`` also stops the task when it already runs: True unless
    it had finished."""

    __slots__ = ("task_id", "_client", "_is_command")

    def __init__(self, task_id: str, client: ClusterClient, is_command: bool) -> None:
        super().__init__()
        self.task_id = task_id
        self._client = client
        self._is_command = is_command

    def cancel(self) -> bool:
        """Cancel the task, and return once the cluster says how it ended: True if it was
        cancelled (it never ran, or was stopped), False if it had finished."""
        return self._client._cancel_and_wait([self])

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except CancelledError as exc:
            raise self._cancelled_error() from exc

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except CancelledError as exc:
            raise self._cancelled_error() from exc

    def _cancelled_error(self) -> TaskCancelled:
        return TaskCancelled(self.task_id, "cancelled", state=CANCELLED, reason="cancelled")

    def __reduce__(self) -> tuple:
        raise TypeError("a ClusterFuture cannot be pickled; pass it to submit() instead")


class _MapResults:
    """The results of one ``map``'s tasks in flight, by task id, until the map takes them
    (in order). The client's thread puts them; the map's thread waits for the one it
    needs next."""

    __slots__ = ("_rows", "_ready", "_wanted", "_error")

    def __init__(self) -> None:
        self._rows: dict[str, DoneRow] = {}
        self._ready = threading.Condition(threading.Lock())
        self._wanted: str | None = None
        self._error: ClusterLost | None = None

    def fail(self, error: ClusterLost) -> None:
        with self._ready:
            if self._error is None:
                self._error = ClusterLost(str(error))
            self._ready.notify()

    def put_all(self, rows: list[DoneRow]) -> None:
        """The rows of one message at once: one lock and one wake-up for all of them."""
        with self._ready:
            got = self._rows
            for row in rows:
                got[row.task_id] = row
            if self._wanted in got:
                self._ready.notify()

    def take_ready(self, in_flight: deque[str], timeout: float | None,
                   most: int) -> list[DoneRow]:
        """The results of the first tasks of ``in_flight``, in order: the first one, waited
        for, and those after it that have come already (at most ``most`` in all); their
        tasks leave ``in_flight``."""
        ready = [self.take(in_flight[0], timeout)]
        in_flight.popleft()
        with self._ready:
            rows = self._rows
            while in_flight and len(ready) < most and in_flight[0] in rows:
                ready.append(rows.pop(in_flight.popleft()))
        return ready

    def take(self, task_id: str, timeout: float | None) -> DoneRow:
        end = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while task_id not in self._rows:
                if self._error is not None:
                    raise self._error
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"map: no result for {task_id} within the timeout")
                self._wanted = task_id
                self._ready.wait(left)
            self._wanted = None
            return self._rows.pop(task_id)

    def wait_for(self, task_ids: Iterable[str], timeout: float) -> None:
        """Wait until every one of ``task_ids`` has its result (or the cluster is lost)."""
        end = time.monotonic() + timeout
        for task_id in task_ids:
            try:
                self.take(task_id, max(0.0, end - time.monotonic()))
            except (ClusterLost, TimeoutError):
                return


class ClusterClient:
    """A connection to the cluster whose checkpoint directory is ``checkpoint_dir``.

    ``node_id`` routes this client's tasks to a subtree (``main.w0``, ``main.m0``);
    ``global`` (or ``main``) lets the whole tree take them. ``client_id`` names the client
    in the head's log (a fresh name by default)."""

    def __init__(self, checkpoint_dir: str | os.PathLike, node_id: str = "global",
                 client_id: str | None = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.node_id = node_id
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:8]}"
        self._session = f"{self.client_id}-{uuid.uuid4().hex[:6]}"
        self._next_number = 0
        """The number of the next task id this client makes (``<session>.<number>``)."""
        self._outbox: deque[Message | list[Any]] = deque()
        """Messages, and task records (lists) that go out together as one Submit."""
        self._futures: dict[str, ClusterFuture | _MapResults] = {}
        """What waits for each task's result: its future, or the map it belongs to."""
        self._functions = FunctionTable()
        self._defined: set[bytes] = set()
        self._lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._awake = False
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._dealer: zmq.Socket | None = None
        self._socket_lock = threading.Lock()
        """Held by whoever uses the socket: our thread, or a user's sending a task at once."""
        self._last_direct = 0.0
        self._wake_fds: tuple[int, int] | None = None
        self._lost: ClusterLost | None = None
        self._closing = False
        self._welcome = threading.Event()
        self._refused: str | None = None
        self.info: ClusterInfo | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ClusterClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def start(self, timeout: float = JOIN_TIMEOUT) -> ClusterClient:
        """Connect, and return once the head welcomed us; ClusterLost if it does not."""
        if self._thread is not None:
            return self
        self.info = ClusterFile(self.checkpoint_dir).read()
        self._ctx = zmq.Context()
        self._wake_fds = os.pipe()
        for fd in self._wake_fds:
            os.set_blocking(fd, False)
        try:
            self._dealer = dealer = self._connect(self.info)
        except BaseException:
            self._close_wake_pipe()
            self._ctx.term()
            raise
        self._thread = threading.Thread(target=self._serve, args=(dealer, self._wake_fds[0]),
                                        name=f"el-{self.client_id}", daemon=True)
        self._post(Join(self._session, self.node_id, os.getpid(), socket.gethostname()))
        self._thread.start()
        if not self._welcome.wait(timeout) or self._refused is not None or \
                self._lost is not None:
            why = self._refused or (str(self._lost) if self._lost is not None else
                                    f"the cluster in {self.checkpoint_dir} did not answer "
                                    f"within {timeout:.0f} s")
            self.teardown()
            raise ClusterLost(why)
        return self

    def _connect(self, info: ClusterInfo) -> zmq.Socket:
        assert self._ctx is not None
        if info.address.startswith("tcp://") and info.keys is None:
            raise ClusterLost(f"{self.checkpoint_dir}: a TCP cluster without keys")
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, self._session.encode())
        dealer.setsockopt(zmq.LINGER, 1000)
        if info.address.startswith("tcp://"):
            assert info.keys is not None
            dealer.setsockopt(zmq.IPV6, int(info.address.startswith("tcp://[")))
            dealer.setsockopt(zmq.CURVE_SERVERKEY, info.keys.server_public)
            dealer.setsockopt(zmq.CURVE_PUBLICKEY, info.keys.client_public)
            dealer.setsockopt(zmq.CURVE_SECRETKEY, info.keys.client_secret)
        dealer.connect(info.address)
        return dealer

    def teardown(self) -> None:
        """Disconnect. Futures still pending fail with ClusterLost; their tasks go on in
        the cluster, and their results are in its journal."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._closing = True
        self._wake()
        thread.join()
        self._fail_all(ClusterLost(f"the client {self.client_id} was torn down"))
        self._close_wake_pipe()
        if self._ctx is not None:
            self._ctx.term()

    def _close_wake_pipe(self) -> None:
        with self._wake_lock:
            fds, self._wake_fds = self._wake_fds, None
        for fd in fds or ():
            os.close(fd)

    # -- submitting --------------------------------------------------------------------------

    def submit(self, task: Task | Callable[..., Any] | str | Sequence[str], *args: Any,
               nnodes: int = 1, ppn: int = 1, ngpus_per_process: int | float = 0,
               dependencies: Iterable[Future] | None = None, priority: int = 0,
               timeout: float | None = None, **kwargs: Any) -> ClusterFuture:
        """Run ``task`` in the cluster: a Task, a callable (called with ``args`` and
        ``kwargs``) or a command (``args`` appended). Futures among the arguments (also
        inside lists, tuples and dicts) are replaced by their values before it runs;
        ``dependencies`` are waited for without passing values. A failed or cancelled
        dependency fails this task with DependencyFailed, and it never runs."""
        self._check_open()
        if isinstance(task, Task):
            if args or kwargs:
                raise TypeError("submit(Task) takes the task's args in the Task itself")
            spec = {name: getattr(task, name) for name in _TASK_FIELDS
                    if name not in _NOT_SPEC and getattr(task, name) != _DEFAULTS[name]}
            task_id, executable = task.task_id, task.executable
            args, kwargs = task.args, dict(task.kwargs)
        else:
            task_id, executable = f"{self._session}.{self._numbers(1)}", task
            spec = _spec_of(nnodes, ppn, ngpus_per_process, timeout)
        after = [_task_id_of(f) for f in dependencies or ()]
        refs: list[str] = []
        if callable(executable):
            args, kwargs = _with_refs(args, refs), _with_refs(kwargs, refs)
            digest = self._digest(executable)
        else:
            spec["executable"] = executable if isinstance(executable, str) \
                else list(executable or ())
            if args:
                spec["executable"] = _command_with(spec["executable"], args)
            digest = None
        future = ClusterFuture(task_id, self, digest is None)
        blob = None
        if digest is not None and (args or kwargs):
            blob = pickle_any((tuple(args), kwargs))
        record = SubmitRecord(task_id, _plain(spec), digest, blob,
                              list(dict.fromkeys(after + refs)), bool(refs), int(priority), "")
        with self._lock:
            if self._lost is not None:
                raise ClusterLost(str(self._lost))
            if task_id in self._futures:
                raise ValueError(f"task_id {task_id!r} was already submitted by this client")
            self._futures[task_id] = future
        self._send_task(list(record))
        return future

    def _send_task(self, record: list[Any]) -> None:
        """Send a task record from this thread when nothing waits before it and no burst
        of submits is on: a task submitted alone then does not wait for our thread to
        wake. Otherwise our thread sends it, batched with the others."""
        now = time.monotonic()
        if not self._outbox and now - self._last_direct >= _BURST_GAP and \
                self._socket_lock.acquire(blocking=False):
            try:
                dealer = self._dealer
                if dealer is not None and not self._outbox and not self._closing:
                    self._last_direct = now
                    if _send(dealer, Submit([record])):
                        if _message_waits(dealer):
                            self._wake()
                        return
            finally:
                self._socket_lock.release()
        self._outbox.append(record)
        self._wake()

    def submit_batch(self, tasks: Iterable[Task]) -> list[ClusterFuture]:
        return [self.submit(task) for task in tasks]

    def map(self, fn: Callable[..., Any] | str | Sequence[str], *iterables: Iterable[Any],
            timeout: float | None = None, window: int = MAP_WINDOW, nnodes: int = 1,
            ppn: int = 1, ngpus_per_process: int | float = 0,
            dependencies: Iterable[Future] | None = None, priority: int = 0,
            task_timeout: float | None = None, **kwargs: Any) -> Iterator[Any]:
        """``fn`` over the inputs, results in order, as ``Executor.map`` (``timeout``
        bounds the whole map; ``task_timeout`` each task; ``kwargs`` go to every call).
        ``fn`` may be a command, as for ``submit``: each input's items are appended. At
        most ``window`` tasks are in flight, so inputs and results are never all in
        memory. Callables' tasks have no futures of their own: a map of a million of them
        costs the client a fraction of a million ``submit()`` calls. Leaving the loop early
        cancels the tasks still in flight."""
        self._check_open()
        end = None if timeout is None else time.monotonic() + timeout
        inputs = zip(*iterables, strict=False)
        refs: list[str] = []
        kwargs = _with_refs(kwargs, refs)
        if not callable(fn) or refs:
            after = list(dependencies or ())

            def submit(item: tuple) -> ClusterFuture:
                return self.submit(fn, *item, nnodes=nnodes, ppn=ppn,  # type: ignore[arg-type]
                                   ngpus_per_process=ngpus_per_process, dependencies=after,
                                   priority=priority, timeout=task_timeout, **kwargs)
            return self._map_futures(submit, inputs, end, window)
        template = SubmitRecord("", _spec_of(nnodes, ppn, ngpus_per_process, task_timeout),
                                self._digest(fn), None,
                                [_task_id_of(f) for f in dependencies or ()], False,
                                int(priority), "")
        return self._map_chunks(template, kwargs, inputs, end, window)

    def _map_chunks(self, template: SubmitRecord, kwargs: dict[str, Any],
                    inputs: Iterator[tuple], end: float | None,
                    window: int) -> Iterator[Any]:
        results = _MapResults()
        in_flight: deque[str] = deque()
        refill = max(1, window // 16)
        try:
            while True:
                if len(in_flight) <= window - refill:
                    self._fill_window(template, kwargs, inputs, window - len(in_flight),
                                      results, in_flight)
                if not in_flight:
                    return
                left = None if end is None else max(0.0, end - time.monotonic())
                for row in results.take_ready(in_flight, left, refill):
                    yield self._outcome(row, False)
        finally:
            if in_flight:
                self._cancel_map(results, in_flight)

    def _map_futures(self, submit: Callable[[tuple], ClusterFuture], inputs: Iterator[tuple],
                     end: float | None, window: int) -> Iterator[Any]:
        """A map through ``submit()``, a future per task: for commands, and for keyword
        arguments holding futures."""
        pending: deque[ClusterFuture] = deque()
        refill = max(1, window // 16)
        try:
            while True:
                if len(pending) <= window - refill:
                    pending.extend(submit(item) for item in
                                   itertools.islice(inputs, window - len(pending)))
                if not pending:
                    return
                left = None if end is None else max(0.0, end - time.monotonic())
                yield pending[0].result(left)
                pending.popleft()
        finally:
            if pending:
                self._cancel_and_wait(list(pending))

    def _fill_window(self, template: SubmitRecord, kwargs: dict[str, Any],
                     inputs: Iterator[tuple], room: int, results: _MapResults,
                     in_flight: deque[str]) -> None:
        """Up to ``room`` more items sent, _MAP_CHUNK at a time: the head starts on the
        first ones while we pickle the rest of a window."""
        while room > 0:
            want = min(room, _MAP_CHUNK)
            sent = self._submit_items(template, kwargs, itertools.islice(inputs, want),
                                      results, in_flight)
            if sent < want:
                return
            room -= sent

    def _submit_items(self, template: SubmitRecord, kwargs: dict[str, Any],
                      items: Iterable[tuple], results: _MapResults,
                      in_flight: deque[str]) -> int:
        """The items' tasks, sent in one go: runs of plain items as map chunks (the
        template and their arguments), an item holding a future as a record of its own.
        Their results go to ``results``. How many items there were."""
        batch = [_with_refs_of(item, kwargs) for item in items]
        if not batch:
            return 0
        first = self._numbers(len(batch))
        task_ids = [f"{self._session}.{first + place}" for place in range(len(batch))]
        with self._lock:
            if self._lost is not None:
                raise ClusterLost(str(self._lost))
            self._futures.update(dict.fromkeys(task_ids, results))
        in_flight.extend(task_ids)
        self._outbox.extend(_map_messages(template, first, task_ids, batch))
        self._wake()
        return len(batch)

    def _numbers(self, count: int) -> int:
        """The first of ``count`` consecutive numbers for this client's task ids."""
        with self._lock:
            first = self._next_number
            self._next_number += count
        return first

    def _cancel_map(self, results: _MapResults, in_flight: deque[str]) -> None:
        """Cancel a map's tasks in flight and wait (at most _CANCEL_WAIT) until the
        cluster says how each ended, as ``cancel()`` does."""
        if self._thread is None or self._lost is not None:
            return
        self._post(Cancel(list(in_flight), None))
        if threading.current_thread() is not self._thread:
            results.wait_for(in_flight, _CANCEL_WAIT)

    def cancel_tag(self, tag: str) -> None:
        """Cancel every task of the cluster with this ``tag`` that has not finished."""
        self._check_open()
        self._post(Cancel([], tag))

    def add_rule(self, rule: Any) -> None:
        """Add an event rule (``ensemble_launcher.rules.Rule``) to the running cluster: it
        watches the cluster's task events from now on, in the order of our submits, and a
        custom action may be any Python callable (it runs in the head, so keep it short).
        Groups are the tasks' ``ensemble``, else their ``tag``."""
        import cloudpickle

        from ensemble_launcher.ensemble.rules import Rule

        self._check_open()
        if not isinstance(rule, Rule):
            raise TypeError(f"add_rule takes an ensemble_launcher.rules.Rule, not "
                            f"{type(rule).__name__}")
        self._post(AddRule(cloudpickle.dumps(rule)))

    def shutdown_cluster(self) -> None:
        """Ask the head to stop once every task it has is final (el stop)."""
        self._check_open()
        self._post(Shutdown())

    def _cancel_and_wait(self, futures: list[ClusterFuture]) -> bool:
        """Cancel tasks and wait (at most _CANCEL_WAIT) for their final results, so that a
        True answer means the task never runs on: a Cancel may be still on its way down
        the tree when a task there was about to start. From our own thread (a callback)
        we cannot wait; the futures are then cancelled here at once. True if the first
        future ended cancelled."""
        live = [f for f in futures if not f.done()]
        if live and self._thread is not None and self._lost is None:
            self._post(Cancel([f.task_id for f in live], None))
            if threading.current_thread() is not self._thread:
                wait(live, timeout=_CANCEL_WAIT)
        for future in live:
            if not future.done():
                _cancelled_here(future)
        return futures[0].cancelled()

    def _digest(self, fn: Callable[..., Any]) -> bytes:
        with self._lock:
            if len(self._defined) >= _FUNCTIONS_KEPT:
                self._functions, self._defined = FunctionTable(), set()
            digest = self._functions.digest_of(fn)
            if digest not in self._defined:
                self._defined.add(digest)
                self._outbox.append(Define(digest, self._functions.blobs[digest]))
        return digest

    def _check_open(self) -> None:
        if self._lost is not None:
            raise ClusterLost(str(self._lost))
        if self._thread is None:
            raise LauncherClosedError("the ClusterClient is not started (use start() or "
                                      "'with ClusterClient(...) as client')")

    def _post(self, message: Message) -> None:
        self._outbox.append(message)
        self._wake()

    def _wake(self) -> None:
        """Wake the client's thread, once until it ran: under a lock, since any thread
        (a user's, or ours in a future's callback) may submit."""
        if self._awake or self._wake_fds is None:
            return
        with self._wake_lock:
            if not self._awake and self._wake_fds is not None:
                self._awake = True
                with contextlib.suppress(OSError):
                    os.write(self._wake_fds[1], b"\0")

    # -- the client's thread -----------------------------------------------------------------

    def _serve(self, dealer: zmq.Socket, wake: int) -> None:
        """Our thread's loop. It waits on the socket's file descriptor (not on the socket,
        which a user's thread may be sending on meanwhile) and on the wake pipe; every use
        of the socket is under ``_socket_lock``."""
        assert self.info is not None
        poller = select.poll()
        poller.register(cast(int, dealer.getsockopt(zmq.FD)), select.POLLIN)
        poller.register(wake, select.POLLIN)
        inbox = Inbox()
        heartbeat = self.info.heartbeat
        last_heard = last_sent = next_check = time.monotonic()
        local_pid = self.info.pid if self.info.host == socket.gethostname() else None
        try:
            stuck = False
            while not self._closing:
                if not self._readable(dealer) and (stuck or not self._outbox):
                    poller.poll(10 if stuck else int(heartbeat * 500))
                _drain(wake)
                self._awake = False
                with self._socket_lock:
                    if self._outbox:
                        stuck = not self._send_outbox(dealer)
                        last_sent = time.monotonic()
                    frames = _received(dealer)
                if frames:
                    last_heard = time.monotonic()
                    self._receive(frames, inbox)
                now = time.monotonic()
                if self._lost is None and now >= next_check:
                    next_check = now + _LIVENESS_CHECK
                    self._lost = self._head_lost(now - last_heard, heartbeat, local_pid)
                if self._lost is not None:
                    self._welcome.set()
                    self._fail_all(self._lost)
                    break
                if now - max(last_sent, self._last_direct) >= heartbeat / 2:
                    with self._socket_lock:
                        _send(dealer, Heartbeat(time.time()))
                    last_sent = now
            if self._outbox and self._lost is None:
                with self._socket_lock:
                    self._send_outbox(dealer)
        finally:
            with self._socket_lock:
                self._dealer = None
                dealer.close(linger=1000 if self._lost is None else 0)

    def _readable(self, dealer: zmq.Socket) -> bool:
        """Whether a message waits; also re-arms the socket's descriptor (ZMQ signals it
        by edge), so that a poll on it then wakes for the next one."""
        with self._socket_lock:
            return _message_waits(dealer)

    def _head_lost(self, silent: float, heartbeat: float,
                   local_pid: int | None) -> ClusterLost | None:
        if local_pid is not None and not process_alive(local_pid):
            return ClusterLost(f"the cluster's head (pid {local_pid}) is gone")
        if silent > 3 * heartbeat:
            return ClusterLost(f"the cluster in {self.checkpoint_dir} has been silent for "
                               f"{silent:.1f} s (3 heartbeats)")
        return None

    def _send_outbox(self, dealer: zmq.Socket) -> bool:
        """Everything waiting, consecutive task records in one Submit (up to
        _SUBMIT_BATCH). Never blocks: while the head does not take them (no connection
        yet, or a full queue), they stay in the outbox, in order; False then."""
        while self._outbox:
            first = self._outbox.popleft()
            if type(first) is not list:
                if not _send(dealer, first):  # type: ignore[arg-type]
                    self._outbox.appendleft(first)
                    return False
                continue
            tasks = [first]
            while self._outbox and type(self._outbox[0]) is list and \
                    len(tasks) < _SUBMIT_BATCH:
                tasks.append(self._outbox.popleft())  # type: ignore[arg-type]
            if not _send(dealer, Submit(tasks)):
                self._outbox.extendleft(reversed(tasks))
                return False
        return True

    def _receive(self, frames: list[bytes], inbox: Inbox) -> None:
        for frame in frames:
            message = inbox.decode("the cluster", frame)
            if isinstance(message, Done):
                self._settle_rows(message.rows)
            elif isinstance(message, Welcome):
                self._welcome.set()
            elif isinstance(message, Refused):
                self._refused = message.why
                self._welcome.set()
            elif isinstance(message, Closing):
                self._lost = ClusterLost(f"the cluster stopped: {message.reason}")

    def _settle_rows(self, rows: list[list[Any]]) -> None:
        """The results of one Done message (its rows were checked as it was decoded):
        each future's, and each map's all at once."""
        maps: dict[_MapResults, list[DoneRow]] = {}
        pop = self._futures.pop
        for raw in rows:
            row = tuple.__new__(DoneRow, raw)
            waiter = pop(row.task_id, None)
            if isinstance(waiter, _MapResults):
                maps.setdefault(waiter, []).append(row)
            elif waiter is not None:
                self._settle(waiter, row)
        for results, done in maps.items():
            results.put_all(done)

    @staticmethod
    def _settle(future: ClusterFuture, row: DoneRow) -> None:
        if future.done():
            return
        if row.state == CANCELLED:
            _cancelled_here(future)
            return
        try:
            if row.state == SUCCEEDED:
                future.set_result(_value_of(row, future._is_command))
            else:
                future.set_exception(_error_of(row, future._is_command))
        except Exception:  # noqa: BLE001 - a future cancelled meanwhile takes no result
            pass

    @staticmethod
    def _outcome(row: DoneRow, is_command: bool) -> Any:
        """A map's result from its row: the value, or the error raised."""
        if row.state == SUCCEEDED:
            return _value_of(row, is_command)
        if row.state == CANCELLED:
            raise TaskCancelled(row.task_id, "cancelled", state=CANCELLED, reason="cancelled")
        raise _error_of(row, is_command)

    def _fail_all(self, error: ClusterLost) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = error
            futures, self._futures = self._futures, {}
        for future in futures.values():
            if isinstance(future, _MapResults):
                future.fail(error)
            elif not future.done():
                with contextlib.suppress(Exception):
                    future.set_exception(ClusterLost(str(error)))


def _default(option: Any) -> Any:
    if option.default is not MISSING:
        return option.default
    if option.default_factory is not MISSING:
        return option.default_factory()
    return None


_DEFAULTS = {option.name: _default(option) for option in fields(Task)}


def _spec_of(nnodes: int, ppn: int, ngpus_per_process: int | float,
             timeout: float | None) -> dict[str, Any]:
    """The options of a callable or command that differ from a Task's defaults."""
    if nnodes == 1 and ppn == 1 and not ngpus_per_process and timeout is None:
        return {}
    return {key: value for key, value in (
        ("nnodes", nnodes), ("ppn", ppn), ("ngpus_per_process", ngpus_per_process),
        ("timeout", timeout)) if value != _DEFAULTS[key]}


def _cancelled_here(future: Future) -> None:
    """Mark a future cancelled and tell whoever waits on it: ``Future.cancel`` alone does
    not wake ``concurrent.futures.wait`` and ``as_completed`` (an executor does that when
    the future would have run: ``set_running_or_notify_cancel``, which refuses a future
    told so before)."""
    if Future.cancel(future):
        with contextlib.suppress(RuntimeError):
            future.set_running_or_notify_cancel()


def _received(dealer: zmq.Socket) -> list[bytes]:
    """The last frame of every message waiting on the socket."""
    return [frames[-1] for frames in pending_frames(dealer)]


def _message_waits(dealer: zmq.Socket) -> bool:
    return bool(cast(int, dealer.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _send(dealer: zmq.Socket, message: Message) -> bool:
    """False when the head does not take it now (we keep it, and come back)."""
    try:
        dealer.send(message.encode(), zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def _task_id_of(future: Any) -> str:
    if not isinstance(future, ClusterFuture):
        raise TypeError(f"dependencies takes futures of a ClusterClient, not "
                        f"{type(future).__name__}")
    return future.task_id


#: What may hold a future: walked by _with_refs; anything else is passed as it is.
_MAY_HOLD = (ClusterFuture, list, tuple, dict)


def _with_refs(value: Any, refs: list[str]) -> Any:
    """``value`` with every ClusterFuture in it (also inside lists, tuples and dicts)
    replaced by a Ref; their task ids are added to ``refs``. Plain arguments (most) are
    returned as they are, after one look at each."""
    if isinstance(value, ClusterFuture):
        refs.append(value.task_id)
        return Ref(value.task_id)
    kind = type(value)
    if kind is tuple or kind is list:
        if not any(isinstance(item, _MAY_HOLD) for item in value):
            return value
        return kind(_with_refs(item, refs) for item in value)
    if kind is dict:
        if not any(isinstance(item, _MAY_HOLD) for item in value.values()):
            return value
        return {key: _with_refs(item, refs) for key, item in value.items()}
    return value


class _Item(NamedTuple):
    """One input of a map: its arguments pickled, and the tasks of futures among them."""

    args: bytes | None
    refs: list[str]


def _with_refs_of(item: tuple, kwargs: dict[str, Any]) -> _Item:
    """An input of a map; most are plain values, which hold no future: only pickled."""
    if _SCALARS.issuperset(map(type, item)):
        return _Item(pickle_any((item, kwargs)) if item or kwargs else None, [])
    refs: list[str] = []
    args = _with_refs(item, refs)
    return _Item(pickle_any((args, kwargs)) if args or kwargs else None, refs)


#: Types of values that never hold a future.
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _map_messages(template: SubmitRecord, first: int, task_ids: list[str],
                  items: list[_Item]) -> Iterator[Message | list[Any]]:
    """What sends a map's items: a SubmitMap for each run of items without futures, a
    task record for each item with some (it waits for them)."""
    start = 0
    for place, item in enumerate(items):
        if not item.refs:
            continue
        if place > start:
            yield SubmitMap(list(template), first + start, [i.args for i in items[start:place]])
        yield [task_ids[place], template.spec, template.digest, item.args,
               list(dict.fromkeys(template.after + item.refs)), True, template.priority, ""]
        start = place + 1
    if start < len(items):
        yield SubmitMap(list(template), first + start, [i.args for i in items[start:]])


def _command_with(command: str | list[str], args: Sequence[Any]) -> str | list[str]:
    from ensemble_launcher.ensemble.programs import command_line

    return command_line(command, args)


def _plain(spec: dict[str, Any]) -> dict[str, Any]:
    """Task options as msgpack carries them."""
    out = {}
    for key, value in spec.items():
        if isinstance(value, tuple):
            value = list(value)
        elif hasattr(value, "items"):
            value = dict(value)
        out[key] = value
    return out


def _value_of(row: DoneRow, is_command: bool) -> Any:
    if is_command:
        return row.stdout if row.stdout is not None else row.returncode
    return None if row.value is None else pickle.loads(row.value)


def _error_of(row: DoneRow, is_command: bool) -> BaseException:
    """The exception a failed task's future raises: the task's own, with the remote
    traceback as its cause, when the client can rebuild it; else one of our TaskErrors."""
    details: dict[str, Any] = {"state": row.state, "reason": row.reason,
                               "stderr": row.stderr or "", "remote_traceback": row.traceback}
    message = row.exception or row.state
    if row.reason == "exception" and row.value is not None:
        try:
            error = pickle.loads(row.value)
        except Exception:  # noqa: BLE001 - a type this client cannot import
            error = None
        if isinstance(error, BaseException):
            if row.traceback:
                error.__cause__ = _RemoteTraceback(row.traceback)  # type: ignore[arg-type]
            return error
    kind: type[TaskError] = TaskError
    if row.reason == "dependency":
        kind = DependencyFailed
    elif row.reason in ("invalid", "launch"):
        kind = InvalidTask
    elif row.state == TIMED_OUT:
        kind = TaskTimedOut
    elif row.state == LOST:
        kind = TaskLost
    elif row.state == NOT_RUN:
        kind = TaskNotRun
    elif is_command and row.reason in ("exit_code", "signal"):
        tail = f"\n{row.stderr}" if row.stderr else ""
        return CommandFailed(row.task_id, f"{message}{tail}", returncode=row.returncode,
                             signal=row.signal, **details)
    if row.exception and ": " in row.exception:
        details["exception_type"] = row.exception.split(": ", 1)[0]
    error = kind(row.task_id, message, **details)
    if row.traceback:
        error.__cause__ = _RemoteTraceback(row.traceback)  # type: ignore[arg-type]
    return error


__all__ = ["CancelledError", "ClusterClient", "ClusterFuture"]
