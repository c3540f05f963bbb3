"""Book-keeping shared by every test cluster on this machine.

Each run registers itself in REGISTRY before it creates anything, under a lock, so that
parallel runs get distinct subnets, and so that whatever a crashed run left behind
(namespaces, bridge, daemons, /etc/hosts lines, files) can be found and removed by the
next run. A run is stale when the process that registered it is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import netns
from .procs import (
    cmdline,
    kill_namespace_members,
    namespace_inode,
    pids_with_env,
    read_pid,
    send_signal,
    start_time,
)

REGISTRY = Path("/run/ensemble-launcher-test-clusters")
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARKER = "# ensemble-launcher test cluster"


@dataclass
class RunRecord:
    """What one run creates, written down before it is created."""

    run_id: str
    subnet: int
    bridge: str
    hosts: list[str]
    veths: list[str]
    run_dir: str
    pid_files: list[str] = field(default_factory=list)
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: str | None = field(default_factory=lambda: start_time(os.getpid()))

    @property
    def path(self) -> Path:
        return REGISTRY / f"{self.run_id}.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(self.path)

    def owner_alive(self) -> bool:
        return start_time(self.owner_pid) == self.owner_start

    @classmethod
    def load_all(cls) -> list[RunRecord]:
        records = []
        for path in REGISTRY.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                records.append(cls(**json.loads(path.read_text())))
        return records


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    REGISTRY.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(REGISTRY / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def live_records() -> list[RunRecord]:
    """Reap stale runs, return the live ones. Call with the registry lock held."""
    live = []
    for record in RunRecord.load_all():
        if record.owner_alive():
            live.append(record)
        else:
            remove_leftovers(record)
    remove_hosts_lines(keep={r.run_id for r in live})
    return live


def remove_leftovers(record: RunRecord) -> None:
    """Undo what a run created, as far as it still exists. Safe to call more than once."""
    for pid_file in record.pid_files:
        pid = read_pid(Path(pid_file))
        if pid is not None and record.run_dir in cmdline(pid):
            send_signal(pid, signal.SIGKILL)
    for pid in pids_with_env("SLURM_CONF", f"{record.run_dir}/slurm.conf"):
        send_signal(pid, signal.SIGKILL)
    inodes = [namespace_inode(f"/run/netns/{host}") for host in record.hosts]
    kill_namespace_members([i for i in inodes if i is not None])
    for host in record.hosts:
        netns.delete_netns(host)
    for link in [*record.veths, record.bridge]:
        netns.delete_link(link)
    shutil.rmtree(record.run_dir, ignore_errors=True)
    record.path.unlink(missing_ok=True)


def hosts_line(address: str, name: str, run_id: str) -> str:
    return f"{address} {name} {HOSTS_MARKER} {run_id}\n"


def add_hosts_lines(addresses: dict[str, str], run_id: str) -> None:
    """Append the run's host names to /etc/hosts, so that they resolve on every host.

    The file is rewritten in place (not replaced), as it may be a bind mount.
    """
    lines = [hosts_line(address, name, run_id) for name, address in addresses.items()]
    text = HOSTS_FILE.read_text()
    if text and not text.endswith("\n"):
        text += "\n"
    HOSTS_FILE.write_text(text + "".join(lines))


def remove_hosts_lines(keep: set[str] = frozenset(), only: str | None = None) -> None:
    """Drop marked lines: those of run `only`, or else those of every run not in `keep`."""

    def drop(line: str) -> bool:
        if HOSTS_MARKER not in line:
            return False
        run_id = line.rsplit(HOSTS_MARKER, 1)[1].strip()
        return run_id == only if only is not None else run_id not in keep

    text = HOSTS_FILE.read_text()
    kept = [line for line in text.splitlines(keepends=True) if not drop(line)]
    if len(kept) != len(text.splitlines(keepends=True)):
        HOSTS_FILE.write_text("".join(kept))


def marked_hosts_lines(run_id: str) -> list[str]:
    return [line for line in HOSTS_FILE.read_text().splitlines() if line.endswith(run_id)
            and HOSTS_MARKER in line]
