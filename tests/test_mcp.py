"""The MCP server, driven by the official MCP client as an agent drives it: a real
ClientSession over stdio (the client spawns tests/mcp_server.py) and over streamable HTTP
(the server runs in a subprocess, and the client sends the bearer token it reads from the
server's token file), its tools running as tasks of a real cluster.

One server per transport serves the whole module: each keeps its client session open on
a thread of its own (``Session``), and the tests send it calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_server
import psutil
import pytest
from cluster.procs import wait_until
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.errors import ConfigError
from ensemble_launcher.orchestrator import ClusterClient

SCRIPT = Path(mcp_server.__file__).resolve()
EXAMPLE = SCRIPT.parents[1] / "examples" / "mcp"
CALL_TIMEOUT = 60.0


# -- a client session on its own thread ------------------------------------------------------


class Session:
    """An MCP ClientSession kept open on an event loop of its own thread, so that one
    server serves many tests; ``call`` runs a coroutine on it and returns its result.
    ``proc``, ``url`` and ``token_file`` are the server's, when the test started it (HTTP)."""

    def __init__(self, streams: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
                 proc: subprocess.Popen | None = None, url: str = "",
                 token_file: Path | None = None):
        self._streams = streams
        self.proc = proc
        self.url = url
        self.token_file = token_file
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._closing: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.session: ClientSession | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._serve(),), daemon=True)

    def __enter__(self) -> Session:
        self._thread.start()
        if not self._ready.wait(CALL_TIMEOUT) or self._error is not None:
            raise RuntimeError(f"the MCP session did not open: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        self._thread.join(CALL_TIMEOUT)
        self._loop.close()

    async def _serve(self) -> None:
        self._closing = asyncio.Event()
        try:
            async with self._streams() as streams, ClientSession(streams[0], streams[1]) as s:
                await s.initialize()
                self.session = s
                self._ready.set()
                await self._closing.wait()
        except BaseException as exc:  # noqa: BLE001 - shown by __enter__
            self._error = exc
            self._ready.set()

    def call(self, make: Callable[[ClientSession], Awaitable[Any]]) -> Any:
        assert self.session is not None
        return asyncio.run_coroutine_threadsafe(make(self.session), self._loop) \
            .result(CALL_TIMEOUT)

    def tool(self, name: str, arguments: dict[str, Any], **options: Any) -> Any:
        return self.call(lambda s: s.call_tool(name, arguments, **options))


def stdio_session(*args: str, errlog: Path, command: str = sys.executable,
                  script: Path = SCRIPT) -> Session:
    params = StdioServerParameters(command=command, args=[str(script), *args],
                                   cwd=str(script.parent))

    @contextlib.asynccontextmanager
    async def streams():
        with open(errlog, "w") as log:
            async with stdio_client(params, errlog=log) as pair:
                yield pair

    return Session(streams)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"the server exited with {proc.returncode}"
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def cluster_pid(checkpoint: Path) -> int:
    from ensemble_launcher.cluster.checkpoint import ClusterFile

    return ClusterFile(checkpoint).read().pid


@pytest.fixture(scope="module")
def stdio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp("mcp-stdio")
    with stdio_session("stdio", str(tmp / "cluster"), errlog=tmp / "server.log") as session:
        yield session


def http_streams(transport: str, url: str, token: str) \
        -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
    """The official client's streams to ``url``, sending ``token`` as an agent's config
    does (a header)."""
    headers = {"Authorization": f"Bearer {token}"}
    if transport == "sse":
        return lambda: sse_client(f"{url}/sse", headers=headers)

    @contextlib.asynccontextmanager
    async def streams():
        async with create_mcp_http_client(headers=headers) as client, \
                streamable_http_client(f"{url}/mcp", http_client=client) as pair:
            yield pair

    return streams


def start_http_server(tmp: Path, mode: str, port: int) -> subprocess.Popen:
    """tests/mcp_server.py in ``mode`` on ``port``, its XDG_RUNTIME_DIR ``tmp/runtime``,
    once it listens."""
    runtime = tmp / "runtime"
    runtime.mkdir(mode=0o700)
    with open(tmp / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), mode, str(port),
                                 str(tmp / "cluster")], cwd=SCRIPT.parent,
                                env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: listening(port, proc), 60, f"the {mode} server on port {port}")
    return proc


