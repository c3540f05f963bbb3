"""What a child process of the tree does, by role: run tasks, or lead a subtree."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from ensemble_launcher.comm import CurveKeys
from ensemble_launcher.executors import make_pool
from ensemble_launcher.executors.mpi import mpi_launch_factory
from ensemble_launcher.monitor.profiles import timeline_for
from ensemble_launcher.orchestrator.boot import shared_settings
from ensemble_launcher.orchestrator.master import Master
from ensemble_launcher.orchestrator.node_worker import NodeWorker
from ensemble_launcher.orchestrator.parent_link import ParentLink
from ensemble_launcher.orchestrator.placement import tree_settings
from ensemble_launcher.orchestrator.tree import TreeNode
from ensemble_launcher.resources import local_node

if TYPE_CHECKING:
    from ensemble_launcher.config import LauncherConfig, SystemConfig

log = logging.getLogger("ensemble_launcher")


def run_worker(me: TreeNode, link: ParentLink, config: LauncherConfig, system: SystemConfig,
               env: dict[str, str]) -> None:
    pin = env.get("EL_PIN") == "1"
    timeline = timeline_for(me.name, config.profile)
    node = local_node(system, pin=pin)
    link.hello(list(node.cpus), list(node.gpus))
    log.info("%s: running tasks on %s (cpus %s, gpus %s, executor %s)", me.name, node.host,
             ",".join(map(str, node.cpus)), ",".join(node.gpus) or "none",
             config.task_executor_name)
    with make_pool(config.task_executor_name, node.cpus, pin=pin,
                   tail_bytes=config.stderr_tail_bytes, kill_grace=config.kill_grace) as pool:
        NodeWorker(link, link, node, pool, gpu_selector=config.gpu_selector,
                   capture_stdout=env.get("EL_RETURN_STDOUT") == "1", pin=pin,
                   kill_grace=config.kill_grace,
                   check_each_task=env.get("EL_CHECK_EACH") == "1",
                   timeline=timeline, mpi=mpi_launch_factory(
                       config.mpi_launcher, config.mpi_flavor, config.mpi_args,
                       config.gpu_selector)).run()
    log.info("%s: drained, %d task results sent", me.name, link.sent_results)
    timeline.write(Path(env["EL_RUN_DIR"]) / "profiles")


def run_submaster(me: TreeNode, link: ParentLink, ctx: zmq.Context, config: LauncherConfig,
                  run_dir: Path, env: dict[str, str]) -> None:
    link.hello([], [])
    settings = tree_settings(me, config, run_dir, child_env=shared_settings(env))
    timeline = timeline_for(me.name, config.profile)
    Master(me, link, ctx, settings, CurveKeys.from_env(env), timeline).run()
    timeline.write(run_dir / "profiles")
