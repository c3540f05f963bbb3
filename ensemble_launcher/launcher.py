"""``EnsembleLauncher``: the Python API, as the original ensemble_launcher named it.

Everything a run needs is validated in the constructor (ensemble, configs, nodes,
resources, executables), so that bad input fails before any task starts and before
anything is written. ``run()`` creates the run directory, runs the tasks and returns
their :class:`~ensemble_launcher.store.Results`, read from the journal on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble_launcher.config.defaults import (
    auto_nlevels,
    config_dump,
    default_run_dir,
    launcher_defaults,
    system_defaults,
)
from ensemble_launcher.ensemble import load_tasks
from ensemble_launcher.errors import (
    ConfigError,
    EnsembleLauncherError,
    LauncherClosedError,
    ResourceError,
    RunAbortedError,
    StoreError,
)
from ensemble_launcher.executors import executor_for
from ensemble_launcher.logfiles import open_log_file
from ensemble_launcher.monitor import Counts, LogReporter, MultiReporter, Reporter
from ensemble_launcher.monitor.profiles import (
    BasicProfile,
    NoTimeline,
    Timeline,
    timeline_for,
    write_trace,
)
from ensemble_launcher.monitor.status import StatusFileReporter
from ensemble_launcher.orchestrator.ledger import Ledger, RetryPolicy, runs_again
from ensemble_launcher.orchestrator.recording import Recorder
from ensemble_launcher.orchestrator.roles import run_node
from ensemble_launcher.orchestrator.root import LocalSink, LocalSource, RootControl, RootUpstream
from ensemble_launcher.orchestrator.signals import (
    GraceExpired,
    GracefulShutdown,
    left_to_parent,
)
from ensemble_launcher.orchestrator.wire import FunctionTable
from ensemble_launcher.resources import (
    NodeResources,
    check_requirements,
    is_this_host,
    local_node,
)
from ensemble_launcher.resources.discovery import check_resolvable, discover_nodes
from ensemble_launcher.resources.walltime import job_time_left
from ensemble_launcher.store import JOURNAL_NAME, Results, RunStore
from ensemble_launcher.store.journal import check_journal, ids_run_again
from ensemble_launcher.store.lock import RunDirLock, check_not_in_use

if TYPE_CHECKING:
    from ensemble_launcher.cluster.desk import ClientDesk
    from ensemble_launcher.config import LauncherConfig, SystemConfig
    from ensemble_launcher.ensemble import Task
    from ensemble_launcher.ensemble.preflight import RunFilter
    from ensemble_launcher.ensemble.rules import Rule, Steering
    from ensemble_launcher.orchestrator.blocks import BlockPool
    from ensemble_launcher.orchestrator.tree import TreeNode
    from ensemble_launcher.rules.engine import RulesEngine
    from ensemble_launcher.states import BlockRecord

log = logging.getLogger("ensemble_launcher")

#: Seconds a block keeps free before its walltime, beyond its longest task (at least;
#: three heartbeats when those are longer).
_BLOCK_SAFETY = 5.0


class EnsembleLauncher:
    """Run an ensemble of tasks on the nodes of this job.

    ``ensemble_file`` is a path to a JSON/YAML ensemble file, the same structure as a
    dict, a dict of :class:`~ensemble_launcher.ensemble.Task` keyed by task id, or an
    iterable of Tasks. ``out_dir`` is the run directory (default
    ``el-runs/<name>-<time>-<pid>-<n>``, new for every launcher). One launcher runs once,
    unless it resumes.

    ``resume=True`` continues the run in ``out_dir``: tasks that succeeded there are not
    run again, nor failed ones unless ``retry_failed``; tasks not run are.
    """

    def __init__(
        self,
        ensemble_file: Any,
        system_config: SystemConfig | None = None,
        launcher_config: LauncherConfig | None = None,
        Nodes: list[str] | None = None,  # noqa: N803 - the original API's name
        pin_resources: bool = True,
        return_stdout: bool = False,
        *,
        out_dir: str | os.PathLike | None = None,
        reporter: Reporter | None = None,
        resume: bool = False,
        retry_failed: bool = False,
    ) -> None:
        self._inputs = {"ensemble_file": ensemble_file, "system_config": system_config,
                        "launcher_config": launcher_config, "Nodes": Nodes,
                        "pin_resources": pin_resources, "return_stdout": return_stdout}
        self._system_model, self._launcher_model = system_config, launcher_config
        self._system = system_config or system_defaults()
        self._config = launcher_config or launcher_defaults()
        self.cluster = self._config.cluster
        if self.cluster:
            out_dir = self._config.checkpoint_dir
            resume = resume or (Path(out_dir) / JOURNAL_NAME).exists()  # type: ignore[arg-type]
        self.pin_resources = pin_resources and \
            self._config.task_executor_name != "simulate"
        self.return_stdout = return_stdout or self._config.return_stdout
        self.tasks = load_tasks(ensemble_file, will_run=_resumed(out_dir, retry_failed)
                                if resume else None)
        self.nodes = self._nodes(Nodes)
        self.nlevels = self._nlevels()
        executor_for(self._config.task_executor_name)
        self._check_block_rules()
        check_requirements(self.tasks.requirements(), self.nodes)
        if self.nlevels >= 1:
            self.tree = self._plan_tree()
            widest = self._widest()
            too_wide = next((r for r in self.tasks.requirements() if r.nnodes > widest), None)
            if too_wide is not None:
                raise ResourceError(
                    f"{too_wide.label} can never run: nnodes={too_wide.nnodes}, but the widest "
                    f"group of workers under one master has {widest} nodes (nlevels="
                    f"{self.nlevels}); raise nchildren or lower nlevels"
                    + (", or raise the provider's nodes_per_block"
                       if self._config.provider else ""))
        label = Path(ensemble_file).stem if isinstance(ensemble_file, (str, os.PathLike)) \
            else "run"
        self.run_dir = Path(out_dir) if out_dir is not None else default_run_dir(label)
        self.resume, self.retry_failed = resume, retry_failed
        self._check_run_dir()
        self._reporter = reporter or LogReporter(self._config.report_interval)
        self.counts: Counts | None = None
        self._ran = False
        self._head: subprocess.Popen | None = None

    @property
    def system_config(self) -> SystemConfig:
        """The system config given, else the default one, built when first asked for: a
        run without configs works from plain defaults (see config.defaults)."""
        if self._system_model is None:
            from ensemble_launcher.config import SystemConfig

            self._system_model = SystemConfig(name="local")
        return self._system_model

    @property
    def launcher_config(self) -> LauncherConfig:
        """The launcher config given, else the default one, built when first asked for."""
        if self._launcher_model is None:
            from ensemble_launcher.config import LauncherConfig

            self._launcher_model = LauncherConfig()
        return self._launcher_model

    def _check_run_dir(self, *, locked: bool = False) -> None:
        """A new run needs a directory without a journal, a resume one with a journal that
        this version reads. Checked before anything is written, and again by run() once it
        holds the directory's lock (another launcher may have started there meanwhile)."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"out_dir {self.run_dir} exists and is not a directory")
        has_journal = (self.run_dir / JOURNAL_NAME).exists()
        if has_journal and not locked:
            check_not_in_use(self.run_dir)
        if has_journal and not self.resume:
            raise ConfigError(f"{self.run_dir} already holds a run (its {JOURNAL_NAME} exists); "
                              "choose another output directory, or resume it")
        if self.resume and not has_journal:
            raise ConfigError(f"cannot resume {self.run_dir}: it holds no {JOURNAL_NAME}")
        if self.resume:
            check_journal(self.run_dir)

    def _nodes(self, names: list[str] | None) -> list[NodeResources]:
        here = local_node(self._system, pin=self.pin_resources)
        if names is not None and not names:
            raise ConfigError("Nodes is an empty list; give at least one node name, or None "
                              "to discover the job's nodes")
        hosts, source = discover_nodes(names)
        self.node_source = source
        if len(hosts) == 1 and is_this_host(hosts[0]):
            return [here]
        check_resolvable([h for h in hosts if not is_this_host(h)])
        return [NodeResources(h, here.cpus, here.gpus) for h in hosts]

    def _check_block_rules(self) -> None:
        from ensemble_launcher.ensemble.rules import BLOCK_ACTIONS

        steering = self.tasks.steering
        if steering is None or self._config.provider is not None:
            return
        for rule in steering.rules:
            if rule.action.name in BLOCK_ACTIONS:
                where = f"{steering.source}: " if steering.source else ""
                raise ConfigError(
                    f"{where}rule {rule.label!r}: action {rule.action.name!r} changes the "
                    "number of batch-job blocks, which needs a provider "
                    "(LauncherConfig.provider); this run has none")

    def _plan_tree(self) -> TreeNode:
        """The tree as it starts. A provider's root starts with no workers: they come with
        the blocks it submits (see orchestrator.blocks)."""
        from ensemble_launcher.orchestrator.tree import TreeNode, plan_tree

        if self._config.provider is not None:
            return TreeNode("main", "master", [self.nodes[0].host])
        return plan_tree([n.host for n in self.nodes], self.nlevels,
                         self._config.nchildren)

    def _widest(self) -> int:
        """The most nodes one multi-node task can span."""
        provider = self._config.provider
        if provider is not None:
            return provider.nodes_per_block
        return self.tree.gang_capacity() if self.nlevels >= 1 else 1

    def _nlevels(self) -> int:
        config = self._config
        if config.provider is not None:
            return 1
        nlevels = auto_nlevels(len(self.nodes)) if config.nlevels is None else config.nlevels
        if nlevels == 0:
            if len(self.nodes) > 1:
                raise ConfigError(f"nlevels=0 runs on one node, but there are "
                                  f"{len(self.nodes)} ({self.node_source}); leave nlevels "
                                  "unset or set it to 1 or more")
            if not is_this_host(self.nodes[0].host):
                raise ConfigError(f"nlevels=0 runs tasks on this host, but the node is "
                                  f"{self.nodes[0].host!r}; use nlevels=1")
            return 0
        if config.comm_name == "dragon":
            raise ConfigError("comm_name='dragon' is not available in this version; use 'zmq' "
                              "or, on one node, 'multiprocessing'")
        if config.child_executor_name == "dragon":
            raise ConfigError("child_executor_name='dragon' is not available in this version; "
                              "use 'mpi' (srun/mpiexec) or 'multiprocessing' (one host)")
        if config.child_executor_name == "multiprocessing" and \
                not all(is_this_host(n.host) for n in self.nodes):
            raise ConfigError("child_executor_name='multiprocessing' starts children on this "
                              "host only, but the nodes include other hosts; use 'mpi'")
        return nlevels

    def run(self) -> Results:
        """Run every task; return their results. A failed task is a result, not an error.

        An EnsembleLauncher runs once: calling run() again raises LauncherClosedError
        (make a new one, or resume its run directory), except with ``resume=True``, where
        each run() continues the run. The run holds a lock on its run directory from start
        to end, so a second launcher there gets StoreError.

        SIGTERM or SIGINT stops it gracefully (see LauncherConfig.shutdown_grace); the
        journal then holds every result, and KeyboardInterrupt is raised. When the run
        cannot go on (the only worker lost; a child of the tree that cannot start; the
        journal cannot be written, e.g. a full disk), tasks still out are recorded as not
        run where the journal allows, and RunAbortedError is raised; in both cases
        ``el resume`` continues the run.
        """
        if self.cluster:
            raise ConfigError("this launcher is a cluster (cluster=True): start it with "
                              "start() or 'with EnsembleLauncher(...)', and submit with a "
                              "ClusterClient; run() runs a closed ensemble")
        return self._run(cluster=False)

    # -- cluster mode ------------------------------------------------------------------------

    def start(self, timeout: float = 120.0, *, detach: bool = True) -> EnsembleLauncher:
        """Start the cluster's head (its own process) and return once it takes clients;
        ``ClusterClient(checkpoint_dir)`` then submits to it. A cluster started again on
        the same checkpoint_dir runs the tasks submitted before that had not finished."""
        from ensemble_launcher.cluster.head import start_head

        if not self.cluster:
            raise ConfigError("start() starts a cluster: set LauncherConfig(cluster=True, "
                              "checkpoint_dir=...); run() runs this ensemble")
        if self._head is not None and self._head.poll() is None:
            return self
        self._head = start_head(self.run_dir, self._inputs, timeout, detach)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the cluster once every task it has is final (new submissions are refused
        meanwhile). After ``timeout`` seconds it is sent SIGTERM: running tasks then get
        shutdown_grace, and those not finished are recorded not run."""
        from ensemble_launcher.cluster.head import stop_cluster

        head, self._head = self._head, None
        if head is None or head.poll() is not None:
            return
        stop_cluster(self.run_dir, timeout, head)

    def wait(self) -> int:
        """Wait until the cluster this launcher started stops; its head's exit status (0
        when it was stopped, 130 when signalled). A cluster started with ``detach=False``
        shares our session, so SIGTERM from a batch system or Ctrl-C reaches the head
        itself, which drains; here they are ignored, and we wait for it."""
        if self._head is None:
            raise LauncherClosedError("this launcher has not started a cluster")
        head, self._head = self._head, None
        with left_to_parent():
            return head.wait()

    def __enter__(self) -> EnsembleLauncher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve(self) -> Results:
        """The cluster's head: run until stopped (el stop, stop(), SIGTERM)."""
        return self._run(cluster=True)

    def _run(self, *, cluster: bool) -> Results:
        self._refuse_second_run()
        config = self._config
        counts = Counts(self.tasks.ensembles)
        self.counts = counts
        shutdown = GracefulShutdown(config.shutdown_grace)
        basic = BasicProfile() if config.profile == "basic" else None
        timeline = timeline_for("main", config.profile)
        with RunDirLock(self.run_dir):
            self._check_run_dir(locked=True)
            self._ran = True
            stop = self._run_recorded(counts, shutdown, basic, timeline, cluster)
        if isinstance(stop, RunAbortedError):
            raise stop
        if config.profile:
            self._write_profiles(basic, timeline)
        if stop is not None or (shutdown.requested and not shutdown.by_request):
            raise KeyboardInterrupt(
                f"interrupted ({shutdown.signal_name or stop}); {counts.line()}; "
                f"continue with: el resume {self.run_dir}")
        return Results(self.run_dir)

    def _refuse_second_run(self) -> None:
        """Its tasks may be a consumed iterator and its run directory holds a run now: a
        second run() would re-run everything and then fail, so it fails at once. A run()
        that failed before it started anything (a locked directory) may be called again,
        and so may a resuming launcher's, after an interrupt: it continues the run."""
        if self._ran and not self.resume:
            raise LauncherClosedError(
                f"this EnsembleLauncher already ran (in {self.run_dir}); it runs once: make a "
                "new one for a new run, or continue that one with EnsembleLauncher(..., "
                f"out_dir={str(self.run_dir)!r}, resume=True)")

    def _run_recorded(self, counts: Counts, shutdown: GracefulShutdown,
                      basic: BasicProfile | None, timeline: Timeline | NoTimeline,
                      cluster: bool = False) -> BaseException | None:
        """Run the tasks, every result into the journal. Returns what ended the run early:
        KeyboardInterrupt, RunAbortedError, or None. Once the run started, any error of
        ours (a child of the tree that cannot start, a runner that cannot be replaced, a
        journal that cannot be written) ends it as RunAbortedError, recorded in the
        journal's meta: tasks may have run, and resume continues. Before that, a journal
        that cannot be written is a StoreError."""
        config = self._config
        stop: BaseException | None = None
        why = ""
        started = False
        try:
            with RunStore(self.run_dir) as store, self._master_log():
                previous = store.final_states() if self.resume else None
                if self.resume:
                    self._count_skipped(store, counts)
                self._write_meta(store)
                reporter = MultiReporter(
                    self._reporter, StatusFileReporter(self.run_dir, config.report_interval))
                recorder = Recorder(store, counts, reporter)
                steering = self.tasks.steering
                ledger = Ledger(self.tasks, recorder, _retry_policy(config), previous=previous,
                                retry_failed=self.retry_failed, deadline=self._deadline(),
                                profile=basic, shutdown=shutdown,
                                closed=not cluster and steering is None)
                functions = FunctionTable()
                blocks = self._block_pool(ledger, recorder) \
                    if config.provider is not None else None
                engine = _steer(steering, ledger, recorder, shutdown, cluster, blocks) \
                    if steering is not None else None
                desk = self._open_desk(ledger, recorder, store, functions, previous or {}) \
                    if cluster else None
                control = RootControl(ledger, shutdown, desk, engine)
                if desk is not None:
                    desk.on_rule = _rules_taker(control, recorder, shutdown, blocks)
                reporter.start(counts)
                started = True
                if engine is not None:
                    engine.begin()
                try:
                    with shutdown:
                        if self.nlevels == 0:
                            self._run_here(control, recorder, timeline)
                        else:
                            self._run_tree(control, recorder, timeline, functions, blocks)
                except GraceExpired as exc:
                    stop = None if shutdown.by_request else exc
                except KeyboardInterrupt as exc:
                    stop = exc
                except EnsembleLauncherError as exc:
                    stop = self._aborted(exc)
                except BaseException as exc:
                    why = f"the orchestrator failed: {type(exc).__name__}: {exc}"
                    raise
                finally:
                    try:
                        _wind_down(ledger, reporter, counts, stopped=bool(
                            stop or (shutdown.requested and not shutdown.by_request)))
                    finally:
                        if desk is not None:
                            desk.close(why or str(stop or "stopped"))
                if ledger.skipped:
                    log.info("resume: %d task(s) already done were skipped", ledger.skipped)
                aborted = {"aborted": str(stop)} if isinstance(stop, RunAbortedError) else {}
                if shutdown.by_request:
                    aborted["terminated"] = shutdown.signal_name
                store.set_meta(finished=time.time(), interrupted=bool(
                    stop or (shutdown.requested and not shutdown.by_request)), **aborted)
                log.info("run %s finished: %s", self.run_dir, counts.line())
        except StoreError as exc:
            if not started:
                raise
            stop = stop if isinstance(stop, RunAbortedError) else self._aborted(exc)
        return stop

    def _aborted(self, exc: EnsembleLauncherError) -> RunAbortedError:
        log.info("the run cannot go on: %s", exc)
        error = RunAbortedError(
            f"{exc}; every result recorded until then is in {self.run_dir / JOURNAL_NAME}; "
            f"continue with: el resume {self.run_dir}")
        error.__cause__ = exc
        return error

    def _count_skipped(self, store: RunStore, counts: Counts) -> None:
        """Tasks a resume does not run again count as finished from the start, not as
        pending until the stream reaches them."""
        for (ensemble, state), n in store.final_counts().items():
            if not runs_again(state, self.retry_failed):
                name = ensemble or "tasks"
                counts.skipped[name] = counts.skipped.get(name, 0) + n

    def _write_profiles(self, basic: BasicProfile | None,
                        timeline: Timeline | NoTimeline) -> None:
        directory = self.run_dir / "profiles"
        if basic is not None:
            basic.write(directory)
        timeline.write(directory)
        write_trace(self.run_dir, directory / "trace.json")

    def _write_meta(self, store: RunStore) -> None:
        meta: dict[str, Any] = {
            "ensembles": self.tasks.ensembles, "nodes": [n.host for n in self.nodes],
            "nlevels": self.nlevels, "started": time.time(),
            "system_config": config_dump(self._system),
            "launcher_config": config_dump(self._config),
            "pin_resources": self.pin_resources, "return_stdout": self.return_stdout}
        if self.tasks.steering is not None:
            meta["rules"] = len(self.tasks.steering.rules)
        if self.tasks.source and not self.resume:
            copy = self.run_dir / f"ensemble{Path(self.tasks.source).suffix or '.json'}"
            try:
                shutil.copyfile(self.tasks.source, copy)
            except OSError as exc:
                raise StoreError(f"cannot copy {self.tasks.source} into {self.run_dir}: "
                                 f"{exc}") from exc
            meta["source"] = str(Path(self.tasks.source).resolve())
            meta["ensemble_copy"] = copy.name
        if self.resume:
            store.drop_meta("finished", "interrupted", "aborted")
        store.set_meta(**meta)

    def _deadline(self) -> float | None:
        left = self._config.walltime
        if left is None:
            left = job_time_left()
        return None if left is None else time.time() + left

    def _run_here(self, control: RootControl, recorder: Recorder,
                  timeline: Timeline | NoTimeline) -> None:
        node = self.nodes[0]
        run_node(LocalSource(control), LocalSink(control, recorder, node.host), node,
                 self._config, pin=self.pin_resources,
                 capture_stdout=self.return_stdout, check_each_task=self.tasks.total is None,
                 timeline=timeline)

    def _open_desk(self, ledger: Ledger, recorder: Recorder, store: RunStore,
                   functions: FunctionTable, earlier: dict[str, Any]) -> ClientDesk:
        """The cluster's door for clients, and the tasks submitted before a restart."""
        from ensemble_launcher.cluster.checkpoint import ClusterFile
        from ensemble_launcher.cluster.desk import ClientDesk
        from ensemble_launcher.cluster.intake import TaskIntake
        from ensemble_launcher.comm import CurveKeys

        cluster_file = ClusterFile(self.run_dir)
        address = self._client_address(cluster_file)
        keys = CurveKeys.generate() if address.startswith("tcp://") else None
        widest = self._widest()
        intake = TaskIntake(ledger, store, functions, self.nodes, widest, self.run_dir,
                            earlier, self._ensemble_ids())
        names = [n.name for n in self.tree.walk()] if self.nlevels >= 1 else ["main"]
        desk = ClientDesk(ledger, intake, address, keys, cluster_file, names,
                          self._config.heartbeat_interval)
        recorder.listeners.append(desk.on_final)
        again = intake.resubmit_unfinished()
        if again:
            log.info("cluster: %d task(s) submitted before the restart run again", again)
        desk.open()
        return desk

    def _ensemble_ids(self) -> set[str]:
        """The ids of the cluster's own ensemble, which no client may reuse; a plain
        iterable (it cannot be read twice) is not looked at."""
        if self.tasks.total is None:
            return set()
        return {task.task_id for task in self.tasks}

    def _client_address(self, cluster_file: Any) -> str:
        """ipc in the checkpoint directory when every node is this host (TCP on loopback if
        that path is too long for a socket); else TCP on the configured address, or on
        the one that routes to the nodes."""
        from ensemble_launcher.comm.addresses import tcp_bind
        from ensemble_launcher.resources.discovery import local_address_for

        config = self._config
        if config.cluster_address:
            return tcp_bind(config.cluster_address)
        remote = [n.host for n in self.nodes if not is_this_host(n.host)]
        if not remote:
            return "ipc" if cluster_file.ipc_fits else "tcp://127.0.0.1"
        if config.bind_address:
            return tcp_bind(config.bind_address)
        return f"tcp://{local_address_for(remote[0])}"

    def _run_tree(self, control: RootControl, recorder: Recorder,
                  timeline: Timeline | NoTimeline, functions: FunctionTable,
                  blocks: BlockPool | None) -> None:
        import zmq

        from ensemble_launcher.comm import CurveKeys, terminate
        from ensemble_launcher.orchestrator.boot import Settings
        from ensemble_launcher.orchestrator.master import Master
        from ensemble_launcher.orchestrator.placement import tree_settings

        config = self.launcher_config
        tree = self.tree
        run_dir = self.run_dir.resolve()
        child_env = Settings(
            launcher_config=config.model_dump_json(),
            system_config=self.system_config.model_dump_json(), run_dir=str(run_dir),
            pin=self.pin_resources, return_stdout=self.return_stdout,
            check_each=self.tasks.total is None,
            sys_path=[os.path.abspath(p) for p in sys.path if p]).to_env()
        settings = tree_settings(tree, config, run_dir, child_env)
        keys = None if settings.bind == "pipe" else CurveKeys.generate()
        ctx = zmq.Context()
        try:
            Master(tree, RootUpstream(control, recorder, functions), ctx, settings, keys,
                   timeline, blocks).run()
        finally:
            terminate(ctx)

    def _block_pool(self, ledger: Ledger, recorder: Recorder) -> BlockPool:
        """The provider's blocks, sized by what waits in the ledger; each change of a block
        goes to the journal and to the live counts."""
        from ensemble_launcher.orchestrator.blocks import BlockPool, Elasticity
        from ensemble_launcher.providers import make_provider

        config = self._config
        provider = config.provider
        assert provider is not None
        elastic = Elasticity(
            provider.nodes_per_block, provider.init_blocks, provider.min_blocks,
            provider.max_blocks, provider.parallelism, provider.walltime_seconds,
            provider.max_idletime, provider.submit_retries, len(self.nodes[0].cpus))
        ledger.stream_size = self.tasks.total

        def on_change(record: BlockRecord) -> None:
            recorder.store.record_block(record)
            recorder.counts.blocks[record.index] = record

        return BlockPool(make_provider(provider, config.mpi_flavor), elastic,
                         waiting=ledger.waiting, on_change=on_change,
                         safety=max(_BLOCK_SAFETY, 3 * config.heartbeat_interval),
                         first_index=recorder.store.next_block_index())

    def _master_log(self) -> _LogFile:
        path = self.run_dir / "logs" / "master-main.log" if self._config.master_logs \
            else None
        return _LogFile(path)


