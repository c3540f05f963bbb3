"""A run's status, read from its run directory: during the run and after it.

    status.json  the live root's counts (done, failed, not run, running, queued, skipped:
                 finished in an earlier run that this resume does not run again, per
                 ensemble), and the blocks (batch jobs) of a provider run, rewritten
                 every report_interval (at most 5 s) by StatusFileReporter; used while
                 the run is alive, so that all figures are one snapshot
    journal.db   final results per ensemble and state, and the blocks, for a run that is
                 over; the firings of the event rules, live (each flush commits them) and
                 after
    meta         ensemble sizes, start and end times

``el status RUNDIR`` prints :func:`read_status`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from ensemble_launcher.monitor.counts import Counts, clock
from ensemble_launcher.monitor.progress import Reporter, Throttle
from ensemble_launcher.states import BlockRecord

if TYPE_CHECKING:
    from ensemble_launcher.store.queries import EnsembleCount, Firing, Span

STATUS_NAME = "status.json"
SHOWN_BLOCKS = 20
"""How many of a provider run's latest blocks ``el status`` lists, one line each."""
#: The order of the states in the count of blocks; others follow by name.
_BLOCK_STATES = ("running", "pending", "completed", "failed", "cancelled")

RunState = Literal["running", "finished", "interrupted", "stopped"]

log = logging.getLogger("ensemble_launcher")


class StatusFileReporter(Reporter):
    """Writes the live counts to ``run_dir/status.json`` (atomically) for ``el status``.

    The file is a convenience: when it cannot be written (a full disk) the run goes on
    without it, and the journal stays the record."""

    def __init__(self, run_dir: Path, interval: float) -> None:
        self.path = run_dir / STATUS_NAME
        self._throttle = Throttle(min(interval, 5.0))
        self._warned = False

    def update(self, counts: Counts) -> None:
        if self._throttle.due():
            self._write(counts, live=True)

    def stop(self, counts: Counts) -> None:
        self._write(counts, live=False)

    def _write(self, counts: Counts, live: bool) -> None:
        data = {"pid": os.getpid(), "time": time.time(), "live": live,
                "running": counts.running_by, "done": counts.done, "failed": counts.failed,
                "not_run": counts.not_run, "cancelled": counts.cancelled,
                "skipped": counts.skipped,
                "queued": counts.queued_by, "rate": counts.rate(),
                "blocks": [record._asdict() for _, record in sorted(counts.blocks.items())]}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not self._warned:
                self._warned = True
                log.info("cannot write %s (%s); el status reads the journal instead",
                         self.path, exc)


@dataclass
class EnsembleStatus:
    name: str
    total: int | None
    done: int
    failed: int
    not_run: int
    running: int
    """Started on a node and not finished."""
    skipped: int = 0
    """Finished in an earlier run; this resume does not run them again."""
    queued: int = 0
    """Handed out to a node and waiting there for a core to start on."""
    cancelled: int = 0

    @property
    def pending(self) -> int | None:
        if self.total is None:
            return None
        return max(0, self.total - self.finished - self.running - self.queued)

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.not_run + self.cancelled + self.skipped


