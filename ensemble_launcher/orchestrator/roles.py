"""What a child process of the tree does, by role: run tasks, or lead a subtree."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from ensemble_launcher.comm import CurveKeys
from ensemble_launcher.ensemble import Task
from ensemble_launcher.executors import make_pool
from ensemble_launcher.executors.mpi import mpi_launch_factory
from ensemble_launcher.executors.simulated import SimulatedPool
from ensemble_launcher.monitor.profiles import NoTimeline, Timeline, timeline_for
from ensemble_launcher.orchestrator.boot import Settings
from ensemble_launcher.orchestrator.feeds import Feed
from ensemble_launcher.orchestrator.hosted import HOSTED_TICK_SECONDS, HostedNode, HostedWorkers
from ensemble_launcher.orchestrator.master import Master
from ensemble_launcher.orchestrator.node_worker import TICK_SECONDS, NodeWorker, ResultSink
from ensemble_launcher.orchestrator.parent_link import ParentLink
from ensemble_launcher.orchestrator.placement import tree_settings
from ensemble_launcher.orchestrator.tree import TreeNode
from ensemble_launcher.resources import NodeResources, local_node
from ensemble_launcher.resources.sampling import NodeSampler

if TYPE_CHECKING:
    from ensemble_launcher.config import LauncherConfig, SystemConfig

log = logging.getLogger("ensemble_launcher")


def run_worker(me: TreeNode, link: ParentLink, config: LauncherConfig, system: SystemConfig,
               settings: Settings) -> None:
    timeline = timeline_for(me.name, config.profile)
    node = local_node(system, pin=settings.pin)
    link.hello(list(node.cpus), list(node.gpus))
    log.info("%s: running tasks on %s (cpus %s, gpus %s, executor %s)", me.name, node.host,
             ",".join(map(str, node.cpus)), ",".join(node.gpus) or "none",
             config.task_executor_name)
    run_node(link, link, node, config, pin=settings.pin,
             capture_stdout=settings.return_stdout, check_each_task=settings.check_each,
             timeline=timeline, name=me.name, in_block=bool(settings.block))
    log.info("%s: drained, %d task results sent", me.name, link.sent_results)
    timeline.write(Path(settings.run_dir) / "profiles")


def run_node(source: Feed[Task], sink: ResultSink, node: NodeResources,
             config: LauncherConfig, *, pin: bool, capture_stdout: bool,
             check_each_task: bool, timeline: Timeline | NoTimeline,
             name: str = "main", in_block: bool = False) -> None:
    """Run the tasks of ``source`` on this node until it is exhausted: a worker of the
    tree (its parent link is source and sink) and the root at nlevels=0 alike. ``name``
    is the node's in the tree, which its samples of CPU and memory use carry."""
    with make_pool(config.task_executor_name, node.cpus, pin=pin,
                   tail_bytes=config.stderr_tail_bytes, kill_grace=config.kill_grace,
                   usage=config.resource_usage) as pool:
        node_worker(source, sink, node, pool, config, pin=pin, capture_stdout=capture_stdout,
                    check_each_task=check_each_task, timeline=timeline, name=name,
                    in_block=in_block).run()


def node_worker(source: Feed[Task], sink: ResultSink, node: NodeResources, pool: Any,
                config: LauncherConfig, *, pin: bool, capture_stdout: bool,
                check_each_task: bool, timeline: Timeline | NoTimeline, name: str,
                in_block: bool = False,
                tick_seconds: float = TICK_SECONDS) -> NodeWorker:
    interval = config.node_sample_interval
    sampler = NodeSampler(name, node.host, interval) if interval > 0 else None
    return NodeWorker(source, sink, node, pool, gpu_selector=config.gpu_selector,
                      capture_stdout=capture_stdout, pin=pin, kill_grace=config.kill_grace,
                      check_each_task=check_each_task, timeline=timeline,
                      mpi=mpi_launch_factory(config.mpi_launcher, config.mpi_flavor,
                                             config.mpi_args, config.gpu_selector),
                      sampler=sampler, in_block=in_block, tick_seconds=tick_seconds)


def run_hosted_workers(members: list[tuple[TreeNode, ParentLink]], config: LauncherConfig,
                       system: SystemConfig, settings: Settings) -> int:
    """Run the simulated workers ``members`` in this process, each with its own link to
    its master (see orchestrator.hosted); the number of those that failed."""
    node = local_node(system, pin=settings.pin)
    nodes = []
    for me, link in members:
        link.hello(list(node.cpus), list(node.gpus))
        pool = SimulatedPool(node.cpus)
        worker = node_worker(link, link, node, pool, config, pin=settings.pin,
                             capture_stdout=settings.return_stdout,
                             check_each_task=settings.check_each, timeline=NoTimeline(),
                             name=me.name, tick_seconds=HOSTED_TICK_SECONDS)
        nodes.append(HostedNode(me.name, link, pool, worker))
    log.info("%s..%s: %d simulated workers on %s (%d slots each)", members[0][0].name,
             members[-1][0].name, len(nodes), node.host, len(node.cpus))
    hosted = HostedWorkers(nodes)
    try:
        hosted.run()
    finally:
        hosted.close()
    return hosted.failures


def run_submaster(me: TreeNode, link: ParentLink, ctx: zmq.Context, config: LauncherConfig,
                  settings: Settings, keys: CurveKeys | None) -> None:
    link.hello([], [])
    run_dir = Path(settings.run_dir)
    tree = tree_settings(me, config, run_dir, child_env=settings.to_env())
    timeline = timeline_for(me.name, config.profile)
    Master(me, link, ctx, tree, keys, timeline).run()
    timeline.write(run_dir / "profiles")
