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
from typing import Any

import zmq

from ensemble_launcher.cluster.checkpoint import ClusterFile, ClusterInfo, process_alive
from ensemble_launcher.cluster.protocol import (
    Cancel,
    Closing,
    Done,
    DoneRow,
    Join,
    Ref,
    Refused,
    Shutdown,
    Submit,
    SubmitRecord,
    Welcome,
)
from ensemble_launcher.comm import Define, Heartbeat, Message
from ensemble_launcher.comm.messages import Inbox
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
from ensemble_launcher.orchestrator.wire import FunctionTable, pickle_any
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
#: Seconds between two looks at whether the head is alive (its pid, its heartbeats).
_LIVENESS_CHECK = 0.05
#: Futures ``map`` keeps in flight: enough to keep a large cluster busy, few enough that
#: a million inputs never sit in memory at once.
MAP_WINDOW = 8192
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
        self._ids = itertools.count()
        self._outbox: deque[Message | list[Any]] = deque()
        """Messages, and task records (lists) that go out together as one Submit."""
        self._futures: dict[str, ClusterFuture] = {}
        self._functions = FunctionTable()
        self._defined: set[bytes] = set()
        self._lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._awake = False
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._wake_send: zmq.Socket | None = None
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
        wake_address = f"inproc://el-client-{id(self)}"
        wake_recv = self._ctx.socket(zmq.PULL)
        wake_recv.bind(wake_address)
        self._wake_send = self._ctx.socket(zmq.PUSH)
        self._wake_send.connect(wake_address)
        dealer = self._connect(self.info)
        self._thread = threading.Thread(target=self._serve, args=(dealer, wake_recv),
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
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, self._session.encode())
        dealer.setsockopt(zmq.LINGER, 1000)
        if info.address.startswith("tcp://"):
            if info.keys is None:
                raise ClusterLost(f"{self.checkpoint_dir}: a TCP cluster without keys")
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
        if self._wake_send is not None:
            self._wake_send.close(0)
        if self._ctx is not None:
            self._ctx.term()

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
            task_id, executable = f"{self._session}.{next(self._ids)}", task
            spec = {} if nnodes == 1 and ppn == 1 and not ngpus_per_process and \
                timeout is None else {k: v for k, v in (
                    ("nnodes", nnodes), ("ppn", ppn), ("ngpus_per_process", ngpus_per_process),
                    ("timeout", timeout)) if v != _DEFAULTS[k]}
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
        self._outbox.append(list(record))
        self._wake()
        return future

    def submit_batch(self, tasks: Iterable[Task]) -> list[ClusterFuture]:
        return [self.submit(task) for task in tasks]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, window: int = MAP_WINDOW,
            **options: Any) -> Iterator[Any]:
        """``fn`` over the inputs, results in order, as ``Executor.map``; at most ``window``
        tasks are in flight, so inputs and futures are never all in memory."""
        end = None if timeout is None else time.monotonic() + timeout
        inputs = zip(*iterables, strict=False)
        pending: deque[ClusterFuture] = deque()
        refill = max(1, window // 16)
        try:
            while True:
                if len(pending) <= window - refill:
                    for item in itertools.islice(inputs, window - len(pending)):
                        pending.append(self.submit(fn, *item, **options))
                if not pending:
                    return
                left = None if end is None else max(0.0, end - time.monotonic())
                yield pending.popleft().result(left)
        finally:
            if pending:
                self._cancel_and_wait(list(pending))

    def cancel_tag(self, tag: str) -> None:
        """Cancel every task of the cluster with this ``tag`` that has not finished."""
        self._check_open()
        self._post(Cancel([], tag))

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
        if self._awake or self._wake_send is None:
            return
        with self._wake_lock:
            if not self._awake:
                self._awake = True
                with contextlib.suppress(zmq.ZMQError):
                    self._wake_send.send(b"", zmq.NOBLOCK)

    # -- the client's thread -----------------------------------------------------------------

    def _serve(self, dealer: zmq.Socket, wake: zmq.Socket) -> None:
        assert self.info is not None
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        inbox = Inbox()
        heartbeat = self.info.heartbeat
        last_heard = last_sent = next_check = time.monotonic()
        local_pid = self.info.pid if self.info.host == socket.gethostname() else None
        try:
            stuck = False
            while not self._closing:
                ready = dict(poller.poll(10 if stuck else int(heartbeat * 500)))
                if wake in ready:
                    while True:
                        try:
                            wake.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                self._awake = False
                if self._outbox:
                    stuck = not self._send_outbox(dealer)
                    last_sent = time.monotonic()
                if dealer in ready:
                    last_heard = time.monotonic()
                    self._receive(dealer, inbox)
                now = time.monotonic()
                if self._lost is None and now >= next_check:
                    next_check = now + _LIVENESS_CHECK
                    self._lost = self._head_lost(now - last_heard, heartbeat, local_pid)
                if self._lost is not None:
                    self._welcome.set()
                    self._fail_all(self._lost)
                    break
                if now - last_sent >= heartbeat / 2:
                    _send(dealer, Heartbeat(time.time()))
                    last_sent = now
            if self._outbox and self._lost is None:
                self._send_outbox(dealer)
        finally:
            dealer.close(linger=1000 if self._lost is None else 0)
            wake.close(0)

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

    def _receive(self, dealer: zmq.Socket, inbox: Inbox) -> None:
        while True:
            try:
                frames = dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            message = inbox.decode("the cluster", frames[-1])
            if isinstance(message, Done):
                for row in message.rows:
                    self._settle(DoneRow._make(row))
            elif isinstance(message, Welcome):
                self._welcome.set()
            elif isinstance(message, Refused):
                self._refused = message.why
                self._welcome.set()
            elif isinstance(message, Closing):
                self._lost = ClusterLost(f"the cluster stopped: {message.reason}")

    def _settle(self, row: DoneRow) -> None:
        future = self._futures.pop(row.task_id, None)
        if future is None or future.done():
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

    def _fail_all(self, error: ClusterLost) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = error
            futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                with contextlib.suppress(Exception):
                    future.set_exception(ClusterLost(str(error)))


def _default(option: Any) -> Any:
    if option.default is not MISSING:
        return option.default
    if option.default_factory is not MISSING:
        return option.default_factory()
    return None


_DEFAULTS = {option.name: _default(option) for option in fields(Task)}


def _cancelled_here(future: Future) -> None:
    """Mark a future cancelled and tell whoever waits on it: ``Future.cancel`` alone does
    not wake ``concurrent.futures.wait`` and ``as_completed`` (an executor does that when
    the future would have run: ``set_running_or_notify_cancel``, which refuses a future
    told so before)."""
    if Future.cancel(future):
        with contextlib.suppress(RuntimeError):
            future.set_running_or_notify_cancel()


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