@dataclass
class RunStatus:
    run_dir: str
    state: RunState
    ensembles: list[EnsembleStatus]
    rate: float
    eta: float | None
    started: float | None
    finished: float | None
    firings: list[Firing] = field(default_factory=list)
    """The most recent firings of the event rules, newest last."""
    firings_total: int = 0
    blocks: list[BlockRecord] = field(default_factory=list)
    """The latest blocks (batch jobs) of a provider run, in index order."""
    block_states: dict[str, int] = field(default_factory=dict)
    """How many blocks of the run, all of them, are in each state."""

    @property
    def blocks_total(self) -> int:
        return sum(self.block_states.values())

    def to_dict(self) -> dict:
        data = asdict(self)
        for entry, ensemble in zip(data["ensembles"], self.ensembles, strict=True):
            entry["pending"] = ensemble.pending
        data["firings"] = [{**f._asdict(), "since_start": f.at - self._origin()}
                           for f in self.firings]
        data["blocks"] = [b._asdict() for b in self.blocks]
        data["blocks_total"] = self.blocks_total
        return data

    def _origin(self) -> float:
        """What firing times are counted from: the run's start, else the first firing."""
        if self.started is not None:
            return self.started
        return self.firings[0].at if self.firings else 0.0

    def lines(self) -> list[str]:
        head = f"{self.run_dir}: {self.state}, {self.rate:.1f} tasks/s"
        if self.eta is not None and self.state == "running":
            head += f", ETA {clock(self.eta)}"
        out = [head]
        for e in self.ensembles:
            skipped = f"{e.skipped} skipped (finished earlier), " if e.skipped else ""
            out.append(f"  {e.name}: {e.finished}/"
                       f"{e.total if e.total is not None else '?'} finished: {e.done} done, "
                       f"{e.failed} failed, {e.not_run} not run, "
                       f"{f'{e.cancelled} cancelled, ' if e.cancelled else ''}{skipped}{e.running} "
                       f"running, {f'{e.queued} queued, ' if e.queued else ''}"
                       f"{e.pending if e.pending is not None else '?'} pending")
        return out + self._block_lines() + self._firing_lines()

    def _block_lines(self) -> list[str]:
        """A count of the blocks by state, then a line for each of the latest."""
        if not self.blocks:
            return []
        states = sorted(self.block_states.items(), key=lambda item: (
            _BLOCK_STATES.index(item[0]) if item[0] in _BLOCK_STATES else len(_BLOCK_STATES),
            item[0]))
        left_out = self.blocks_total - len(self.blocks)
        which = f"; the last {len(self.blocks)} listed, {left_out} left out" if left_out > 0 \
            else ""
        now = self.finished if self.state != "running" and self.finished else time.time()
        columns = [[f"#{b.index}" for b in self.blocks], [b.job_id for b in self.blocks],
                   [_hosts(b.hosts) for b in self.blocks]]
        widths = [max(map(len, column)) for column in columns]
        return [f"  blocks: {self.blocks_total} "
                f"({', '.join(f'{n} {state}' for state, n in states)}){which}"] + [
            _block_line(b, number, on, widths, now)
            for b, number, _, on in zip(self.blocks, *columns, strict=True)]

    def _firing_lines(self) -> list[str]:
        if not self.firings:
            return []
        shown = len(self.firings)
        which = f"the last {shown}, newest last" if shown < self.firings_total \
            else "newest last"
        out = [f"  rule firings: {self.firings_total} ({which})"]
        for f in self.firings:
            rule = f.rule if f.rule == f.trigger else f"{f.rule} [{f.trigger}]"
            detail = f": {_one_line(f.detail)}" if f.detail else ""
            out.append(f"    {_since(f.at - self._origin()):>9}  {rule} -> {f.action}{detail}")
        return out


def _block_line(block: BlockRecord, number: str, hosts: str, widths: list[int],
                now: float) -> str:
    """One block: its number, job id, state, nodes, hosts, how long it ran or waited, and
    the scheduler's message when it ended otherwise than by itself."""
    nodes = f"{block.nodes} node{'s' if block.nodes != 1 else ''}"
    gone_wrong = block.ended is not None and block.state != "completed" and block.message
    message = f"; {_one_line(block.message)}" if gone_wrong else ""
    return (f"    {number:<{widths[0]}}  job {block.job_id:<{widths[1]}}  {block.state:<9}  "
            f"{nodes:<8} {hosts:<{widths[2]}}  {_block_time(block, now)}{message}")


def _hosts(hosts: str, most: int = 3) -> str:
    """A block's hosts, the first ``most`` of them and how many more (a block may hold
    hundreds of nodes); "-" before any connected."""
    names = [name for name in hosts.split(",") if name]
    if len(names) <= most:
        return ",".join(names) or "-"
    return f"{','.join(names[:most])} +{len(names) - most} more"


def _block_time(block: BlockRecord, now: float) -> str:
    """How long a block ran, or waited in the queue when it never started."""
    if block.started is None:
        waited = clock(max(0.0, (block.ended or now) - block.submitted))
        return f"waited {waited}, never started" if block.ended is not None \
            else f"waiting for {waited}"
    if block.ended is None:
        return f"running for {clock(max(0.0, now - block.started))}"
    return f"ran {clock(max(0.0, block.ended - block.started))}"


def _one_line(text: str, most: int = 120) -> str:
    """A custom action's detail may span lines or pages; a status line holds the start."""
    text = " ".join(text.split())
    return text if len(text) <= most else text[:most - 1] + "…"


