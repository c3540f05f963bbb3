"""``EnsembleLauncher``: the Python API, as the original ensemble_launcher named it.

Everything a run needs is validated in the constructor (ensemble, configs, nodes,
resources, executables), so that bad input fails before any task starts and before
anything is written. ``run()`` creates the run directory, runs the tasks and returns
their :class:`~ensemble_launcher.store.Results`, read from the journal on disk.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.config.models import auto_nlevels, default_run_dir
from ensemble_launcher.ensemble import load_tasks
from ensemble_launcher.errors import ConfigError
from ensemble_launcher.executors import WarmPool, executor_for
from ensemble_launcher.monitor import Counts, LogReporter, Reporter
from ensemble_launcher.orchestrator.node_worker import NodeWorker
from ensemble_launcher.resources import (
    NodeResources,
    check_requirements,
    is_this_host,
    local_node,
)
from ensemble_launcher.store import JOURNAL_NAME, Results, RunStore

log = logging.getLogger("ensemble_launcher")


class EnsembleLauncher:
    """Run an ensemble of tasks on the nodes of this job.

    ``ensemble_file`` is a path to a JSON/YAML ensemble file, the same structure as a
    dict, a dict of :class:`~ensemble_launcher.ensemble.Task` keyed by task id, or an
    iterable of Tasks. ``out_dir`` is the run directory (default
    ``el-runs/<name>-<time>-<pid>``).
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
    ) -> None:
        self.system_config = system_config or SystemConfig(name="local")
        self.launcher_config = launcher_config or LauncherConfig()
        self.pin_resources = pin_resources
        self.return_stdout = return_stdout or self.launcher_config.return_stdout
        self.tasks = load_tasks(ensemble_file)
        self.nodes = self._nodes(Nodes)
        self.nlevels = self._nlevels()
        executor_for(self.launcher_config.task_executor_name)
        check_requirements(self.tasks.requirements(), self.nodes)
        label = Path(ensemble_file).stem if isinstance(ensemble_file, (str, os.PathLike)) \
            else "run"
        self.run_dir = Path(out_dir) if out_dir is not None else default_run_dir(label)
        if (self.run_dir / JOURNAL_NAME).exists():
            raise ConfigError(f"{self.run_dir} already holds a run (its {JOURNAL_NAME} exists); "
                              "choose another output directory")
        self._reporter = reporter or LogReporter(self.launcher_config.report_interval)
        self.counts: Counts | None = None

    def _nodes(self, names: list[str] | None) -> list[NodeResources]:
        node = local_node(self.system_config, pin=self.pin_resources)
        if names is None:
            return [node]
        if not names:
            raise ConfigError("Nodes is an empty list; give at least one node name, or None "
                              "to run on this node")
        if len(names) == 1 and not is_this_host(names[0]):
            raise ConfigError(f"Nodes names {names[0]!r}, which is not this host "
                              f"({node.host}); this version runs tasks on this host only")
        return [node] + [NodeResources(name, node.cpus, node.gpus) for name in names[1:]]

    def _nlevels(self) -> int:
        configured = self.launcher_config.nlevels
        nlevels = auto_nlevels(len(self.nodes)) if configured is None else configured
        if nlevels > 0 or len(self.nodes) > 1:
            raise ConfigError(
                f"this version runs on one node (nlevels=0); got {len(self.nodes)} node(s) and "
                f"nlevels={nlevels}. Leave nlevels unset or set it to 0, and pass at most one "
                "node in Nodes")
        return nlevels

    def run(self) -> Results:
        """Run every task; return their results. A failed task is a result, not an error."""
        config = self.launcher_config
        counts = Counts(self.tasks.ensembles)
        self.counts = counts
        node = self.nodes[0]
        with RunStore(self.run_dir) as store, self._master_log():
            store.set_meta(
                source=self.tasks.source, ensembles=self.tasks.ensembles, host=node.host,
                started=time.time(), system_config=self.system_config.model_dump(),
                launcher_config=config.model_dump(), pin_resources=self.pin_resources)
            log.info("run %s: %s tasks on %s (%d cores, %d GPU slots)", self.run_dir,
                     counts.grand_total() if counts.grand_total() is not None else "?",
                     node.host, len(node.cpus), len(node.gpus))
            pool = WarmPool(node.cpus, pin=self.pin_resources,
                            tail_bytes=config.stderr_tail_bytes, kill_grace=config.kill_grace)
            with _sigterm_interrupts(), pool:
                self._reporter.start(counts)
                try:
                    NodeWorker(self.tasks, node, pool, store, counts, self._reporter,
                               gpu_selector=config.gpu_selector,
                               capture_stdout=self.return_stdout, pin=self.pin_resources,
                               kill_grace=config.kill_grace,
                               check_each_task=self.tasks.total is None).run()
                finally:
                    self._reporter.stop(counts)
            store.set_meta(finished=time.time())
            log.info("run %s finished: %s", self.run_dir, counts.line())
        return Results(self.run_dir)

    def _master_log(self) -> _LogFile:
        path = self.run_dir / "logs" / "master-main.log" if self.launcher_config.master_logs \
            else None
        return _LogFile(path)


class _sigterm_interrupts:  # noqa: N801 - used as a context manager, like contextlib's
    """Turn SIGTERM (how batch systems stop a job) into KeyboardInterrupt for the run, so
    that it unwinds like Ctrl-C: tasks stopped, runners reaped, results flushed."""

    def __enter__(self) -> None:
        import signal
        import threading

        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
