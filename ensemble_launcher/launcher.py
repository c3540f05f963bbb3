"""``EnsembleLauncher``: the Python API, as the original ensemble_launcher named it.

Everything a run needs is validated in the constructor (ensemble, configs, nodes,
resources, executables), so that bad input fails before any task starts and before
anything is written. ``run()`` creates the run directory, runs the tasks and returns
their :class:`~ensemble_launcher.store.Results`, read from the journal on disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ensemble_launcher.comm import CurveKeys, terminate
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.config.models import auto_nlevels, default_run_dir
from ensemble_launcher.ensemble import load_tasks
from ensemble_launcher.errors import ConfigError, ResourceError
from ensemble_launcher.executors import executor_for, make_pool
from ensemble_launcher.executors.mpi import mpi_launch_factory
from ensemble_launcher.monitor import Counts, LogReporter, MultiReporter, Reporter
from ensemble_launcher.monitor.profiles import (
    BasicProfile,
    NoTimeline,
    Timeline,
    timeline_for,
    write_trace,
)
from ensemble_launcher.monitor.status import StatusFileReporter
from ensemble_launcher.orchestrator.ledger import Ledger, RetryPolicy
from ensemble_launcher.orchestrator.master import Master
from ensemble_launcher.orchestrator.node_worker import NodeWorker
from ensemble_launcher.orchestrator.placement import tree_settings
from ensemble_launcher.orchestrator.recording import Recorder
from ensemble_launcher.orchestrator.root import LocalSink, LocalSource, RootControl, RootUpstream
from ensemble_launcher.orchestrator.signals import GracefulShutdown
from ensemble_launcher.orchestrator.tree import plan_tree
from ensemble_launcher.resources import (
    NodeResources,
    check_requirements,
    is_this_host,
    local_node,
)
from ensemble_launcher.resources.discovery import check_resolvable, discover_nodes
from ensemble_launcher.resources.walltime import job_time_left
from ensemble_launcher.store import JOURNAL_NAME, Results, RunStore

log = logging.getLogger("ensemble_launcher")


class EnsembleLauncher:
    """Run an ensemble of tasks on the nodes of this job.

    ``ensemble_file`` is a path to a JSON/YAML ensemble file, the same structure as a
    dict, a dict of :class:`~ensemble_launcher.ensemble.Task` keyed by task id, or an
    iterable of Tasks. ``out_dir`` is the run directory (default
    ``el-runs/<name>-<time>-<pid>``).

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
        self.system_config = system_config or SystemConfig(name="local")
        self.launcher_config = launcher_config or LauncherConfig()
        self.pin_resources = pin_resources and \
            self.launcher_config.task_executor_name != "simulate"
        self.return_stdout = return_stdout or self.launcher_config.return_stdout
        self.tasks = load_tasks(ensemble_file)
        self.nodes = self._nodes(Nodes)
        self.nlevels = self._nlevels()
        executor_for(self.launcher_config.task_executor_name)
        check_requirements(self.tasks.requirements(), self.nodes)
        if self.nlevels >= 1:
            self.tree = plan_tree([n.host for n in self.nodes], self.nlevels,
                                  self.launcher_config.nchildren)
            widest = self.tree.gang_capacity()
            too_wide = next((r for r in self.tasks.requirements() if r.nnodes > widest), None)
            if too_wide is not None:
                raise ResourceError(
                    f"{too_wide.label} can never run: nnodes={too_wide.nnodes}, but the widest "
                    f"group of workers under one master has {widest} nodes (nlevels="
                    f"{self.nlevels}); raise nchildren or lower nlevels")
        label = Path(ensemble_file).stem if isinstance(ensemble_file, (str, os.PathLike)) \
            else "run"
        self.run_dir = Path(out_dir) if out_dir is not None else default_run_dir(label)
        self.resume, self.retry_failed = resume, retry_failed
        has_journal = (self.run_dir / JOURNAL_NAME).exists()
        if has_journal and not resume:
            raise ConfigError(f"{self.run_dir} already holds a run (its {JOURNAL_NAME} exists); "
                              "choose another output directory, or resume it")
        if resume and not has_journal:
            raise ConfigError(f"cannot resume {self.run_dir}: it holds no {JOURNAL_NAME}")
        self._reporter = reporter or LogReporter(self.launcher_config.report_interval)
        self.counts: Counts | None = None

    def _nodes(self, names: list[str] | None) -> list[NodeResources]:
        here = local_node(self.system_config, pin=self.pin_resources)
        if names is not None and not names:
            raise ConfigError("Nodes is an empty list; give at least one node name, or None "
                              "to discover the job's nodes")
        hosts, source = discover_nodes(names)
        self.node_source = source
        if len(hosts) == 1 and is_this_host(hosts[0]):
            return [here]
        check_resolvable([h for h in hosts if not is_this_host(h)])
        return [NodeResources(h, here.cpus, here.gpus) for h in hosts]

    def _nlevels(self) -> int:
        config = self.launcher_config
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

        SIGTERM or SIGINT stops it gracefully (see LauncherConfig.shutdown_grace); the
        journal then holds every result, and KeyboardInterrupt is raised.
        """
        config = self.launcher_config
        counts = Counts(self.tasks.ensembles)
        self.counts = counts
        shutdown = GracefulShutdown(config.shutdown_grace)
        interrupted: BaseException | None = None
        basic = BasicProfile() if config.profile == "basic" else None
        timeline = timeline_for("main", config.profile)
        with RunStore(self.run_dir) as store, self._master_log():
            previous = store.final_states() if self.resume else None
            self._write_meta(store)
            reporter = MultiReporter(self._reporter,
                                     StatusFileReporter(self.run_dir, config.report_interval))
            recorder = Recorder(store, counts, reporter)
            ledger = Ledger(self.tasks, recorder, _retry_policy(config), previous=previous,
                            retry_failed=self.retry_failed, deadline=self._deadline(),
                            profile=basic)
            control = RootControl(ledger, shutdown)
            reporter.start(counts)
            try:
                with shutdown:
                    if self.nlevels == 0:
                        self._run_here(control, recorder, timeline)
                    else:
                        self._run_tree(control, recorder, timeline)
            except KeyboardInterrupt as exc:
                interrupted = exc
            finally:
                ledger.abandon("not run: the run was interrupted" if interrupted or
                               shutdown.requested else "not run")
                reporter.stop(counts)
            if ledger.skipped:
                log.info("resume: %d task(s) already done were skipped", ledger.skipped)
            store.set_meta(finished=time.time(),
                           interrupted=bool(interrupted or shutdown.requested))
            log.info("run %s finished: %s", self.run_dir, counts.line())
        if config.profile:
            self._write_profiles(basic, timeline)
        if interrupted is not None or shutdown.requested:
            raise KeyboardInterrupt(
                f"interrupted ({shutdown.signal_name or interrupted}); {counts.line()}; "
                f"continue with: el resume {self.run_dir}")
        return Results(self.run_dir)

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
            "system_config": self.system_config.model_dump(),
            "launcher_config": self.launcher_config.model_dump(),
            "pin_resources": self.pin_resources, "return_stdout": self.return_stdout}
        if self.tasks.source and not self.resume:
            copy = self.run_dir / f"ensemble{Path(self.tasks.source).suffix or '.json'}"
            shutil.copyfile(self.tasks.source, copy)
            meta["source"] = str(Path(self.tasks.source).resolve())
            meta["ensemble_copy"] = copy.name
        store.set_meta(**meta)

    def _deadline(self) -> float | None:
        left = self.launcher_config.walltime
        if left is None:
            left = job_time_left()
        return None if left is None else time.time() + left

    def _run_here(self, control: RootControl, recorder: Recorder,
                  timeline: Timeline | NoTimeline) -> None:
        config, node = self.launcher_config, self.nodes[0]
        with make_pool(config.task_executor_name, node.cpus, pin=self.pin_resources,
                       tail_bytes=config.stderr_tail_bytes, kill_grace=config.kill_grace) as pool:
            sink = LocalSink(control, recorder, node.host)
            NodeWorker(LocalSource(control.ledger), sink, node, pool,
                                gpu_selector=config.gpu_selector,
                                capture_stdout=self.return_stdout, pin=self.pin_resources,
                                kill_grace=config.kill_grace,
                                check_each_task=self.tasks.total is None,
                                timeline=timeline, mpi=mpi_launch_factory(
                                    config.mpi_launcher, config.mpi_flavor, config.mpi_args,
                                    config.gpu_selector)).run()

    def _run_tree(self, control: RootControl, recorder: Recorder,
                  timeline: Timeline | NoTimeline) -> None:
        import zmq

        config = self.launcher_config
        tree = self.tree
        run_dir = self.run_dir.resolve()
        child_env = {
            "EL_LAUNCHER_CONFIG": config.model_dump_json(),
            "EL_SYSTEM_CONFIG": self.system_config.model_dump_json(),
            "EL_RUN_DIR": str(run_dir),
            "EL_PIN": "1" if self.pin_resources else "0",
            "EL_RETURN_STDOUT": "1" if self.return_stdout else "0",
            "EL_CHECK_EACH": "1" if self.tasks.total is None else "0",
            "EL_SYS_PATH": json.dumps([os.path.abspath(p) for p in sys.path if p]),
        }
        settings = tree_settings(tree, config, run_dir, child_env)
        keys_env = CurveKeys.generate().to_env() if settings.bind.startswith("tcp") else {}
        ctx = zmq.Context()
        try:
            Master(tree, RootUpstream(control, recorder), ctx, settings, keys_env,
                   timeline).run()
        finally:
            terminate(ctx)

    def _master_log(self) -> _LogFile:
        path = self.run_dir / "logs" / "master-main.log" if self.launcher_config.master_logs \
            else None
        return _LogFile(path)


class _LogFile:
    """Attach a file handler to our logger for the duration of a run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._handler: logging.Handler | None = None
        self._level = log.level

    def __enter__(self) -> _LogFile:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = logging.FileHandler(self.path)
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


def _retry_policy(config: LauncherConfig) -> RetryPolicy:
    return RetryPolicy(config.retries, frozenset(config.retry_on), config.node_loss_retries)
