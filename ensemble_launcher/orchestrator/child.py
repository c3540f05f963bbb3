"""Entry point of every process of the tree below ``main``: a worker or a sub-master.

    python -m ensemble_launcher.orchestrator.child

Its environment says which subtrees this launcher step starts (``EL_TREE``; each process
picks its own by host name, else by launcher rank) and where its start-up file is
(``EL_BOOT``); the file holds the parent's address, the CURVE keys of its role, and the
launcher and system configs as JSON (see ``orchestrator.boot``). The ``EL_*`` variables
leave the environment before anything starts, so no task inherits them. Nothing secret is
on a command line or in an environment.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import socket
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import zmq

from ensemble_launcher.comm import CurveKeys, Failed, terminate
from ensemble_launcher.logfiles import open_log_file
from ensemble_launcher.orchestrator.boot import (
    BOOT_ENV,
    HOSTED_ENV,
    PARENT_ENV,
    TREE_ENV,
    BootError,
    Settings,
    adopt_sys_path,
    read_boot,
    take_environment,
)
from ensemble_launcher.orchestrator.parent_link import ParentLink, ParentLost
from ensemble_launcher.orchestrator.signals import left_to_parent
from ensemble_launcher.orchestrator.tree import TreeNode

if TYPE_CHECKING:
    from ensemble_launcher.config import LauncherConfig, SystemConfig

log = logging.getLogger("ensemble_launcher")

_RANK_VARS = ("EL_CHILD_INDEX", "SLURM_PROCID", "PMI_RANK", "PMIX_RANK",
              "OMPI_COMM_WORLD_RANK", "PALS_RANKID")

EXIT_PARENT_LOST, EXIT_FAILED, EXIT_INTERRUPTED = 3, 4, 130


def pick_entry(entries: list[TreeNode], hostname: str, env: dict[str, str]) -> TreeNode:
    """This process's subtree: the one whose host is ours, else the one at our rank."""
    if len(entries) == 1:
        return entries[0]
    short = hostname.split(".")[0]
    matches = [e for e in entries if e.host.split(".")[0] == short]
    if len(matches) == 1:
        return matches[0]
    for var in _RANK_VARS:
        if env.get(var, "").isdigit():
            return entries[int(env[var])]
    raise RuntimeError(f"cannot tell which of {[e.name for e in entries]} this process is "
                       f"(host {hostname}, no rank variable among {', '.join(_RANK_VARS)})")


def _as_attributes(text: str) -> Any:
    """A config the root validated and dumped, read back as plain attributes, unchecked:
    validating it again would import pydantic in every process of the tree, about a
    quarter of a child's start-up."""
    return SimpleNamespace(**json.loads(text))


def main() -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        env = take_environment()
        entries = [TreeNode.from_dict(d) for d in json.loads(env[TREE_ENV])]
        if env.get(HOSTED_ENV):
            return _host([(e, {**env, **read_boot(env[BOOT_ENV], e.name)}) for e in entries])
        me = pick_entry(entries, socket.gethostname(), env)
        env.update(read_boot(env[BOOT_ENV], me.name))
    except BootError as exc:
        print(f"ensemble_launcher: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _run(me, env)


def _run(me: TreeNode, env: dict[str, str]) -> int:
    settings = Settings.from_env(env)
    adopt_sys_path(settings.sys_path)
    launcher_config: LauncherConfig = _as_attributes(settings.launcher_config)
    system_config: SystemConfig = _as_attributes(settings.system_config)
    _setup_logging(me.name, me.role, launcher_config, Path(settings.run_dir))
    keys = CurveKeys.from_env(env)
    ctx = zmq.Context()
    link = ParentLink(ctx, env[PARENT_ENV], me.name, keys,
                      heartbeat_interval=launcher_config.heartbeat_interval,
                      decode_tasks=me.role == "worker",
                      started_by_parent=not settings.block)
    try:
        with left_to_parent():
            if me.role == "worker":
                from ensemble_launcher.orchestrator.roles import run_worker

                run_worker(me, link, launcher_config, system_config, settings)
            else:
                from ensemble_launcher.orchestrator.roles import run_submaster

                run_submaster(me, link, ctx, launcher_config, settings, keys)
            link.bye()
        return 0
    except ParentLost as exc:
        log.error("%s: %s; stopping", me.name, exc)
        return EXIT_PARENT_LOST
    except KeyboardInterrupt as exc:
        log.error("%s: %s; stopped", me.name, exc or "interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # any failure: logged, reported to the parent, EXIT_FAILED
        log.exception("%s failed", me.name)
        link.endpoint.send(Failed(me.name, f"{type(exc).__name__}: {exc}\n"
                                           f"{traceback.format_exc(limit=5)}"))
        return EXIT_FAILED
    finally:
        link.close()
        terminate(ctx)


def _host(members: list[tuple[TreeNode, dict[str, str]]]) -> int:
    """Run every simulated worker of our ``EL_TREE`` in this process, each with its own
    link to its master (``simulated_nodes_per_process``); they share the settings."""
    from ensemble_launcher.orchestrator.roles import run_hosted_workers

    first, env = members[0]
    settings = Settings.from_env(env)
    adopt_sys_path(settings.sys_path)
    launcher_config: LauncherConfig = _as_attributes(settings.launcher_config)
    system_config: SystemConfig = _as_attributes(settings.system_config)
    _setup_logging(f"{first.name}+{len(members) - 1}", "worker", launcher_config,
                   Path(settings.run_dir))
    ctx = zmq.Context()
    links = [(me, ParentLink(ctx, env[PARENT_ENV], me.name, CurveKeys.from_env(env),
                             heartbeat_interval=launcher_config.heartbeat_interval))
             for me, env in members]
    try:
        with left_to_parent():
            failed = run_hosted_workers(links, launcher_config, system_config, settings)
        return EXIT_FAILED if failed else 0
    except KeyboardInterrupt as exc:
        log.error("%s: %s; stopped", first.name, exc or "interrupted")
        return EXIT_INTERRUPTED
    finally:
        for _, link in links:
            link.close()
        terminate(ctx)


def _setup_logging(name: str, role: str, config: LauncherConfig, run_dir: Path) -> None:
    """Our log file when asked for, else stderr (the launcher step's log); stderr too when
    the file cannot be opened, so that a full disk does not stop us before we connect."""
    wanted = config.worker_logs if role == "worker" else config.master_logs
    kind = "worker" if role == "worker" else "master"
    handler: logging.Handler | None = None
    if wanted:
        handler = open_log_file(run_dir / "logs" / f"{kind}-{name}.log")
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
    log.setLevel(logging.INFO if wanted else logging.WARNING)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {name}@{socket.gethostname()}: %(message)s"))
    log.addHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
