"""An SSH tunnel from a login node to an MCP server on a compute node.

We run MCP servers with HTTP transports on compute nodes, bound to the node's loopback
address, where no other machine can reach them. An agent on the login node reaches one
through local port forwarding, as `ssh -L` would do it:

    tunnel = start_tunnel("me", "x1000c0s0b0n0", local_port=9276, remote_port=9276)
    ...  # the agent connects to http://127.0.0.1:9276/mcp
    stop_tunnel(*tunnel)

Unlike the original project's tunnel, the local listener binds 127.0.0.1 only (another
user of the login node cannot connect through our SSH session unless they get a shell as
us), unknown host keys are refused unless the caller opts in, and we authenticate with
exactly the key the caller names (no agent, no other keys). Errors are TunnelError, a
ConnectionError that names the host, the user and the key file.

Threads: one accepts local connections, one per connection pumps bytes both ways
between its socket and its SSH channel, and paramiko's transport thread carries the
channels. stop_tunnel wakes and joins them all and closes every socket it opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
from pathlib import Path
from typing import Any, NamedTuple

from ensemble_launcher.errors import EnsembleLauncherError

try:
    import paramiko
except ImportError as missing:  # pragma: no cover - depends on the install
    raise ImportError(
        "the SSH tunnel needs paramiko: pip install 'ensemble_launcher[mcp]'") from missing

__all__ = ["Tunnel", "TunnelError", "start_tunnel", "stop_tunnel"]

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
USER_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
CHUNK = 64 * 1024
JOIN_TIMEOUT = 10.0


class TunnelError(EnsembleLauncherError, ConnectionError):
    """The tunnel could not be opened; the message says which host, user and key, and why."""


class Tunnel(NamedTuple):
    """What start_tunnel returns; give it back as ``stop_tunnel(*tunnel)``, or use it in a
    ``with`` block, which stops it at the end."""

    client: Any
    forwarder: _Forwarder

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop_tunnel(*self)

    @property
    def local_port(self) -> int:
        """The port on 127.0.0.1 to connect to (the one chosen when local_port was 0)."""
        return self.forwarder.local_port


def start_tunnel(
    user_name: str,
    compute_node_host: str,
    local_port: int,
    remote_port: int,
    remote_dest_host: str = "localhost",
    ssh_key_path: str | os.PathLike[str] = "~/.ssh/id_rsa",
    *,
    ssh_port: int = 22,
    known_hosts: str | os.PathLike[str] | None = None,
    trust_unknown_host: bool = False,
    passphrase: str | None = None,
    connect_timeout: float = 10.0,
    keepalive_interval: int = 30,
) -> Tunnel:
    """Forward 127.0.0.1:local_port here to remote_dest_host:remote_port as seen from
    compute_node_host, over SSH as user_name with the private key at ssh_key_path.

    The host key must be in `known_hosts` when given, else in /etc/ssh/ssh_known_hosts
    or ~/.ssh/known_hosts; `trust_unknown_host=True` accepts a key found in none of them
    (for this session only; nothing is written). `local_port=0` picks a free port, which
    the returned Tunnel's `local_port` tells. Keepalives every `keepalive_interval` s keep
    idle tunnels open through firewalls that drop quiet connections.
    """
    where = _Where(user_name, compute_node_host, ssh_port, _expand(ssh_key_path))
    _check_key_file(where)
    listener = _listen(local_port)
    try:
        client = _connect(where, _known_hosts_files(known_hosts), trust_unknown_host,
                          passphrase, connect_timeout)
    except BaseException:
        listener.close()
        raise
    transport = client.get_transport()
    transport.set_keepalive(keepalive_interval)
    forwarder = _Forwarder(transport, listener, (remote_dest_host, remote_port), where.host)
    forwarder.start()
    log.info("tunnel 127.0.0.1:%d -> %s:%d via %s@%s is open", forwarder.local_port,
             remote_dest_host, remote_port, user_name, compute_node_host)
    return Tunnel(client, forwarder)


def stop_tunnel(client: Any, forwarder: _Forwarder) -> None:
    """Close the local port, end every forwarded connection, close the SSH session and
    join all the tunnel's threads. Calling it again does nothing."""
    forwarder.stop(client)


