"""The MCP server's SSH tunnel, against a real sshd on a host of the test cluster.

This machine plays the login node. The compute node is a host of tests/cluster (its own
network namespace), where we start Debian's sshd with its own config, a throwaway host
key and one authorized ed25519 key. Servers behind the tunnel listen on that host's
loopback address, which only a tunnel through sshd can reach from here.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, missing_requirements
from cluster.procs import tail, wait_until

paramiko = pytest.importorskip("paramiko", reason="the tunnel needs the mcp extra")
anyio = pytest.importorskip("anyio", reason="the MCP client needs the mcp extra")
httpx2 = pytest.importorskip("httpx2", reason="the MCP client needs the mcp extra")
mcp = pytest.importorskip("mcp", reason="the MCP client needs the mcp extra")

from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from ensemble_launcher.mcp import Tunnel, TunnelError, start_tunnel, stop_tunnel  # noqa: E402

SSHD = Path("/usr/sbin/sshd")
ECHO_PORT = 7000
HTTP_PORT = 8000
MCP_PORT = 9276
USER = getpass.getuser()

SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding local
X11Forwarding no
PermitTTY no
LogLevel VERBOSE
"""

ECHO_SERVER = """\
import socket, socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(socket.gethostname().encode() + b" ")
        while data := self.request.recv(1 << 16):
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
with socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), Echo) as server:
    server.serve_forever()
"""

MCP_SERVER = """\
import socket, sys
from ensemble_launcher.mcp import Server
mcp = Server(port=int(sys.argv[1]), checkpoint_dir=sys.argv[2])
@mcp.tool
def where(x: int) -> str:
    \"\"\"Name the host that runs this call, and double x.\"\"\"
    return f"{socket.gethostname()} {2 * x}"
mcp.run(transport="streamable-http")
"""

LISTENING = """\
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"nothing listens on 127.0.0.1:{sys.argv[1]}")
        time.sleep(0.05)
"""


@dataclass
class Compute:
    """The compute host, its sshd, and the files a client of that sshd uses."""

    cluster: Cluster
    host: str
    address: str
    user_key: Path
    stranger_key: Path
    known_hosts: Path
    web_root: Path


