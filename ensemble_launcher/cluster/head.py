"""The head of a cluster: its own process, started by ``el start`` or ``EnsembleLauncher.start()``.

    user: EnsembleLauncher.start() --head.pkl--> python -m ensemble_launcher.cluster.head DIR
    head: EnsembleLauncher(...).serve(): the root's loop (ledger, tree, journal) + the desk

The orchestrator does not live on a thread of the user's process: its runners are forked,
it handles SIGTERM as a batch system sends it, and it ends its ZMQ contexts on its main
thread, none of which a user's interpreter (a notebook, an agent) lets us do. The user's
process keeps only a client.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ensemble_launcher.cluster.checkpoint import (
    LAUNCH_FILE,
    ClusterFile,
    ClusterInfo,
    process_alive,
    write_private,
)
from ensemble_launcher.errors import ClusterLost, ConfigError, LaunchError
from ensemble_launcher.launchers.base import log_tail
from ensemble_launcher.orchestrator.boot import adopt_sys_path

#: Seconds stop() waits, after SIGTERM, for the head to stop its running tasks and exit
#: (their shutdown_grace, then kill_grace) before SIGKILL.
_AFTER_SIGTERM = 90.0


def start_head(checkpoint_dir: Path, inputs: dict[str, Any], timeout: float,
               detach: bool = True) -> subprocess.Popen:
    """Start the head process and return once it accepts clients; ``detach`` gives it a
    session of its own, so that it outlives a terminal that closes."""
    import cloudpickle

    cluster = ClusterFile(checkpoint_dir)
    cluster.prepare()
    _refuse_running(cluster)
    try:
        launch = {"sys_path": [os.path.abspath(p) for p in sys.path if p],
                  "inputs": cloudpickle.dumps(inputs)}
        write_private(cluster.dir / LAUNCH_FILE, pickle.dumps(launch))
    except Exception as exc:  # whatever cannot be pickled, one clear error
        raise ConfigError(f"cannot hand the ensemble and configs to the cluster's head: "
                          f"{exc}") from exc
    log_path = cluster.dir / "logs" / "head.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "ensemble_launcher.cluster.head",
                                 str(cluster.dir)], stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=detach)
    deadline = time.monotonic() + timeout
    while not _serving(cluster, proc.pid):
        if proc.poll() is not None:
            raise LaunchError(f"the cluster's head exited with status {proc.returncode} before "
                              f"it took clients. Log {log_path}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise LaunchError(f"the cluster's head did not take clients within {timeout:.0f} s."
                              f" Log {log_path}:\n{log_tail(log_path)}")
        time.sleep(0.02)
    return proc


def _serving(cluster: ClusterFile, pid: int) -> bool:
    try:
        return cluster.read().pid == pid
    except ClusterLost:
        return False


def _refuse_running(cluster: ClusterFile) -> None:
    """One head per checkpoint directory; a file left by a head that died is removed. A
    head on this host is looked up by pid, one on another host asked whether it answers."""
    try:
        info = cluster.read()
    except ClusterLost:
        return
    if _head_answers(cluster, info):
        raise ConfigError(f"a cluster is already running in {cluster.dir} (pid {info.pid} on "
                          f"{info.host}); stop it with: el stop {cluster.dir}")
    cluster.remove()


def _head_answers(cluster: ClusterFile, info: ClusterInfo) -> bool:
    if info.host == socket.gethostname():
        return process_alive(info.pid)
    from ensemble_launcher.cluster.client import ClusterClient

    try:
        ClusterClient(cluster.dir, client_id="el-probe").start(3 * info.heartbeat).teardown()
    except ClusterLost:
        return False
    return True


def stop_cluster(checkpoint_dir: Path, timeout: float | None = None,
                 head: subprocess.Popen | None = None) -> None:
    """Ask the cluster to stop once its tasks are final, and wait until its head exited
    (on this host) or stopped taking clients (on another). On this host, after
    ``timeout`` seconds: SIGTERM (running tasks get shutdown_grace, then are stopped),
    and SIGKILL as the last resort. A head on another host is never signalled from here."""
    from ensemble_launcher.cluster.client import ClusterClient

    cluster = ClusterFile(checkpoint_dir)
    try:
        info = cluster.read()
        with ClusterClient(checkpoint_dir, client_id="el-stop") as client:
            client.shutdown_cluster()
    except ClusterLost:
        if head is None:
            raise
        head.wait()
        return
    if info.host != socket.gethostname():
        _wait_gone(lambda: not cluster.path.exists(), timeout)
        return
    gone = (lambda: head.poll() is not None) if head is not None \
        else (lambda: not process_alive(info.pid))
    if not _wait_gone(gone, timeout):
        _signal(info.pid, signal.SIGTERM)
        if not _wait_gone(gone, _AFTER_SIGTERM):
            _signal(info.pid, signal.SIGKILL)
            _wait_gone(gone, 10.0)


def _wait_gone(gone: Callable[[], bool], timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        if gone():
            return True
        time.sleep(0.05)
    return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def main(argv: list[str]) -> int:
    import logging

    from ensemble_launcher.launcher import EnsembleLauncher

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    directory = Path(argv[0])
    launch = pickle.loads((directory / LAUNCH_FILE).read_bytes())
    adopt_sys_path(launch["sys_path"])
    launcher = EnsembleLauncher(**pickle.loads(launch["inputs"]))
    try:
        launcher.serve()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
