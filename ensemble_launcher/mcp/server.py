"""The two MCP servers of the original project: one attached to a cluster started
separately (``ELFastMCP``), and one that starts its own (``Server``).

Either is a client of a cluster, like any ``ClusterClient`` user: the cluster's head,
its tree and its journal do not know an agent is behind the tasks, and a cluster keeps
the authentication of cluster mode (its 0700 checkpoint directory, CURVE over TCP).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.errors import ConfigError
from ensemble_launcher.launcher import EnsembleLauncher
from ensemble_launcher.mcp.toolserver import ClusterKey, ToolServer
from ensemble_launcher.orchestrator import ClusterClient


class ELFastMCP(ToolServer):
    """MCP tools that run in the cluster whose checkpoint directory is ``checkpoint_dir``
    (started with ``el start`` or ``EnsembleLauncher(...).start()``), its tasks routed
    to ``node_id``'s subtree. ``server_kwargs`` go to the SDK's server (``name``,
    ``instructions``, ...), and ``host``/``port`` to the HTTP transports, which require
    a bearer token (``token=``, ``require_token=``: see ``ToolServer``). Command tools
    need the cluster to return stdout (``LauncherConfig(return_stdout=True)``)."""

    def __init__(self, checkpoint_dir: str | os.PathLike | None = None,
                 node_id: str = "global", *, name: str = "ensemble_launcher",
                 host: str = "127.0.0.1", port: int = 8000, **server_kwargs: Any) -> None:
        if checkpoint_dir is None:
            raise ConfigError("ELFastMCP attaches to a running cluster: pass checkpoint_dir="
                              "(its LauncherConfig.checkpoint_dir), or use Server, which "
                              "starts its own")
        super().__init__(name=name, host=host, port=port, **server_kwargs)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.node_id = node_id

    def _connect(self) -> dict[ClusterKey, ClusterClient]:
        client = ClusterClient(self.checkpoint_dir, self.node_id, client_id="mcp")
        return {None: client.start()}


class Server(ToolServer):
    """An MCP server with its own cluster on this node, or on this job's allocation: it
    starts when the server is served (``run()``, or ``with server:``) and stops with it.

    The cluster's checkpoint directory is ``checkpoint_dir``, or a private temporary
    directory removed at the end. A tool registered with its own ``launcher_config=`` or
    ``system_config=`` gets a cluster of its own, started beside the first. Clusters
    return the commands' stdout, which command tools answer."""

    def __init__(self, port: int = 9276, system_config: SystemConfig | None = None,
                 launcher_config: LauncherConfig | None = None, host: str = "127.0.0.1", *,
                 checkpoint_dir: str | os.PathLike | None = None,
                 nodes: list[str] | None = None, stop_timeout: float = 30.0,
                 name: str = "ensemble_launcher", **server_kwargs: Any) -> None:
        super().__init__(name=name, host=host, port=port, **server_kwargs)
        self.system_config = system_config
        self.launcher_config = launcher_config
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.nodes = nodes
        self.stop_timeout = stop_timeout
        self._configs: dict[ClusterKey, tuple[SystemConfig | None, LauncherConfig | None]] = {
            None: (system_config, launcher_config)}
        self._launchers: list[EnsembleLauncher] = []
        self._scratch: Path | None = None

    def _cluster_key(self, launcher_config: LauncherConfig | None,
                     system_config: SystemConfig | None) -> ClusterKey:
        if launcher_config is None and system_config is None:
            return None
        system = system_config or self.system_config
        launcher = launcher_config or self.launcher_config
        key = (_json(system), _json(launcher))
        if key == (_json(self.system_config), _json(self.launcher_config)):
            return None
        if key not in self._configs and self._clients:
            raise ConfigError("a tool with configs of its own needs a cluster of its own: "
                              "register it before the server starts")
        self._configs.setdefault(key, (system, launcher))
        return key

    def _connect(self) -> dict[ClusterKey, ClusterClient]:
        clients: dict[ClusterKey, ClusterClient] = {}
        try:
            for n, (key, (system, launcher)) in enumerate(self._configs.items()):
                launcher_obj = EnsembleLauncher(
                    {}, system, _cluster_config(launcher, self._directory(n, launcher)),
                    Nodes=self.nodes)
                launcher_obj.start(detach=False)
                self._launchers.append(launcher_obj)
                clients[key] = ClusterClient(launcher_obj.run_dir, client_id="mcp").start()
        except BaseException:
            for client in clients.values():
                client.teardown()
            self._disconnect()
            raise
        return clients

    def _directory(self, n: int, launcher: LauncherConfig | None) -> Path:
        """The n-th cluster's checkpoint directory: ours, or its config's, or a private
        one. ``detach=False`` above keeps each head in our process group, so a signal to
        the group (an agent stopping a stdio server) drains them too."""
        if n == 0 and self.checkpoint_dir is not None:
            return self.checkpoint_dir
        if launcher is not None and launcher.checkpoint_dir:
            return Path(launcher.checkpoint_dir)
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir.with_name(f"{self.checkpoint_dir.name}-{n}")
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="el-mcp-"))
        return self._scratch / f"cluster-{n}"

    def _disconnect(self) -> None:
        launchers, self._launchers = self._launchers, []
        try:
            for launcher in launchers:
                launcher.stop(timeout=self.stop_timeout)
        finally:
            scratch, self._scratch = self._scratch, None
            if scratch is not None:
                with contextlib.suppress(OSError):
                    shutil.rmtree(scratch)


def _json(config: SystemConfig | LauncherConfig | None) -> str:
    return "" if config is None else config.model_dump_json()


def _cluster_config(config: LauncherConfig | None, directory: Path) -> LauncherConfig:
    """``config`` as a cluster in ``directory`` that returns the commands' stdout."""
    given = {} if config is None else config.model_dump(exclude_unset=True)
    return LauncherConfig.model_validate({**given, "cluster": True, "return_stdout": True,
                                          "checkpoint_dir": str(directory)})
