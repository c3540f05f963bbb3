"""The tools every MCP server of ours registers: functions and command templates whose
calls run as tasks of a cluster, one task per call (``tool``) or one per element of the
argument lists (``ensemble_tool``).

Built on the SDK's ``MCPServer`` (FastMCP before mcp 2): it speaks the protocol, reads
the schemas from our handlers' signatures and serves the transports; we add the
registration forms of the original project and the cluster behind the tools. How a
server reaches its cluster (one it starts, or one it attaches to) is its subclass's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

try:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError as missing:  # pragma: no cover - depends on the install
    raise ImportError("the MCP server needs the MCP SDK: pip install "
                      "'ensemble_launcher[mcp]'") from missing

from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import ConfigError, EnsembleLauncherError
from ensemble_launcher.mcp.auth import BearerToken, auth_settings
from ensemble_launcher.mcp.calls import (
    Resources,
    TaskIds,
    checked_resources,
    make_task,
    run_ensemble,
    run_one,
    stdout_of,
)
from ensemble_launcher.mcp.commands import CommandTemplate
from ensemble_launcher.mcp.tools import (
    Signature,
    check_relation,
    elements,
    ensemble_parameters,
    handler_for,
    signature_of,
)
from ensemble_launcher.orchestrator import ClusterClient

log = logging.getLogger("ensemble_launcher")

TRANSPORTS = ("stdio", "streamable-http", "sse")
Transport = Literal["stdio", "streamable-http", "sse"]
#: The cluster a tool's tasks go to: None for the server's own; else the configs a tool
#: was registered with (a Server starts a cluster for each distinct pair).
ClusterKey = tuple[str, str] | None
Target = Callable[..., Any] | str


class ToolServer(MCPServer):
    """An MCP server whose tools run in a cluster. HTTP transports listen on ``host``
    (127.0.0.1 unless said otherwise) and ``port``, and answer only requests with
    ``Authorization: Bearer <token>``: ``token``, or a random one for each run, kept in
    ``token_file`` while it serves (see ``ensemble_launcher.mcp.auth``).
    ``require_token=False`` serves HTTP without authentication, with a warning; the SDK's
    own ``auth=`` and ``token_verifier=`` (OAuth) replace the token."""

    def __init__(self, *, name: str, host: str, port: int, token: str | None = None,
                 require_token: bool = True, **server_kwargs: Any) -> None:
        self._bearer = _bearer(token, require_token, server_kwargs)
        if self._bearer is not None:
            server_kwargs.update(token_verifier=self._bearer, auth=auth_settings())
        super().__init__(name, **server_kwargs)
        self.host = host
        self.port = port
        self.require_token = require_token
        self.token_file: Path | None = None
        self._clients: dict[ClusterKey, ClusterClient] = {}
        self._ids = TaskIds()
        self._lock = threading.Lock()

    # -- registration ------------------------------------------------------------------------

    def tool(self, fn: Target | None = None, *, name: str | None = None,  # type: ignore[override]
             description: str | None = None, nnodes: int = 1, ppn: int = 1,
             gpus_per_process: int | float = 0, env: dict[str, str] | None = None,
             launcher_config: LauncherConfig | None = None,
             system_config: SystemConfig | None = None) -> Any:
        """Register ``fn`` (a function, or a command template with ``name=``) as a tool
        that runs one task per call: ``mcp.tool(fn)``, ``@mcp.tool`` or
        ``@mcp.tool(...)``. Returns ``fn``, which stays callable as it was."""
        return self._decorate(fn, lambda target: self._register(
            target, name, description, Resources(nnodes, ppn, gpus_per_process, env or {}),
            self._cluster_key(launcher_config, system_config), None))

    def ensemble_tool(self, fn: Target | None = None, *, name: str | None = None,
                      description: str | None = None, relation: str = "one-to-one",
                      nnodes: int = 1, ppn: int = 1, gpus_per_process: int | float = 0,
                      env: dict[str, str] | None = None,
                      launcher_config: LauncherConfig | None = None,
                      system_config: SystemConfig | None = None) -> Any:
        """Register ``fn`` as the tool ``ensemble_<name>``: every parameter takes a list,
        paired one-to-one or crossed (``relation="many-to-many"``), one task per element;
        the result is the list of their values in input order. The same three forms as
        ``tool``."""
        return self._decorate(fn, lambda target: self._register(
            target, name, description, Resources(nnodes, ppn, gpus_per_process, env or {}),
            self._cluster_key(launcher_config, system_config),
            check_relation(relation, f"ensemble_{name or getattr(target, '__name__', '')}")))

    @staticmethod
    def _decorate(fn: Target | None, register: Callable[[Target], Target]) -> Any:
        return register if fn is None else register(fn)

    def _cluster_key(self, launcher_config: LauncherConfig | None,
                     system_config: SystemConfig | None) -> ClusterKey:
        if launcher_config is None and system_config is None:
            return None
        raise ConfigError(f"{type(self).__name__} attaches to a cluster started separately, "
                          "whose configs are its own: drop launcher_config= and "
                          "system_config= from the tool, or use Server, which starts the "
                          "clusters its tools ask for")

    def _register(self, target: Target, name: str | None, description: str | None,
                  resources: Resources, key: ClusterKey, relation: str | None) -> Target:
        made = _definition(target, name, description, resources)
        tool_name = made.name if relation is None else f"ensemble_{made.name}"
        checked_resources(made.resources, tool_name, made.template is None)
        if self._tool_manager.get_tool(tool_name) is not None:
            raise ConfigError(f"a tool named {tool_name!r} is already registered")
        make = self._task_maker(target, made)
        value = self._stdout_reader(key) if made.template is not None else _same
        if relation is None:
            handler = handler_for(tool_name, made.doc, made.signature,
                                  self._one_call(make, key, value))
        else:
            handler = handler_for(tool_name, _ensemble_doc(made.name, relation, made.doc),
                                  ensemble_parameters(made.signature),
                                  self._ensemble_call(make, key, value, relation))
        self.add_tool(handler, name=tool_name, description=handler.__doc__)
        return target

    def _task_maker(self, target: Target, made: Definition) \
            -> Callable[[dict[str, Any]], Task]:
        """How one call's values become a task (a ToolError, for values it cannot take)."""
        template, resources = made.template, made.resources
        if template is not None:
            def command_task(values: dict[str, Any]) -> Task:
                try:
                    line = template.render(values)
                except ValueError as exc:
                    raise ToolError(str(exc)) from None
                return make_task(next(self._ids), line, (), {}, resources)
            return command_task

        def call_task(values: dict[str, Any]) -> Task:
            args, kwargs = made.signature.call_arguments(values)
            return make_task(next(self._ids), target, args, kwargs, resources)
        return call_task

    def _one_call(self, make: Callable[[dict[str, Any]], Task], key: ClusterKey,
                  value: Callable[[Any], Any]) -> Callable[..., Any]:
        async def call(_context: Context, arguments: dict[str, Any]) -> Any:
            return value(await run_one(self._submitter(key), make(arguments)))
        return call

    def _ensemble_call(self, make: Callable[[dict[str, Any]], Task], key: ClusterKey,
                       value: Callable[[Any], Any], relation: str) -> Callable[..., Any]:
        async def call(context: Context, arguments: dict[str, Any]) -> list[Any]:
            tasks: list[Task | ToolError] = []
            for element in elements(arguments, relation):
                try:
                    tasks.append(make(element))
                except ToolError as exc:
                    tasks.append(exc)
            return await run_ensemble(self._submitter(key), tasks, context, value)
        return call

    def _stdout_reader(self, key: ClusterKey) -> Callable[[Any], str]:
        return lambda value: stdout_of(value, self._client(key).checkpoint_dir)

    # -- the clusters behind the tools -------------------------------------------------------

    def _submitter(self, key: ClusterKey) -> Callable[[Task], Future]:
        """The cluster's submit; a cluster that is gone or refuses is a tool error the
        agent reads, not a crash whose message the SDK hides."""
        submit = self._client(key).submit

        def submitted(task: Task) -> Future:
            try:
                return submit(task)
            except EnsembleLauncherError as exc:
                raise ToolError(f"{type(exc).__name__}: {exc}") from exc
        return submitted

    def _client(self, key: ClusterKey) -> ClusterClient:
        client = self._clients.get(key)
        if client is None:
            raise ToolError(f"{type(self).__name__} is not connected to its cluster: serve "
                            "it with run(), or inside 'with server:'")
        return client

    def start(self) -> ToolServer:
        """Connect to the cluster(s) the tools run in; run() does it itself."""
        with self._lock:
            if not self._clients:
                self._clients = self._connect()
        return self

    def stop(self) -> None:
        """Disconnect (a Server also stops the clusters it started)."""
        with self._lock:
            clients, self._clients = self._clients, {}
            for client in clients.values():
                client.teardown()
            self._disconnect()

    def _connect(self) -> dict[ClusterKey, ClusterClient]:
        raise NotImplementedError

    def _disconnect(self) -> None:
        """What stop() does once the clients are torn down."""

    def __enter__(self) -> ToolServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------------

    def run(self, transport: Transport = "stdio", **kwargs: Any) -> None:  # type: ignore[override]
        """Serve the tools over ``transport`` until the client or a signal ends it; HTTP
        transports on ``host``:``port`` unless ``host=``/``port=`` say otherwise. The
        cluster connection (a Server: its cluster) lives as long as this call."""
        if transport not in TRANSPORTS:
            raise ConfigError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
        if transport != "stdio":
            kwargs.setdefault("host", self.host)
            kwargs.setdefault("port", self.port)
        with _exit_on_sigterm(), self._authenticated(transport, kwargs.get("port")), self:
            super().run(transport, **kwargs)

    @contextlib.contextmanager
    def _authenticated(self, transport: str, port: int | None) -> Iterator[None]:
        """Over HTTP, the token in its file while we serve; stdio needs none (the client
        started us, and holds our pipes)."""
        if transport == "stdio" or port is None:
            yield
            return
        if self._bearer is None:
            if not self.require_token:
                log.warning("serving MCP over %s on port %s without authentication "
                            "(require_token=False): anyone who reaches the port runs tasks "
                            "as this user", transport, port)
            yield
            return
        with self._bearer.serving(port) as self.token_file:
            try:
                yield
            finally:
                self.token_file = None