@contextlib.contextmanager
def served_over_http(tmp: Path, transport: str) -> Iterator[Session]:
    """A Server in a subprocess on a free port, and a client session to it with the token
    from the file where the server's XDG_RUNTIME_DIR puts it. The file is gone once the
    server stopped."""
    port = free_port()
    token_file = tmp / "runtime" / "ensemble_launcher" / f"mcp-{port}.token"
    proc = start_http_server(tmp, transport, port)
    try:
        url = f"http://127.0.0.1:{port}"
        with Session(http_streams(transport, url, token_file.read_text()), proc, url,
                     token_file) as session:
            head = cluster_pid(tmp / "cluster")
            yield session
    finally:
        proc.terminate()
        proc.wait(60)
    wait_until(lambda: not psutil.pid_exists(head), 30,
               f"SIGTERM to stop the server's head {head}")
    assert not token_file.exists()


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    with served_over_http(tmp_path_factory.mktemp("mcp-http"), "streamable-http") as session:
        yield session


@pytest.fixture(scope="module")
def sse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    with served_over_http(tmp_path_factory.mktemp("mcp-sse"), "sse") as session:
        yield session


FIXTURES = {"stdio": "stdio_server", "streamable-http": "http_server", "sse": "sse_server"}


@pytest.fixture(scope="module", params=list(FIXTURES))
def server(request: pytest.FixtureRequest) -> Session:
    return request.getfixturevalue(FIXTURES[request.param])


def structured(result: Any) -> Any:
    assert not result.is_error, result.content
    return result.structured_content["result"]


def error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return result.content[0].text


# -- tools over both transports ----------------------------------------------------------------


def test_tools_are_listed_with_their_schemas_and_list_schemas_for_ensembles(server):
    tools = {tool.name: tool for tool in server.call(lambda s: s.list_tools()).tools}
    assert {"simulate", "ensemble_simulate", "ensemble_grid", "double_later",
            "ensemble_double_later", "echo", "ensemble_exit_with"} <= set(tools)
    one = tools["simulate"].input_schema
    assert one["properties"]["pressure"]["type"] == "number"
    assert one["required"] == ["pressure"]
    assert one["properties"]["temperature"]["default"] == 300.0
    assert mcp_server.simulate.__doc__ in tools["simulate"].description
    ensemble = tools["ensemble_simulate"].input_schema
    for name in ("pressure", "temperature"):
        assert ensemble["properties"][name]["type"] == "array"
        assert ensemble["properties"][name]["items"] == {"type": "number"}
    assert ensemble["required"] == ["pressure"]
    assert "list" in tools["ensemble_simulate"].description
    assert mcp_server.simulate.__doc__ in tools["ensemble_simulate"].description
    assert set(tools["echo"].input_schema["properties"]) == {"P", "T"}
    assert tools["echo"].description == "Echoes P and T."


def test_a_tool_call_returns_what_a_direct_call_returns(server):
    assert structured(server.tool("simulate", {"pressure": 2.5, "temperature": 310.0})) == \
        mcp_server.simulate(2.5, 310.0)
    assert structured(server.tool("simulate", {"pressure": 2.5})) == mcp_server.simulate(2.5)


def test_a_three_element_ensemble_equals_three_direct_calls_in_order(server):
    pressures, temperatures = [1.0, 2.0, 3.0], [300.0, 200.0, 100.0]
    lists = {"pressure": pressures, "temperature": temperatures}
    assert structured(server.tool("ensemble_simulate", lists)) == \
        [mcp_server.simulate(p, t) for p, t in zip(pressures, temperatures, strict=True)]
    assert structured(server.tool("ensemble_simulate", {"pressure": pressures})) == \
        [mcp_server.simulate(p) for p in pressures]


def test_many_to_many_crosses_the_lists_the_last_varying_fastest(server):
    lists = {"pressure": [1.0, 2.0], "temperature": [10.0, 20.0, 30.0]}
    assert structured(server.tool("ensemble_grid", lists)) == \
        [mcp_server.simulate(p, t) for p in (1.0, 2.0) for t in (10.0, 20.0, 30.0)]


def test_one_failing_element_gives_its_error_in_its_place(server):
    results = structured(server.tool("ensemble_flaky", {"x": [1, 0, 4]}))
    assert results[0] == 1.0 and results[2] == 0.25
    assert results[1] == {"error": {"type": "ZeroDivisionError",
                                    "message": "division by zero"}}