class _Where(NamedTuple):
    """Who connects where, with which key: what every error message names."""

    user: str
    host: str
    port: int
    key_path: Path

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port} with key {self.key_path}"


def _expand(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.expanduser(os.fspath(path)))


def _check_key_file(where: _Where) -> None:
    """Fail before any network traffic when the key cannot be read, naming the path."""
    if not where.key_path.is_file():
        raise TunnelError(f"cannot open an SSH tunnel to {where}: the key file "
                          f"{where.key_path} does not exist; pass ssh_key_path=")
    if not os.access(where.key_path, os.R_OK):
        raise TunnelError(f"cannot open an SSH tunnel to {where}: the key file "
                          f"{where.key_path} is not readable by this user")


def _listen(port: int) -> socket.socket:
    """The local listener, on the loopback address only."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOCAL_HOST, port))
        listener.listen(socket.SOMAXCONN)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        raise TunnelError(f"cannot listen on {LOCAL_HOST}:{port} for an SSH tunnel: "
                          f"{exc.strerror or exc}") from exc
    return listener


def _known_hosts_files(known_hosts: str | os.PathLike[str] | None) -> list[Path]:
    """The caller's file alone when given (it must exist), else the system's and the
    user's files that exist."""
    if known_hosts is not None:
        path = _expand(known_hosts)
        if not path.is_file():
            raise TunnelError(f"the known_hosts file {path} does not exist")
        return [path]
    return [p for p in (SYSTEM_KNOWN_HOSTS, _expand(USER_KNOWN_HOSTS)) if p.is_file()]


def _connect(where: _Where, known_hosts: list[Path], trust_unknown_host: bool,
             passphrase: str | None, timeout: float) -> Any:
    """An authenticated SSHClient; any failure closes it and raises TunnelError."""
    client = paramiko.SSHClient()
    for path in known_hosts:
        client.load_system_host_keys(str(path))
    client.set_missing_host_key_policy(
        paramiko.AutoAddPolicy() if trust_unknown_host else _RefuseUnknownHost(where, known_hosts))
    try:
        client.connect(
            where.host, port=where.port, username=where.user, key_filename=str(where.key_path),
            passphrase=passphrase, timeout=timeout, banner_timeout=timeout,
            auth_timeout=timeout, allow_agent=False, look_for_keys=False)
    except TunnelError:
        _close(client)
        raise
    except Exception as exc:
        _close(client)
        raise _connect_error(where, exc) from exc
    except BaseException:
        _close(client)
        raise
    return client


def _close(client: Any) -> None:
    """Close the SSH session and join its transport thread, which close() leaves running
    for a moment."""
    transport = client.get_transport()
    client.close()
    if transport is not None:
        _join(transport)


def _connect_error(where: _Where, exc: Exception) -> TunnelError:
    """Our error for what paramiko or the network raised, saying what to check."""
    prefix = f"cannot open an SSH tunnel to {where}"
    if isinstance(exc, paramiko.PasswordRequiredException):
        return TunnelError(f"{prefix}: the key is encrypted; pass passphrase=")
    if isinstance(exc, paramiko.AuthenticationException):
        return TunnelError(f"{prefix}: the server refused the key ({exc}); is its public key "
                           f"in ~{where.user}/.ssh/authorized_keys on {where.host}?")
    if isinstance(exc, paramiko.BadHostKeyException):
        return TunnelError(f"{prefix}: the host key does not match the one in known_hosts "
                           f"(the host was reinstalled, or someone is in between): {exc}")
    if isinstance(exc, paramiko.SSHException):
        return TunnelError(f"{prefix}: {exc}")
    return TunnelError(f"{prefix}: cannot reach its SSH server: {exc}")


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """Refuses a host key that is in no known_hosts file, saying how to accept it."""

    def __init__(self, where: _Where, searched: list[Path]) -> None:
        self.where = where
        self.searched = searched

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        files = ", ".join(map(str, self.searched)) or "none exists"
        raise TunnelError(
            f"cannot open an SSH tunnel to {self.where}: the {key.get_name()} host key "
            f"{key.fingerprint} of {hostname} is unknown (known_hosts files: {files}); add it "
            f"to known_hosts (e.g. with ssh-keyscan on a trusted network), pass "
            f"known_hosts=, or pass trust_unknown_host=True")


