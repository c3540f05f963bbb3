"""Blocks as local processes: the provider path (blocks, walltime, cancel) without a
scheduler, for tests and for trying a provider config on a laptop.

A block is its bash block script, in a process group of its own, starting ``argv`` once per
"node" with ``EL_CHILD_INDEX`` 0, 1, ... (the local launcher's rank variable). Like a
scheduler, we enforce the walltime: SIGTERM to the group when it is reached, SIGKILL
``KILL_WAIT`` seconds later; a block that ran out of time ends FAILED with a message saying
so, as Slurm's TIMEOUT does. All of it happens in ``poll`` (which the root's loop calls
a few times a second, and ``BlockPool.close`` until every block ended): no thread.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ensemble_launcher.executors.command import group_alive, signal_group
from ensemble_launcher.launchers.local import INDEX_ENV
from ensemble_launcher.providers.base import (
    Block,
    BlockRequest,
    BlockState,
    Provider,
    write_block_script,
)

if TYPE_CHECKING:
    from ensemble_launcher.config.models import ProviderConfig

#: Seconds between SIGTERM and SIGKILL when a block is stopped (Slurm's KillWait).
KILL_WAIT = 5.0


@dataclass
class _Running:
    """A block's process and why and when we stop it."""

    process: subprocess.Popen
    deadline: float
    stop_reason: BlockState | None = None
    term_sent: float | None = None
    returncode: int | None = None
    ended: float | None = None


class LocalProvider(Provider):
    name = "local"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._running: dict[int, _Running] = {}

    def launch_lines(self, request: BlockRequest) -> list[str]:
        command = shlex.join(request.argv)
        starts = [f"{INDEX_ENV}={i} {command} &\npids=\"$pids $!\"" for i in range(request.nodes)]
        return ["pids=", *starts, "status=0",
                'for pid in $pids; do wait "$pid" || status=$?; done', 'exit "$status"']

    def script(self, request: BlockRequest) -> str:
        return self.block_script(request)

    def submit(self, request: BlockRequest) -> Block:
        path = write_block_script(request, self.block_script(request))
        with open(request.output_path, "ab") as out, open(request.error_path, "ab") as err:
            process = subprocess.Popen([str(path)], cwd=request.work_dir, stdout=out,
                                       stderr=err, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        now = time.time()
        self._running[request.index] = _Running(
            process, time.monotonic() + self.config.walltime_seconds)
        return Block(request.index, str(process.pid), BlockState.RUNNING, submitted=now,
                     started=now)

    def poll(self, blocks: Iterable[Block]) -> None:
        """Ends blocks at their walltime, kills those that outlive KILL_WAIT, and reports
        those whose whole process group is gone."""
        now = time.monotonic()
        for block in blocks:
            running = self._running.get(block.index)
            if running is None or block.state.ended:
                continue
            if running.ended is None:
                if running.term_sent is None and now >= running.deadline:
                    self._stop(block.index, BlockState.FAILED)
                self._watch_one(running, now)
            if running.ended is not None:
                block.state, block.message = _outcome(running)
                block.ended = running.ended

    def cancel(self, block: Block) -> None:
        self._stop(block.index, BlockState.CANCELLED)

    def _stop(self, index: int, reason: BlockState) -> None:
        running = self._running.get(index)
        if running is None or running.ended is not None or running.term_sent is not None:
            return
        running.stop_reason, running.term_sent = reason, time.monotonic()
        signal_group(running.process.pid, signal.SIGTERM)

    def _watch_one(self, running: _Running, now: float) -> None:
        pgid = running.process.pid
        if running.returncode is None:
            running.returncode = running.process.poll()
        if running.term_sent is not None and now - running.term_sent >= KILL_WAIT:
            signal_group(pgid, signal.SIGKILL)
        if running.returncode is not None and not group_alive(pgid):
            running.ended = time.time()


def _outcome(running: _Running) -> tuple[BlockState, str]:
    if running.stop_reason is BlockState.CANCELLED:
        return BlockState.CANCELLED, "cancelled"
    if running.stop_reason is BlockState.FAILED:
        return BlockState.FAILED, "the block reached its walltime and was stopped"
    if running.returncode == 0:
        return BlockState.COMPLETED, ""
    return BlockState.FAILED, f"the block script exited with status {running.returncode}"