def test_lists_of_unequal_lengths_are_a_tool_error_naming_the_lengths(server):
    text = error_text(server.tool("ensemble_simulate", {"pressure": [1.0, 2.0, 3.0],
                                                         "temperature": [1.0]}))
    assert "pressure has 3" in text and "temperature has 1" in text


def test_a_hundred_elements_report_progress_as_they_finish(server):
    updates: list[tuple[float, float | None]] = []

    async def progress(done: float, total: float | None, _message: str | None) -> None:
        updates.append((done, total))

    result = server.tool("ensemble_pause", {"seconds": [0.01] * 100}, progress_callback=progress)
    assert structured(result) == [0.01] * 100
    wait_until(lambda: bool(updates) and updates[-1][0] == 100, 10,
               "the last progress notification")
    assert len(updates) >= 2, updates
    assert all(total == 100 for _, total in updates)
    done = [d for d, _ in updates]
    assert done == sorted(set(done)), done


def test_two_concurrent_calls_each_get_their_own_results(server):
    async def both(session: ClientSession) -> list[Any]:
        return await asyncio.gather(
            session.call_tool("ensemble_simulate",
                              {"pressure": [float(i) for i in range(40)]}),
            session.call_tool("ensemble_double_later", {"x": list(range(40))}))

    first, second = server.call(both)
    assert structured(first) == [mcp_server.simulate(float(i)) for i in range(40)]
    assert structured(second) == [2 * i for i in range(40)]


def test_async_functions_work_as_tools_and_ensemble_tools(server):
    assert structured(server.tool("double_later", {"x": 21})) == 42
    assert structured(server.tool("ensemble_double_later", {"x": [1, 2, 3]})) == [2, 4, 6]


def test_a_command_template_answers_stdout_and_takes_values_as_data(server, tmp_path):
    marker = tmp_path / "injected"
    value = f"1; touch {marker}"
    out = structured(server.tool("echo", {"P": value, "T": 5}))
    direct = subprocess.run(["echo", f"P={value}", "T=5"], capture_output=True, text=True)
    assert out == direct.stdout
    assert not marker.exists()


def test_a_command_template_writes_a_literal_brace_twice_as_ensemble_files_do(server):
    assert structured(server.tool("awk_plus", {"a": 41})) == "42\n"


def test_a_failed_command_element_gives_its_exit_code_and_stderr(server):
    results = structured(server.tool("ensemble_exit_with", {"code": [0, 3]}))
    assert results[0] == "out 0\n"
    error = results[1]["error"]
    assert error["type"] == "CommandFailed" and error["exit_code"] == 3
    assert error["stderr"] == "err 3\n"


# -- one transport, or none --------------------------------------------------------------------


def test_a_tool_with_its_own_launcher_config_runs_in_a_cluster_with_it(stdio_server, tmp_path):
    assert structured(stdio_server.tool("attempts", {"path": str(tmp_path / "tries")})) == 3


def test_a_tool_s_env_reaches_its_tasks(stdio_server):
    assert structured(stdio_server.tool("environment_value", {"name": "SIM_MODE"})) == "fast"


def test_http_listens_on_loopback_only(http_server):
    addresses = {c.laddr.ip for c in psutil.Process(http_server.proc.pid).net_connections()
                 if c.status == psutil.CONN_LISTEN}
    assert addresses == {"127.0.0.1"}


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "stranger", "version": "0"}}}


def status_of(request: str, url: str, authorization: str | None) -> int:
    """The HTTP status of one request a client that lacks the token could make: a GET of
    the SSE stream, a POST of a message to the SSE endpoint, or an MCP initialize."""
    headers = {"Accept": "application/json, text/event-stream"}
    if authorization is not None:
        headers["Authorization"] = authorization
    with httpx2.Client(timeout=CALL_TIMEOUT) as client:
        if request == "GET /sse":
            with client.stream("GET", f"{url}/sse", headers=headers) as response:
                return response.status_code
        path = "/messages/?session_id=0" if request == "POST /messages/" else "/mcp"
        return client.post(f"{url}{path}", json=INITIALIZE, headers=headers).status_code


@pytest.mark.parametrize("transport, request_", [("streamable-http", "POST /mcp"),
                                                 ("sse", "GET /sse"),
                                                 ("sse", "POST /messages/")])