class _LogFile:
    """Attach a file handler to our logger for the duration of a run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._handler: logging.Handler | None = None
        self._level = log.level

    def __enter__(self) -> _LogFile:
        self._handler = open_log_file(self.path) if self.path is not None else None
        if self._handler is not None:
            self._handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            log.addHandler(self._handler)
            if log.level == logging.NOTSET or log.level > logging.INFO:
                log.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is not None:
            log.removeHandler(self._handler)
            self._handler.close()
            log.setLevel(self._level)


def _wind_down(ledger: Ledger, reporter: Reporter, counts: Counts, *, stopped: bool) -> None:
    """Record the tasks still out as not run, and stop the reporters even when the journal
    can no longer be written."""
    try:
        ledger.abandon("not run: the run was interrupted" if stopped else "not run")
    finally:
        reporter.stop(counts)


def _steer(steering: Steering, ledger: Ledger, recorder: Recorder,
           shutdown: GracefulShutdown, cluster: bool,
           blocks: BlockPool | None = None) -> RulesEngine:
    """The rules engine of this run, watching its ledger and its results."""
    from ensemble_launcher.rules.engine import RulesEngine, RunControls, group_of

    picks: dict[str, Callable[[Task], bool]] = {}

    def cancel_group(name: str) -> int:
        pick = picks.setdefault(name, lambda task: group_of(task) == name)
        return ledger.cancel_where(pick)

    controls = RunControls(terminate=shutdown.request, cancel_group=cancel_group,
                           journal=recorder.store,
                           stop_when_idle=None if cluster else ledger.close,
                           resize=None if blocks is None else blocks.resize)
    engine = RulesEngine(steering, ledger, controls)
    ledger.observer = engine
    return engine


def _rules_taker(control: RootControl, recorder: Recorder, shutdown: GracefulShutdown,
                 blocks: BlockPool | None) -> Callable[[Rule], None]:
    """What takes the rules a cluster's clients add: the cluster's engine, made with the
    first rule when the cluster started without any (its counts start from the results
    so far)."""
    from ensemble_launcher.ensemble.rules import BLOCK_ACTIONS, Steering

    def take(rule: Rule) -> None:
        if rule.action.name in BLOCK_ACTIONS and blocks is None:
            raise ConfigError(f"{rule.action.name} changes the number of blocks, and this "
                              "cluster has no provider (LauncherConfig.provider)")
        engine = control.steering
        if engine is None:
            engine = _steer(Steering(rules=[], groups={}, held=frozenset()), control.ledger,
                            recorder, shutdown, cluster=True, blocks=blocks)
            engine.seed(recorder.counts)
            engine.begin()
            control.steering = engine
        engine.add_rule(rule)  # type: ignore[attr-defined]

    return take


def _resumed(out_dir: str | os.PathLike | None, retry_failed: bool) -> RunFilter | None:
    """Which tasks a resume of ``out_dir`` runs: the checks before the run look at those
    only, as a finished task may have lost its run_dir since."""
    if out_dir is None:
        return None
    return ids_run_again(out_dir, lambda state: runs_again(state, retry_failed))


def _retry_policy(config: LauncherConfig) -> RetryPolicy:
    return RetryPolicy(config.retries, frozenset(config.retry_on), config.node_loss_retries)