def _bearer(token: str | None, require_token: bool,
            server_kwargs: dict[str, Any]) -> BearerToken | None:
    """Our token check; none when it is turned off or the SDK's auth replaces it."""
    sdk_auth = sorted(set(server_kwargs) & {"auth", "token_verifier", "auth_server_provider"})
    if token is not None and (sdk_auth or not require_token):
        raise ConfigError("token= is the bearer token our HTTP transports require: it does "
                          "not go with " + (", ".join(f"{k}=" for k in sdk_auth) or
                                            "require_token=False"))
    return BearerToken(token) if require_token and not sdk_auth else None


@dataclass(frozen=True)
class Definition:
    """What a registered function or template makes of a tool, before its name says
    whether it is the one-call tool or the ensemble one."""

    name: str
    signature: Signature
    doc: str
    resources: Resources
    template: CommandTemplate | None = None


def _definition(target: Target, name: str | None, description: str | None,
                resources: Resources) -> Definition:
    if isinstance(target, str):
        template = CommandTemplate.parse(target, name)
        doc = description or f"Runs the command `{target}` and returns its standard " \
                             "output. Commands run in the server's directory."
        return Definition(name or "", template.signature(), doc,
                          dataclasses.replace(resources, run_dir=os.getcwd()), template)
    if callable(target):
        base = str(name or getattr(target, "__name__", ""))
        if not base or base == "<lambda>":
            raise ConfigError(f"{target!r} needs name=: it has no name a tool can take")
        return Definition(base, signature_of(target, base),
                          description or inspect.getdoc(target) or "", resources)
    raise ConfigError(f"a tool is a function or a command template (a string), not "
                      f"{target!r}")


def _same(value: Any) -> Any:
    return value


def _ensemble_doc(base: str, relation: str, doc: str) -> str:
    pairing = ("crossed: one run per combination, the last list varying fastest"
               if relation == "many-to-many" else
               "paired element by element, so they must have one length")
    head = (f"Ensemble of {base}: every argument is a list, {pairing}. Returns the list "
            "of results in input order; a run that failed has {\"error\": {...}} in its "
            "place (its exception, or a command's exit code and stderr).")
    return f"{head}\n\n{doc}" if doc else head


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM (an agent closing a stdio server, a batch system) unwinds run() so that
    the cluster is stopped, rather than killing the process where it stands."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