def test_http_refuses_a_client_without_the_token_or_with_a_wrong_one(request, transport,
                                                                     request_):
    server = request.getfixturevalue(FIXTURES[transport])
    token = server.token_file.read_text()
    wrong = {"none": None, "no token": "Bearer", "a prefix": f"Bearer {token[:-1]}",
             "longer": f"Bearer {token}x", "other case": f"Bearer {token.swapcase()}",
             "basic": f"Basic {token}", "no scheme": token}
    statuses = {why: status_of(request_, server.url, header) for why, header in wrong.items()}
    assert statuses == dict.fromkeys(wrong, 401)
    if request_ == "POST /mcp":
        assert status_of(request_, server.url, f"Bearer {token}") == 200


def test_the_official_client_without_the_token_cannot_open_a_session(http_server):
    async def initialize() -> None:
        async with streamable_http_client(f"{http_server.url}/mcp") as streams, \
                ClientSession(*streams) as session:
            await session.initialize()

    with pytest.RaisesGroup(pytest.RaisesExc(MCPError, match="error response"),
                            flatten_subgroups=True):
        asyncio.run(asyncio.wait_for(initialize(), CALL_TIMEOUT))


def test_the_token_is_in_a_0600_file_in_a_0700_directory(http_server):
    path = http_server.token_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.getuid() == path.parent.stat().st_uid
    assert len(path.read_text()) >= 32


def test_require_token_false_serves_http_to_anyone_with_a_warning(tmp_path):
    port = free_port()
    proc = start_http_server(tmp_path, "open", port)
    try:
        assert status_of("POST /mcp", f"http://127.0.0.1:{port}", None) == 200
        assert "require_token=False" in (tmp_path / "server.log").read_text()
        assert not (tmp_path / "runtime" / "ensemble_launcher").exists()
    finally:
        proc.terminate()
        proc.wait(60)


def test_the_token_never_reaches_a_task(http_server):
    token = http_server.token_file.read_text()
    result = http_server.tool("environment", {})
    assert not result.is_error, result.content
    assert "PATH" in result.structured_content
    assert token not in json.dumps(result.structured_content)


def test_the_server_stops_its_cluster_when_it_stops(tmp_path):
    checkpoint = tmp_path / "cluster"
    with stdio_session("stdio", str(checkpoint), errlog=tmp_path / "server.log") as session:
        assert structured(session.tool("simulate", {"pressure": 1.0})) == mcp_server.simulate(1.0)
        pid = cluster_pid(checkpoint)
    wait_until(lambda: not psutil.pid_exists(pid), 30, f"the cluster's head {pid} to stop")


def test_elfastmcp_attaches_to_a_cluster_started_separately(tmp_path):
    checkpoint = tmp_path / "cluster"
    config = LauncherConfig(cluster=True, checkpoint_dir=str(checkpoint), return_stdout=True)
    with EnsembleLauncher({}, SystemConfig(name="local"), config):
        with stdio_session("attach", str(checkpoint), errlog=tmp_path / "server.log") as s:
            assert structured(s.tool("ensemble_simulate", {"pressure": [1.0, 2.0]})) == \
                [mcp_server.simulate(1.0), mcp_server.simulate(2.0)]
            assert structured(s.tool("echo", {"P": 1, "T": 2})) == "P=1 T=2\n"
        with ClusterClient(checkpoint) as client:
            assert client.submit(mcp_server.double_later, 4).result(30) == 8


