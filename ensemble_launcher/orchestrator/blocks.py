"""The root's blocks: batch jobs whose workers join the tree while it runs (providers).

    Master(main) --BlockPool.wanted()--> submit a block: its workers' entries and start-up
        files first, then the provider's job (``providers``), which starts one worker per
        node; the workers connect back like any child
    BlockPool.poll(): the scheduler's word on each job (pending, running, ended)
    BlockPool.closing(): blocks near their walltime stop taking tasks and drain
    BlockPool.idle(): blocks with nothing to do for max_idletime are cancelled

The pool decides and keeps the books; the master owns the children and their tasks. How
many blocks: Parsl's rule, ``ceil(outstanding * parallelism / slots per block)`` between
``min_blocks`` and ``max_blocks`` (any outstanding work wants at least one), plus what the
rules' ``grow`` and ``shrink`` added. A block that drains before its walltime no longer
counts, so its replacement is submitted while it finishes. ``submit_retries`` blocks in a
row that never had a worker connect (a rejected submission, a job that ended before its
workers started) end the run with the scheduler's own message.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ensemble_launcher.errors import ProviderError
from ensemble_launcher.providers import Block, BlockRequest, BlockState, Provider
from ensemble_launcher.states import BlockRecord

log = logging.getLogger("ensemble_launcher")

#: Seconds between two looks at the scheduler's queue and the pool's policy.
TEND_SECONDS = 0.25
#: Seconds a failed block waits, times the failures in a row, before the next submission.
_BACKOFF_SECONDS = 2.0


@dataclass(frozen=True)
class Elasticity:
    """What a provider config says about how many blocks, as plain values."""

    nodes_per_block: int
    init_blocks: int
    min_blocks: int
    max_blocks: int
    parallelism: float
    walltime: float
    max_idletime: float
    submit_retries: int
    cpus_per_node: int
    """Slots a node of a block gives, until a worker tells its own."""


@dataclass
class _Held:
    """A block as the pool sees it: its job, its workers' names, and what they did."""

    block: Block
    workers: list[bytes]
    output: Path | None = None
    """Where the block script's output goes (for errors that point there)."""
    hosts: list[str] = field(default_factory=list)
    connected: int = 0
    retiring: bool = False
    """We cancelled it (idle, shrunk, or the run ended): its end is not a failure."""
    closing: bool = False
    """Drained before its walltime: it finishes what it holds, then its workers leave."""
    replaced: bool = False
    """Near enough its walltime that a replacement is submitted."""
    busy_at: float = field(default_factory=time.time)
    recorded: tuple = ()

    @property
    def counts(self) -> bool:
        """Whether it counts toward the blocks we want: submitted or running, not leaving."""
        return not (self.block.state.ended or self.retiring or self.closing or self.replaced)


