"""What a tool call does: tasks into the cluster, their results back to the agent.

Every call submits through the server's one ``ClusterClient`` (its ``submit`` is
thread-safe, its futures resolve on the client's thread) and waits for the futures on
the server's event loop (woken from the client's thread), so a long call never holds a
thread and calls run side by side. Task ids are the server's random prefix and a
counter, so two calls, or two servers on one cluster, never share one.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import CommandFailed, ConfigError, TaskError


@dataclass(frozen=True)
class Resources:
    """What each task of a tool asks for; a command also runs in the directory the tool
    was registered from, so that ``./sim`` means the server's own ``./sim``."""

    nnodes: int = 1
    ppn: int = 1
    gpus_per_process: int | float = 0
    env: Mapping[str, str] = field(default_factory=dict)
    run_dir: str | None = None


class TaskIds:
    """Fresh task ids: ``mcp-<random>.<n>``."""

    def __init__(self) -> None:
        self._prefix = f"mcp-{uuid.uuid4().hex[:12]}"
        self._count = itertools.count()

    def __next__(self) -> str:
        return f"{self._prefix}.{next(self._count)}"


def checked_resources(resources: Resources, tool_name: str, is_callable: bool) -> None:
    """A tool's resources checked as a Task checks them, when it is registered rather than
    at each call; a Python callable runs on one core of one node, as in every cluster."""
    try:
        make_task("check", "true", (), {}, resources)
    except ConfigError as exc:
        raise ConfigError(f"tool {tool_name!r}: {str(exc).split(': ', 1)[-1]}") from None
    if is_callable and (resources.nnodes != 1 or resources.ppn != 1):
        raise ConfigError(f"tool {tool_name!r}: a Python function runs on one core "
                          f"(nnodes=1, ppn=1), not nnodes={resources.nnodes}, "
                          f"ppn={resources.ppn}; run MPI programs as a command template")


def make_task(task_id: str, executable: Callable[..., Any] | str, args: tuple[Any, ...],
              kwargs: dict[str, Any], resources: Resources) -> Task:
    return Task(task_id=task_id, executable=executable, args=args, kwargs=kwargs,
                nnodes=resources.nnodes, ppn=resources.ppn,
                ngpus_per_process=resources.gpus_per_process, env=dict(resources.env),
                run_dir=resources.run_dir if isinstance(executable, str) else None)


def stdout_of(value: Any, checkpoint_dir: os.PathLike | str) -> str:
    """A command's stdout; a cluster started without return_stdout answers its exit
    status instead, which we do not pass off as output."""
    if isinstance(value, str):
        return value
    raise ToolError(f"the cluster in {checkpoint_dir} does not return the commands' "
                    "stdout: start it with LauncherConfig(return_stdout=True) (el start "
                    "--return-stdout)")


def failure_text(error: BaseException) -> str:
    """One call's failure as the agent reads it."""
    described = failure_record(error)
    text = f"{described['type']}: {described['message']}"
    if described.get("stderr"):
        text += f"\nstderr (tail):\n{described['stderr']}"
    return text


def failure_record(error: BaseException) -> dict[str, Any]:
    """An element's failure in its own place of an ensemble's result: the exception's
    type and message, or a command's exit code, signal and stderr tail."""
    if isinstance(error, CommandFailed):
        record: dict[str, Any] = {"type": "CommandFailed", "message": _message(error),
                                  "exit_code": error.returncode}
        if error.signal is not None:
            record["signal"] = error.signal
        record["stderr"] = error.stderr
        return record
    if isinstance(error, TaskError):
        record = {"type": error.exception_type or type(error).__name__,
                  "message": _message(error)}
        if error.stderr:
            record["stderr"] = error.stderr
        return record
    return {"type": type(error).__name__, "message": str(error)}


def _message(error: TaskError) -> str:
    first = error.message.split("\n", 1)[0]
    if error.exception_type and first.startswith(f"{error.exception_type}: "):
        return first[len(error.exception_type) + 2:]
    return first


async def run_one(submit: Callable[[Task], Future], task: Task) -> Any:
    """The task's value; its failure as a tool error."""
    future = submit(task)
    try:
        await _finished(future)
        return future.result()
    except asyncio.CancelledError:
        _cancel_in_background([future])
        raise
    except Exception as exc:  # noqa: BLE001 - every failure of the task is the agent's to read
        raise ToolError(failure_text(exc)) from exc


def _finished(future: Future) -> asyncio.Future[None]:
    """Done once ``future`` is. Not ``asyncio.wrap_future``: cancelling what it returns
    calls ``future.cancel()`` on the event loop, and a ClusterFuture's cancel waits for
    the cluster's answer (seconds, for a running command), which would stall every call."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(lambda _f: loop.call_soon_threadsafe(wake))
    return waiter


async def run_ensemble(submit: Callable[[Task], Future], tasks: Sequence[Task | Exception],
                       context: Context, value: Callable[[Any], Any] = lambda v: v) -> list[Any]:
    """Each task's value (``value`` of it) or failure record, in input order; an element
    whose task could not be made (an exception in its place) fails alone. Progress is
    reported each time the loop finds elements finished (several at once when they finish
    together), so a large call sends far fewer notifications than elements."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Queue[int] = asyncio.Queue()
    results: list[Any] = [None] * len(tasks)
    futures: dict[int, Future] = {}
    for index, task in enumerate(tasks):
        if isinstance(task, Exception):
            results[index] = {"error": failure_record(task)}
            continue
        futures[index] = future = submit(task)
        future.add_done_callback(functools.partial(_tell, loop, finished, index))
    done = len(tasks) - len(futures)
    try:
        while done < len(tasks):
            indices = [await finished.get()]
            while not finished.empty():
                indices.append(finished.get_nowait())
            for index in indices:
                results[index] = _outcome(futures[index], value)
            done += len(indices)
            await context.report_progress(done, len(tasks))
    except asyncio.CancelledError:
        _cancel_in_background([f for f in futures.values() if not f.done()])
        raise
    return results


def _tell(loop: asyncio.AbstractEventLoop, finished: asyncio.Queue[int], index: int,
          _future: Future) -> None:
    loop.call_soon_threadsafe(finished.put_nowait, index)


def _outcome(future: Future, value: Callable[[Any], Any]) -> Any:
    try:
        error = future.exception()
    except TaskError as cancelled:
        error = cancelled
    if error is None:
        try:
            return value(future.result())
        except ToolError as exc:
            return {"error": {"type": "ToolError", "message": str(exc)}}
    return {"error": failure_record(error)}


def _cancel_in_background(futures: list[Future]) -> None:
    """Cancel the tasks of a call the agent gave up on; ``cancel()`` waits for the
    cluster's answer, so it runs off the event loop."""
    if not futures:
        return
    def cancel_all() -> None:
        for future in futures:
            future.cancel()

    asyncio.get_running_loop().run_in_executor(None, cancel_all)