def _since(seconds: float) -> str:
    """Time since the start: tenths of a second in the first minute, then H:MM:SS."""
    if abs(seconds) < 60:
        return f"{seconds:+.1f}s"
    return ("-" if seconds < 0 else "+") + clock(abs(seconds))


def read_status(run_dir: str | os.PathLike, firings: int = 10,
                blocks: int = SHOWN_BLOCKS) -> RunStatus:
    """The status of the run in ``run_dir`` with its ``firings`` most recent rule firings
    and its ``blocks`` latest blocks; StoreError when its journal is not one we can read
    (see :func:`~ensemble_launcher.store.journal.check_journal`)."""
    run_dir = Path(run_dir)
    journal = _read_journal(run_dir, firings, blocks)
    meta, rows, span = journal.meta, journal.counts, journal.span
    live = _live_status(run_dir, meta)
    totals: dict[str, int | None] = meta.get("ensembles", {})
    counts: dict[str, dict[str, int]] = {name: {} for name in totals}
    for ensemble, state, n in rows:
        counts.setdefault(ensemble or "tasks", {})[state] = n
    if live is not None:
        ensembles = [EnsembleStatus(name, totals.get(name), *(
            int(live.get(key, {}).get(name, 0)) for key in ("done", "failed", "not_run",
                                                            "running", "skipped",
                                                            "queued", "cancelled")))
            for name in counts]
    else:
        ensembles = [EnsembleStatus(
            name, totals.get(name), c.get("succeeded", 0),
            sum(v for s, v in c.items() if s not in ("succeeded", "not_run", "cancelled")),
            c.get("not_run", 0), 0, cancelled=c.get("cancelled", 0))
            for name, c in counts.items()]
    state = _run_state(meta, live)
    rate = _rate(span, live, state)
    remaining = sum((e.pending or 0) + e.running + e.queued for e in ensembles)
    eta = remaining / rate if rate > 0 and state == "running" else None
    shown, block_states = _blocks(live, journal, blocks)
    return RunStatus(str(run_dir), state, ensembles, rate, eta, meta.get("started"),
                     meta.get("finished"), journal.firings, journal.firings_total, shown,
                     block_states)


class _JournalView(NamedTuple):
    meta: dict
    counts: list[EnsembleCount]
    span: Span
    firings: list[Firing]
    firings_total: int
    blocks: list[BlockRecord]
    block_states: dict[str, int]


def _read_journal(run_dir: Path, firings: int, blocks: int) -> _JournalView:
    """The run's metadata, its final results per ensemble and state, the time span of its
    results, its ``firings`` most recent rule firings and how many there are, its
    ``blocks`` latest blocks and the count of all by state, read on the one connection
    that checked the journal, creating nothing."""
    from ensemble_launcher.store.queries import read_journal

    with read_journal(run_dir, read_all=True) as journal:
        return _JournalView(journal.meta(), journal.counts(), journal.span(),
                            journal.firings(firings), journal.firing_count(),
                            journal.blocks(blocks), journal.block_states())


def _blocks(live: dict | None, journal: _JournalView,
            limit: int) -> tuple[list[BlockRecord], dict[str, int]]:
    """The ``limit`` latest blocks and the count of all by state: from the live root's
    status.json, one snapshot with its counts, else (or when it has none: a root of a
    version before blocks) from the journal."""
    try:
        records = [BlockRecord(**entry) for entry in live["blocks"]] if live else None
    except (KeyError, TypeError):
        records = None
    if records is None:
        return journal.blocks, journal.block_states
    states: dict[str, int] = {}
    for record in records:
        states[record.state] = states.get(record.state, 0) + 1
    return records[-limit:] if limit > 0 else [], states


def _live_status(run_dir: Path, meta: dict) -> dict | None:
    path = run_dir / STATUS_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("live") and _pid_alive(data.get("pid", -1)) else None


def _run_state(meta: dict, live: dict | None) -> RunState:
    if live is not None and "finished" not in meta:
        return "running"
    if meta.get("interrupted"):
        return "interrupted"
    if "finished" in meta:
        return "finished"
    return "stopped"


def _rate(span: Span, live: dict | None, state: str) -> float:
    if live is not None and state == "running":
        return float(live.get("rate", 0.0))
    first, last, n = span
    return n / (last - first) if n and last and first and last > first else 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