def test_the_example_serves_its_simulation_as_its_client_config_starts_it(tmp_path):
    spec = importlib.util.spec_from_file_location("mcp_example", EXAMPLE / "server.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    config = json.loads((EXAMPLE / "client_config.json").read_text())
    stdio = config["mcpServers"]["ensemble_launcher"]
    script = Path(stdio["args"][0].replace("/path/to/ensemble_launcher", str(EXAMPLE.parents[1])))
    http = config["mcpServers"]["ensemble_launcher_http"]
    assert http["url"] == "http://127.0.0.1:9276/mcp"
    assert http["headers"]["Authorization"].startswith("Bearer <")
    assert "ensemble_launcher/mcp-9276.token" in http["headers"]["Authorization"]
    with stdio_session(errlog=tmp_path / "server.log", script=script,
                       command=stdio["command"].replace("/path/to/venv/bin/python",
                                                        sys.executable)) as session:
        assert structured(session.tool("oscillate", {"damping": 0.1, "frequency": 2.0})) == \
            example.oscillate(0.1, 2.0)
        sweep = {"damping": [0.0, 0.5], "frequency": [1.0, 2.0]}
        assert structured(session.tool("ensemble_oscillate_grid", sweep)) == \
            [example.oscillate(d, f) for d in (0.0, 0.5) for f in (1.0, 2.0)]
        line = structured(session.tool("sim_cli", {"damping": 0.1, "frequency": 2.0}))
        assert line.startswith("damping=0.1 frequency=2.0 x_final=")


@pytest.mark.parametrize("template, fragment", [
    ("./sim --P {P", "not closed"),
    ("./sim --P {P!r}", "conversions"),
    ("echo `cat {P}`", "backquotes"),
    ("", "non-empty"),
])
def test_a_bad_command_template_is_refused_naming_it(template, fragment):
    from ensemble_launcher.mcp import Server

    with pytest.raises(ConfigError, match=fragment) as caught:
        Server().tool(template, name="sim")
    assert "'sim'" in str(caught.value)


def test_the_three_registration_forms_register_tools_and_return_the_function():
    from ensemble_launcher.mcp import Server

    mcp = Server()

    @mcp.tool
    def plain(x: int) -> int:
        return x + 1

    @mcp.ensemble_tool(relation="many-to-many", nnodes=1)
    def crossed(a: int, b: int) -> int:
        return a * b

    assert mcp.ensemble_tool(mcp_server.simulate) is mcp_server.simulate
    assert plain(1) == 2 and crossed(2, 3) == 6
    names = {tool.name for tool in asyncio.run(mcp.list_tools())}
    assert names == {"plain", "ensemble_crossed", "ensemble_simulate"}


def test_tools_an_agent_could_not_call_are_refused_when_registered():
    from ensemble_launcher.mcp import ELFastMCP, Server

    mcp = Server()
    with pytest.raises(ConfigError, match="needs name="):
        mcp.tool("./sim {P}")
    with pytest.raises(ConfigError, match=r"\*values"):
        mcp.tool(lambda *values: 0, name="star")
    with pytest.raises(ConfigError, match="nnodes=1, ppn=1"):
        mcp.tool(mcp_server.simulate, ppn=2)
    with pytest.raises(ConfigError, match=r"tool 'simulate': .*env"):
        mcp.tool(mcp_server.simulate, env={"1BAD": "x"})
    with pytest.raises(ConfigError, match="relation"):
        mcp.ensemble_tool(mcp_server.simulate, relation="zip")
    mcp.tool(mcp_server.simulate)
    with pytest.raises(ConfigError, match="already registered"):
        mcp.tool(mcp_server.simulate)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        ELFastMCP()
    with pytest.raises(ConfigError, match="launcher_config"):
        ELFastMCP(checkpoint_dir="x").tool(mcp_server.simulate,
                                           launcher_config=LauncherConfig())


def test_a_given_token_must_be_one_a_header_carries_and_errors_never_show_it():
    from ensemble_launcher.mcp import Server

    for bad in ("short-secret", "a token with spaces in it", "tøken-" * 4):
        with pytest.raises(ConfigError, match="token=") as caught:
            Server(token=bad)
        assert bad not in str(caught.value)
    with pytest.raises(ConfigError, match="require_token=False"):
        Server(token="x" * 32, require_token=False)
    with pytest.raises(ConfigError, match="not go with token_verifier="):
        Server(token="x" * 32, token_verifier=object())
    Server(token="x" * 32)


def test_importing_ensemble_launcher_imports_neither_mcp_nor_paramiko():
    code = ("import sys, ensemble_launcher, ensemble_launcher.mcp\n"
            "from ensemble_launcher import EnsembleLauncher\n"
            "from ensemble_launcher.orchestrator import ClusterClient\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'paramiko'))\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr


def test_the_benchmark_sets_an_ensemble_call_beside_direct_submits():
    bench = SCRIPT.parents[1] / "bench" / "bench_mcp.py"
    out = subprocess.run([sys.executable, str(bench), "--quick", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ERROR" not in out.stdout, out.stdout
    assert "ClusterClient submit + result" in out.stdout and "per element" in out.stdout
