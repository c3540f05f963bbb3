"""The checkpoint directory of a cluster: how clients find and prove themselves to its head.

    checkpoint_dir/        (0700)  also the run directory: journal.db, status.json, logs/
        cluster.json       (0600)  address, the server's public key, the client key pair,
                                   the head's pid and host, the heartbeat
        cluster.sock               the ipc socket, when every node is on this host
        head.pkl           (0600)  what the head was started with (written by el start)

Whoever can read cluster.json is a client: that is the user (and root). The server's
secret key never leaves the head's memory; cluster.json is written atomically, and
removed when the head stops.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ensemble_launcher.comm import CurveKeys
from ensemble_launcher.errors import ClusterLost, ConfigError

CLUSTER_FILE = "cluster.json"
SOCKET_NAME = "cluster.sock"
LAUNCH_FILE = "head.pkl"
#: Linux's limit on an ipc socket's path (sun_path), less its terminating NUL.
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    keys: CurveKeys | None
    pid: int
    host: str
    heartbeat: float


class ClusterFile:
    def __init__(self, checkpoint_dir: str | os.PathLike) -> None:
        self.dir = Path(checkpoint_dir).absolute()
        self.path = self.dir / CLUSTER_FILE
        self.socket_path = self.dir / SOCKET_NAME

    @property
    def ipc_fits(self) -> bool:
        return len(str(self.socket_path)) <= _MAX_SOCKET_PATH

    def prepare(self) -> None:
        private_directory(self.dir, "checkpoint_dir")

    def write(self, address: str, keys: CurveKeys | None, heartbeat: float) -> None:
        record = {"address": address, "pid": os.getpid(), "host": socket.gethostname(),
                  "heartbeat": heartbeat}
        if keys is not None:
            record.update(server_public=keys.server_public.decode(),
                          client_public=keys.client_public.decode(),
                          client_secret=keys.client_secret.decode())
        write_private(self.path, json.dumps(record).encode())

    def read(self) -> ClusterInfo:
        try:
            record = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            raise ClusterLost(f"no cluster is running in {self.dir} (no {CLUSTER_FILE}); "
                              "start one with el start or EnsembleLauncher.start()") from None
        except (OSError, ValueError) as exc:
            raise ClusterLost(f"cannot read {self.path}: {exc}") from exc
        keys = None
        if "server_public" in record:
            keys = CurveKeys(record["server_public"].encode(), b"",
                             record["client_public"].encode(),
                             record["client_secret"].encode())
        return ClusterInfo(record["address"], keys, int(record["pid"]), record["host"],
                           float(record["heartbeat"]))

    def remove(self) -> None:
        for path in (self.path, self.socket_path):
            path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (ours or not; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def private_directory(directory: Path, key: str) -> None:
    """Make ``directory``, or make sure it is ours and only ours (0700); a ConfigError
    names it as ``key``."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as exc:
        raise ConfigError(f"{key} {directory}: {exc.strerror}") from exc
    if info.st_uid != os.getuid():
        raise ConfigError(f"{key} {directory} belongs to another user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) atomically: a reader sees all or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