class BlockPool:
    def __init__(self, provider: Provider, elastic: Elasticity, *,
                 waiting: Callable[[], int], on_change: Callable[[BlockRecord], None],
                 safety: float, first_index: int = 0) -> None:
        self.provider = provider
        self.elastic = elastic
        self._waiting = waiting
        self._on_change = on_change
        self.safety = safety
        """Seconds kept free before a block's walltime, beyond the longest task seen."""
        self._held: dict[int, _Held] = {}
        self._by_worker: dict[bytes, _Held] = {}
        self._next_index = first_index
        """A resumed run or a restarted cluster numbers its blocks on from the journal's."""
        self._began = False
        self._failures = 0
        self._last_failure = ""
        self._next_try = 0.0
        self._offset = 0
        """Blocks the rules asked for beyond (or below) the policy's."""
        self.slots_per_node = elastic.cpus_per_node
        self.queue_wait = 0.0
        """The longest a block of this run waited in the queue: replacements are submitted
        that much earlier."""

    # -- how many ----------------------------------------------------------------------------

    def wanted(self, inflight: int, now: float) -> int:
        """How many blocks to submit now for ``inflight`` tasks in the tree and those
        waiting in the ledger."""
        if now < self._next_try:
            return 0
        if not self._began:
            self._began = True
            return min(self.elastic.init_blocks, self.elastic.max_blocks)
        counted = sum(1 for h in self._held.values() if h.counts)
        return max(0, self._target(inflight) - counted)

    def _target(self, inflight: int) -> int:
        elastic = self.elastic
        outstanding = inflight + self._waiting()
        slots = elastic.nodes_per_block * max(1, self.slots_per_node)
        target = math.ceil(outstanding * elastic.parallelism / slots) if outstanding else 0
        if outstanding:
            target = max(target, 1)
        target = max(target, elastic.min_blocks) + self._offset
        return max(elastic.min_blocks, min(elastic.max_blocks, target))

    def resize(self, count: int) -> str:
        """The rules want ``count`` more blocks than the policy's (fewer, when negative),
        within min_blocks and max_blocks; the idle ones go first when there are fewer."""
        limit = self.elastic.max_blocks
        self._offset = max(-limit, min(limit, self._offset + count))
        return f"{'+' if count > 0 else ''}{count} block(s): the pool wants " \
               f"{self._offset:+d} beyond its policy"

    # -- submitting --------------------------------------------------------------------------

    @property
    def next_index(self) -> int:
        return self._next_index

    def submit(self, request: BlockRequest, workers: list[bytes]) -> bool:
        """Submit one block; False when the scheduler refused it (counted as a failure;
        the last of ``submit_retries`` in a row raises ProviderError)."""
        self._next_index = request.index + 1
        try:
            block = self.provider.submit(request)
        except ProviderError as exc:
            log.error("block %d: the submission failed: %s", request.index, exc)
            self._failed(f"block {request.index} could not be submitted: {exc}")
            return False
        held = _Held(block, workers, output=request.output_path)
        self._held[block.index] = held
        for name in workers:
            self._by_worker[name] = held
        log.info("block %d: submitted as job %s (%d node(s))", block.index, block.job_id,
                 request.nodes)
        self._record(held)
        return True

    def _failed(self, why: str) -> None:
        self._failures += 1
        self._last_failure = why
        self._next_try = time.monotonic() + _BACKOFF_SECONDS * self._failures
        if self._failures >= self.elastic.submit_retries:
            raise ProviderError(f"{self._failures} block(s) in a row did not start; the last: "
                                f"{why}")

    # -- what the scheduler and the workers say ----------------------------------------------

    def poll(self) -> list[_Held]:
        """Ask the provider about the live blocks; the blocks that ended since the last
        look (a failure when no worker of theirs ever connected and we did not end them)."""
        live = [h for h in self._held.values() if not h.block.state.ended]
        if not live:
            return []
        before = {h.block.index: h.block.state for h in live}
        self.provider.poll([h.block for h in live])
        ended = []
        for held in live:
            block = held.block
            if block.state is BlockState.RUNNING and before[block.index] is BlockState.PENDING:
                self.queue_wait = max(self.queue_wait, (block.started or time.time())
                                      - block.submitted)
            if block.state.ended:
                ended.append(held)
            self._record(held)
        for held in ended:
            self._ended(held)
        return ended

    def _ended(self, held: _Held) -> None:
        block = held.block
        log.info("block %d (job %s) ended: %s%s", block.index, block.job_id,
                 block.state.value, f" ({block.message})" if block.message else "")
        if not held.connected and not held.retiring:
            self._failed(f"block {block.index} (job {block.job_id}) ended "
                         f"{block.state.value} before any worker connected"
                         f"{': ' + block.message if block.message else ''}")

    def connected(self, worker: bytes, host: str, cpus: int) -> None:
        held = self._by_worker.get(worker)
        if held is None:
            return
        held.connected += 1
        held.hosts.append(host)
        held.busy_at = time.time()
        self.slots_per_node = cpus or self.slots_per_node
        self._failures = 0
        if held.block.started is None:
            held.block.started = time.time()
        self._record(held)

    def stalled(self, now: float, timeout: float) -> list[_Held]:
        """Blocks the scheduler has run for ``timeout`` seconds without a worker of theirs
        connecting (a hung file system, a worker that cannot reach us): cancelled, and
        counted as blocks that did not start."""
        out = [h for h in self._held.values()
               if not h.connected and not h.retiring and not h.block.state.ended
               and h.block.state is BlockState.RUNNING and h.block.started is not None
               and now - h.block.started > timeout]
        for held in out:
            self.retire(held, f"no worker connected within {timeout:.0f} s of its start")
        for held in out:
            self._failed(f"block {held.block.index} (job {held.block.job_id}) ran for "
                         f"{timeout:.0f} s (child_start_timeout) and no worker of it connected; "
                         f"its output is in {held.output}")
        return out

    def block_of(self, worker: bytes) -> _Held | None:
        return self._by_worker.get(worker)

    # -- leaving -----------------------------------------------------------------------------

    def ends_at(self, held: _Held) -> float | None:
        """When its walltime is up (time.time()), once it started."""
        started = held.block.started
        return None if started is None else started + self.elastic.walltime

    def near_walltime(self, now: float, longest_task: float) -> list[_Held]:
        """Blocks whose time left is less than the longest task seen plus our safety: they
        drain now (each returned once). A block is counted out earlier, by the longest
        queue wait we saw, so that its replacement runs by the time it leaves."""
        out = []
        for held in self._held.values():
            end = self.ends_at(held)
            if held.closing or held.retiring or end is None or held.block.state.ended:
                continue
            drain_at = end - longest_task - self.safety
            if now >= drain_at - max(self.queue_wait, 5.0):
                held.replaced = True
            if now >= drain_at:
                held.closing = True
                out.append(held)
                log.info("block %d (job %s): %.0f s of walltime left; draining",
                         held.block.index, held.block.job_id, end - now)
        return out

    def idle(self, now: float, busy: Callable[[list[bytes]], bool],
             inflight: int) -> list[_Held]:
        """Connected blocks whose workers had nothing to do for max_idletime, beyond what the
        policy wants now: they are retired (cancelled), the longest idle first."""
        counted = [h for h in self._held.values() if h.counts and h.connected]
        for held in counted:
            if busy(held.workers):
                held.busy_at = now
        spare = sum(1 for h in self._held.values() if h.counts) - self._target(inflight)
        idle = sorted((h for h in counted if now - h.busy_at >= self.elastic.max_idletime),
                      key=lambda h: h.busy_at)[:max(0, spare)]
        for held in idle:
            self.retire(held, f"idle for {now - held.busy_at:.0f} s")
        return idle

    def retire(self, held: _Held, why: str) -> None:
        """Cancel a block we no longer need; its end is not a failure."""
        if held.block.state.ended or held.retiring:
            return
        held.retiring = True
        log.info("block %d (job %s): cancelled: %s", held.block.index, held.block.job_id, why)
        self.provider.cancel(held.block)

    def retire_all(self, why: str) -> None:
        for held in self._held.values():
            self.retire(held, why)

    def close(self, timeout: float = 30.0, grace: float = 3.0) -> None:
        """Let the blocks whose workers all left end on their own for ``grace`` seconds
        (their scripts exit), cancel every block not ended, and wait (at most
        ``timeout``) until the scheduler says each has ended, so that no job of ours is
        left in the queue."""
        self._wait_ended(grace)
        self.retire_all("the run ended")
        self._wait_ended(timeout)
        left = [h.block.job_id for h in self._held.values() if not h.block.state.ended]
        if left:
            log.warning("blocks: job(s) %s not reported ended within %.0f s of their cancel",
                        ", ".join(left), timeout)
        self.provider.close()

    def _wait_ended(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while any(not h.block.state.ended for h in self._held.values()) and \
                time.monotonic() < deadline:
            time.sleep(TEND_SECONDS)
            self.poll()

    def unstarted(self) -> Iterable[_Held]:
        return (h for h in self._held.values() if not h.connected and not h.block.state.ended)

    def _record(self, held: _Held) -> None:
        block = held.block
        record = BlockRecord(block.index, block.job_id, block.state.value,
                             self.elastic.nodes_per_block, ",".join(held.hosts),
                             block.submitted, block.started, block.ended, block.message)
        if record != held.recorded:
            held.recorded = record
            self._on_change(record)
