"""Where a master listens and how it starts its children, decided on the master's host."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ensemble_launcher.comm.addresses import tcp_bind
from ensemble_launcher.errors import ConfigError
from ensemble_launcher.executors.mpi import mpi_launch_factory
from ensemble_launcher.launchers import choose_launcher
from ensemble_launcher.orchestrator.master import TreeSettings
from ensemble_launcher.orchestrator.tree import TreeNode
from ensemble_launcher.resources import is_this_host
from ensemble_launcher.resources.discovery import address_for_workers, local_address_for

if TYPE_CHECKING:
    from ensemble_launcher.config import LauncherConfig


def tree_settings(me: TreeNode, config: LauncherConfig, run_dir: Path,
                  child_env: dict[str, str]) -> TreeSettings:
    hosts = [c.host for c in me.children]
    all_local = all(is_this_host(h) for h in hosts)
    launcher = choose_launcher(config.child_launcher, hosts, all_local,
                               config.child_launcher_args, config.mpi_flavor)
    return TreeSettings(
        launcher=launcher, bind=_bind(hosts, all_local, config),
        heartbeat_interval=config.heartbeat_interval, start_timeout=config.child_start_timeout,
        run_dir=run_dir, child_env=child_env,
        shared_step=config.child_step == "shared",
        mpi=mpi_launch_factory(config.mpi_launcher, config.mpi_flavor, config.mpi_args,
                               config.gpu_selector),
        kill_grace=config.kill_grace,
        hosted_workers=config.simulated_nodes_per_process)


def _bind(hosts: list[str], all_local: bool, config: LauncherConfig) -> str:
    """``pipe`` for the multiprocessing comm; ipc when every child is on this host; else
    TCP on the one address that reaches them (or the configured address or interface),
    never on every interface."""
    if config.comm_name == "multiprocessing":
        if not all_local:
            raise ConfigError("comm_name='multiprocessing' connects children on this host "
                              f"only, but children run on {', '.join(hosts[:4])}; use 'zmq'")
        return "pipe"
    provider = config.provider
    if provider is not None and provider.name != "local":
        return tcp_bind(provider.address) if provider.address else \
            f"tcp://{address_for_workers()}"
    if config.bind_address:
        return tcp_bind(config.bind_address)
    if all_local:
        return "ipc"
    remote = next(h for h in hosts if not is_this_host(h))
    return f"tcp://{local_address_for(remote)}"