class _Forwarder:
    """The listener, its accepting thread and one pumping thread per connection.

    Every thread waits in a selector that also watches one end of a socket pair; stop()
    writes to the other end, so that all of them wake at once, without timeouts.
    """

    def __init__(self, transport: Any, listener: socket.socket,
                 destination: tuple[str, int], ssh_host: str) -> None:
        self.transport = transport
        self.listener = listener
        self.destination = destination
        self.ssh_host = ssh_host
        self.local_port: int = listener.getsockname()[1]
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stopped = False
        self._pumps: dict[threading.Thread, socket.socket] = {}
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"el-tunnel-accept-{self.local_port}", daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def stop(self, client: Any) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stopping.set()
        self._wake_writer.send(b"\0")
        _join(self._acceptor)
        self.listener.close()
        with self._lock:
            pumps = dict(self._pumps)
        for connection in pumps.values():
            _shut(connection)
        _close(client)
        for pump in pumps:
            _join(pump)
        self._wake_reader.close()
        self._wake_writer.close()
        log.info("tunnel on 127.0.0.1:%d is closed", self.local_port)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping.is_set():
                selector.select()
                if not self._stopping.is_set():
                    self._accept()

    def _accept(self) -> None:
        try:
            connection, peer = self.listener.accept()
        except OSError:
            return
        try:
            connection.setblocking(True)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            connection.close()
            return
        pump = threading.Thread(target=self._pump, args=(connection, peer), daemon=True,
                                name=f"el-tunnel-pump-{self.local_port}-{peer[1]}")
        with self._lock:
            self._pumps[pump] = connection
        pump.start()

    def _pump(self, connection: socket.socket, peer: tuple[str, int]) -> None:
        channel = None
        try:
            channel = self._open_channel(peer)
            if channel is not None:
                self._copy_both_ways(connection, channel)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("tunnel connection from %s:%d ended: %s", *peer, exc)
        finally:
            connection.close()
            if channel is not None:
                _close_channel(channel)
            with self._lock:
                self._pumps.pop(threading.current_thread(), None)

    def _open_channel(self, peer: tuple[str, int]) -> Any:
        """A direct-tcpip channel to the destination, or None (logged) when refused."""
        try:
            return self.transport.open_channel(
                "direct-tcpip", dest_addr=self.destination, src_addr=peer, timeout=30)
        except paramiko.ChannelException as exc:
            log.warning("%s refused to forward to %s:%d: %s", self.ssh_host,
                        *self.destination, exc.text)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self._stopping.is_set():
                log.warning("tunnel to %s cannot forward to %s:%d, the SSH session is lost: "
                            "%s", self.ssh_host, *self.destination, exc)
        return None

    def _copy_both_ways(self, connection: socket.socket, channel: Any) -> None:
        """Copy until both sides have ended, passing each end-of-file on as a half-close,
        so that a client that shuts down its sending side still gets the whole answer."""
        with selectors.DefaultSelector() as selector:
            selector.register(connection, selectors.EVENT_READ)
            selector.register(channel, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            open_sides = 2
            while open_sides and not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._wake_reader:
                        return
                    if not _copy_chunk(key.fileobj, channel if key.fileobj is connection
                                       else connection):
                        selector.unregister(key.fileobj)
                        open_sides -= 1


def _copy_chunk(source: Any, sink: Any) -> bool:
    """Move what `source` has to `sink`; on end-of-file, half-close `sink`, return False."""
    data = source.recv(CHUNK)
    if data:
        sink.sendall(data)
        return True
    if isinstance(sink, socket.socket):
        sink.shutdown(socket.SHUT_WR)
    else:
        sink.shutdown_write()
    return False


def _close_channel(channel: Any) -> None:
    """Close the channel, also when the session under it is closing at the same moment
    (then sending its close fails, and nothing is left to tell)."""
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        channel.close()


def _shut(connection: socket.socket) -> None:
    """Wake a thread blocked on `connection` (closing it under the thread would not)."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


def _join(thread: threading.Thread) -> None:
    thread.join(JOIN_TIMEOUT)
    if thread.is_alive():
        log.warning("tunnel thread %s did not stop within %.0f s", thread.name, JOIN_TIMEOUT)