def write_key(path: Path) -> bytes:
    """A fresh ed25519 private key in OpenSSH format, in a 0600 file; returns its public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(private)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)


def require_sshd() -> None:
    if SSHD.exists():
        return
    message = f"{SSHD} is missing; install it with `apt-get install -y openssh-server`"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def start_sshd(cluster: Cluster, host: str, ssh_dir: Path) -> None:
    """sshd in the foreground on the host's address, logging to ssh_dir/sshd.log."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # Debian's sshd needs it to exist
    config = ssh_dir / "sshd_config"
    config.write_text(SSHD_CONFIG.format(address=cluster.addresses[host], dir=ssh_dir,
                                         user=USER))
    log = ssh_dir / "sshd.log"
    with open(log, "wb") as out:
        sshd = cluster.popen_on(host, [str(SSHD), "-D", "-e", "-f", str(config)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def answers() -> bool:
        if sshd.poll() is not None:
            raise AssertionError(f"sshd exited with {sshd.returncode}\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(
                (cluster.addresses[host], 22), timeout=1) as probe:
            return probe.recv(4).startswith(b"SSH-")
        return False

    wait_until(answers, 15, "sshd to answer", lambda: tail(log))


def start_on_loopback(cluster: Cluster, host: str, argv: list[str], port: int, log: Path,
                      timeout: float = 10.0, **popen_options) -> subprocess.Popen:
    """Start a server on the host, and return once it takes connections on 127.0.0.1:port."""
    with open(log, "ab") as out:
        server = cluster.popen_on(host, argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  **popen_options)
    ready = cluster.run_on(host, [sys.executable, "-c", LISTENING, str(port), str(timeout)],
                           timeout=timeout + 10, capture_output=True, text=True)
    assert ready.returncode == 0, f"{ready.stderr}\n{tail(log)}"
    return server


@pytest.fixture(scope="module")
def compute(tmp_path_factory):
    """One host with sshd, an echo server and a web server; the latter two on its loopback."""
    require_sshd()
    problems = missing_requirements()
    if problems:
        pytest.fail("cannot start the test cluster: " + "; ".join(problems), pytrace=False)
    ssh_dir = tmp_path_factory.mktemp("ssh")
    with Cluster(nhosts=1, mpi_finalize_timeout=None) as cluster:
        host = cluster.hosts[0]
        address = cluster.addresses[host]
        host_public = write_key(ssh_dir / "host_key")
        (ssh_dir / "authorized_keys").write_bytes(write_key(ssh_dir / "id_ed25519") + b"\n")
        write_key(ssh_dir / "stranger_ed25519")
        (ssh_dir / "known_hosts").write_bytes(address.encode() + b" " + host_public + b"\n")
        web_root = ssh_dir / "www"
        web_root.mkdir()
        (web_root / "hello.txt").write_text("hello from the compute node\n")
        start_sshd(cluster, host, ssh_dir)
        start_on_loopback(cluster, host, [sys.executable, "-c", ECHO_SERVER, str(ECHO_PORT)],
                          ECHO_PORT, ssh_dir / "echo.log")
        start_on_loopback(cluster, host, [sys.executable, "-m", "http.server", "--bind",
                                          "127.0.0.1", "--directory", str(web_root),
                                          str(HTTP_PORT)], HTTP_PORT, ssh_dir / "http.log")
        yield Compute(cluster, host, address, ssh_dir / "id_ed25519",
                      ssh_dir / "stranger_ed25519", ssh_dir / "known_hosts", web_root)
    assert not cluster.leftovers()


@pytest.fixture(autouse=True)
def no_tunnel_threads_left():
    """Every test must leave no tunnel thread and no SSH transport running."""
    yield
    left = [t.name for t in threading.enumerate()
            if t.name.startswith("el-tunnel") or isinstance(t, paramiko.Transport)]
    assert not left, f"threads left running: {left}"


def tunnel_to(compute: Compute, remote_port: int = ECHO_PORT, **options) -> Tunnel:
    """A tunnel from a free local port to remote_port on the compute host's loopback; a
    `with` block stops it."""
    options.setdefault("known_hosts", compute.known_hosts)
    return start_tunnel(USER, compute.address, 0, remote_port, ssh_key_path=compute.user_key,
                        **options)


def echo(port: int, payload: bytes) -> bytes:
    """Send payload, half-close, and read the whole answer, as a one-shot client would."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def read_exactly(conn: socket.socket, expected: bytes) -> bool:
    received = b""
    while len(received) < len(expected) and (chunk := conn.recv(len(expected))):
        received += chunk
    return received == expected


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_tcp_call_through_the_tunnel_reaches_the_compute_hosts_loopback(compute):
    with tunnel_to(compute) as tunnel:
        assert echo(tunnel.local_port, b"ping") == compute.host.encode() + b" ping"


def test_concurrent_connections_with_large_payloads_arrive_whole(compute):
    payloads = [os.urandom(1 << 20) for _ in range(4)]
    with tunnel_to(compute) as tunnel, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: echo(tunnel.local_port, p), payloads))
    assert answers == [compute.host.encode() + b" " + p for p in payloads]


def test_http_get_through_the_tunnel(compute):
    with tunnel_to(compute, HTTP_PORT) as tunnel:
        url = f"http://127.0.0.1:{tunnel.local_port}/hello.txt"
        with urllib.request.urlopen(url, timeout=20) as response:
            assert response.read() == (compute.web_root / "hello.txt").read_bytes()


def test_a_refused_destination_ends_that_connection_only(compute):
    with tunnel_to(compute, ECHO_PORT - 1) as tunnel:
        with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=20) as conn:
            assert conn.recv(100) == b""
        with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=20) as conn:
            assert conn.recv(100) == b""


def test_mcp_call_through_the_tunnel(compute, tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    server = start_on_loopback(
        compute.cluster, compute.host,
        [sys.executable, "-c", MCP_SERVER, str(MCP_PORT), str(tmp_path / "cluster")],
        MCP_PORT, tmp_path / "mcp.log", timeout=60,
        env=compute.cluster.client_env({"XDG_RUNTIME_DIR": str(runtime)}))
    try:
        token = (runtime / "ensemble_launcher" / f"mcp-{MCP_PORT}.token").read_text()
        with tunnel_to(compute, MCP_PORT) as tunnel:
            url = f"http://127.0.0.1:{tunnel.local_port}/mcp"
            result = anyio.run(call_tool, url, token, "where", {"x": 21})
        assert not result.is_error, result
        assert result.structured_content == {"result": f"{compute.host} 42"}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert server.returncode in (0, 128 + signal.SIGTERM), tail(tmp_path / "mcp.log")


async def call_tool(url: str, token: str, name: str, arguments: dict) -> Any:
    """One tool call in a session of the official MCP client, over streamable HTTP, with
    the server's bearer token (which a login node sharing the home directory can read)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
            streamable_http_client(url, http_client=http) as streams, \
            ClientSession(*streams) as session:
        await session.initialize()
        return await session.call_tool(name, arguments)


def test_listener_takes_loopback_connections_only(compute):
    with tunnel_to(compute) as tunnel:
        assert tunnel.forwarder.listener.getsockname()[0] == "127.0.0.1"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((compute.cluster.bridge_address, tunnel.local_port), 5)


def test_stop_closes_the_port_and_ends_open_connections_without_leaks(compute):
    fds_before = open_fds()
    tunnel = tunnel_to(compute)
    port = tunnel.local_port
    with contextlib.ExitStack() as stack:
        connections = [stack.enter_context(socket.create_connection(("127.0.0.1", port), 20))
                       for _ in range(8)]
        for i, conn in enumerate(connections):
            conn.sendall(b"ping %d" % i)
            assert read_exactly(conn, compute.host.encode() + b" ping %d" % i)
        stop_tunnel(*tunnel)
        assert [conn.recv(100) for conn in connections] == [b""] * len(connections)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert open_fds() == fds_before
    stop_tunnel(*tunnel)


def test_unknown_host_key_is_refused_by_default(compute):
    port = free_port()
    with pytest.raises(TunnelError) as refused:
        start_tunnel(USER, compute.address, port, ECHO_PORT, ssh_key_path=compute.user_key)
    message = str(refused.value)
    assert compute.address in message and "host key" in message
    assert "trust_unknown_host=True" in message
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_trust_unknown_host_opts_in(compute):
    with tunnel_to(compute, known_hosts=None, trust_unknown_host=True) as tunnel:
        assert echo(tunnel.local_port, b"hi") == compute.host.encode() + b" hi"


def test_changed_host_key_is_refused(compute, tmp_path):
    forged = tmp_path / "known_hosts"
    public = write_key(tmp_path / "other_host_key")
    forged.write_bytes(compute.address.encode() + b" " + public + b"\n")
    with pytest.raises(TunnelError, match="does not match"):
        start_tunnel(USER, compute.address, 0, ECHO_PORT, ssh_key_path=compute.user_key,
                     known_hosts=forged)


def test_wrong_key_is_refused_with_an_error_naming_user_host_and_key(compute):
    with pytest.raises(TunnelError) as refused:
        start_tunnel(USER, compute.address, 0, ECHO_PORT, ssh_key_path=compute.stranger_key,
                     known_hosts=compute.known_hosts)
    assert isinstance(refused.value, ConnectionError)
    message = str(refused.value)
    assert f"{USER}@{compute.address}" in message
    assert str(compute.stranger_key) in message and "refused the key" in message


def test_missing_key_file_is_named(compute, tmp_path):
    missing = tmp_path / "no_such_key"
    with pytest.raises(TunnelError, match=f"{missing} does not exist"):
        start_tunnel(USER, compute.address, 0, ECHO_PORT, ssh_key_path=missing,
                     known_hosts=compute.known_hosts)


def test_a_busy_local_port_is_named(compute):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TunnelError, match=f"cannot listen on 127.0.0.1:{port}"):
            start_tunnel(USER, compute.address, port, ECHO_PORT, ssh_key_path=compute.user_key,
                         known_hosts=compute.known_hosts)


def test_importing_the_package_does_not_import_paramiko():
    code = "import sys, ensemble_launcher; sys.exit('paramiko' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

