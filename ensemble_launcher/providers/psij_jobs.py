"""Blocks as Slurm or PBS batch jobs, through PSI/J (psij-python, from the ExaWorks SDK).

PSI/J writes the batch script (directives from the job spec: nodes, one process per node,
duration, queue, account, exclusive, and custom attributes such as ``slurm.qos``), runs
sbatch/qsub, polls squeue/qstat in a thread of its own and runs scancel/qdel. Its 'single'
launcher runs our block script (base.render_block_script) once, on the job's first node;
that script starts the workers with srun or mpiexec. PSI/J runs the scheduler's commands
from PATH with this process's environment (SLURM_CONF and the like come from there).

What we add to PSI/J 0.9.11, and why:
- scheduler_options lines go into the batch script verbatim, after PSI/J's directives (so
  they win): its custom attributes are one dict, where two ``#PBS -l`` lines would collide,
  and they render only the long ``--key="value"`` form.
- squeue's reason column is read as the rest of the line, and a reason PSI/J does not know
  is kept as it is: PSI/J asserts three columns and a reason it knows, and marks the job
  FAILED with a traceback for its message otherwise (a node failure's reason).
- queue polling every second, and 120 failed squeue/qstat calls in a row (not 2) before
  PSI/J marks every job FAILED: a slurmctld that is busy for a few seconds must not
  end blocks that run.
- ``script`` renders the batch script without submitting it, through the executor's own
  ``_create_script_context``; ``close`` stops its polling thread by its ``done`` flag.
  Both are PSI/J internals (of 0.9.11; tests/test_providers.py checks them).
"""

from __future__ import annotations

import io
import shlex
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble_launcher.errors import LaunchError, ProviderError
from ensemble_launcher.providers.base import (
    Block,
    BlockRequest,
    BlockState,
    Provider,
    write_block_script,
)
from ensemble_launcher.resources.mpi import detect_mpi_flavor

if TYPE_CHECKING:
    from ensemble_launcher.config.models import ProviderConfig

#: Seconds between two squeue/qstat calls of PSI/J's polling thread.
QUEUE_POLL_INTERVAL = 1
#: Failed squeue/qstat calls in a row before PSI/J gives up on every job.
QUEUE_POLL_ERRORS = 120
#: What qdel says about a job that is already gone (scancel -Q says nothing).
_GONE = ("unknown job", "has finished", "already finished", "job has completed")


def import_psij() -> Any:
    try:
        import psij
    except ImportError:
        raise ProviderError("the slurm and pbs providers need PSI/J: pip install "
                            "'ensemble_launcher[providers]'") from None
    return psij


class PsijProvider(Provider):
    """One PSI/J executor per work directory (a run has one: ``<run_dir>/blocks``)."""

    def __init__(self, config: ProviderConfig, mpi_flavor: str = "auto") -> None:
        super().__init__(config)
        self._psij = import_psij()
        self._mpi_flavor = mpi_flavor
        self._executors: dict[Path, Any] = {}
        self._jobs: dict[int, Any] = {}
        self._seen: dict[int, dict[BlockState, float]] = {}
        self._lock = threading.Lock()

    # ----- the scripts

    def script(self, request: BlockRequest) -> str:
        """The batch script PSI/J submits for ``request`` (the block script it runs is
        ``block_script``)."""
        executor = self._executor(request.work_dir)
        job = self._job(request)
        executor._check_job(job)
        text = io.StringIO()
        executor.generate_submit_script(job, executor._create_script_context(job), text)
        return text.getvalue()

    def launch_lines(self, request: BlockRequest) -> list[str]:
        return ["exec " + " ".join(_quoted([*self.launcher_argv(request.nodes),
                                            *request.argv]))]

    def launcher_argv(self, nodes: int) -> list[str]:
        raise NotImplementedError

    # ----- the jobs

    def submit(self, request: BlockRequest) -> Block:
        executor = self._executor(request.work_dir)
        write_block_script(request, self.block_script(request))
        job = self._job(request)
        self._seen[request.index] = {}
        job.set_job_status_callback(lambda _job, status: self._note(request.index, status))
        submitted = time.time()
        try:
            executor.submit(job)
        except self._psij.SubmitException as exc:
            raise ProviderError(f"{self.name} refused block {request.index} "
                                f"({request.name}): {_words(exc)}") from None
        except OSError as exc:
            raise ProviderError(f"cannot submit block {request.index} to {self.name}: "
                                f"{exc}; is its submit command on PATH?") from None
        with self._lock:
            self._jobs[request.index] = job
        return Block(request.index, str(job.native_id), BlockState.PENDING,
                     submitted=submitted)

    def poll(self, blocks: Iterable[Block]) -> None:
        for block in blocks:
            job = self._jobs.get(block.index)
            if job is None or block.state.ended:
                continue
            status = job.status
            block.state = _STATES.get(status.state.name, block.state)
            seen = self._seen.get(block.index, {})
            if block.started is None and BlockState.RUNNING in seen:
                block.started = seen[BlockState.RUNNING]
            if block.state.ended:
                ended = seen.get(block.state, status.time)
                block.ended = ended if block.started is None else max(ended, block.started)
                block.message = _message(block.state, status)

    def cancel(self, block: Block) -> None:
        job = self._jobs.get(block.index)
        if job is None:
            return
        try:
            job.cancel()
        except self._psij.SubmitException as exc:
            if not any(gone in str(exc).lower() for gone in _GONE):
                raise ProviderError(f"cannot cancel block {block.index} (job "
                                    f"{block.job_id}): {_words(exc)}") from None

    def close(self) -> None:
        """Tells PSI/J's polling threads to stop: each ends within QUEUE_POLL_INTERVAL.
        They cannot be joined: PSI/J's thread class defines a ``_stop(exec)`` of its own,
        which Thread.join and is_alive call without that argument (PSI/J 0.9.11)."""
        for executor in self._executors.values():
            executor._queue_poll_thread.done = True

    def _note(self, index: int, status: Any) -> None:
        """Called by PSI/J's thread at each change: when each state was first seen."""
        state = _STATES.get(status.state.name)
        if state is not None:
            self._seen[index].setdefault(state, status.time)

    def _executor(self, work_dir: Path) -> Any:
        with self._lock:
            executor = self._executors.get(work_dir)
            if executor is None:
                executor = self._make_executor(work_dir)
                self._executors[work_dir] = executor
            return executor

    def _make_executor(self, work_dir: Path) -> Any:
        raise NotImplementedError

    def _executor_config(self, config_class: Any, work_dir: Path) -> Any:
        return config_class(work_directory=work_dir, queue_polling_interval=QUEUE_POLL_INTERVAL,
                            initial_queue_polling_delay=0,
                            queue_polling_error_threshold=QUEUE_POLL_ERRORS, keep_files=True)

    def _job(self, request: BlockRequest) -> Any:
        psij, config = self._psij, self.config
        spec = psij.JobSpec(
            executable=str(request.script_path), arguments=[], directory=request.work_dir,
            name=request.name, inherit_environment=True,
            stdout_path=request.output_path, stderr_path=request.error_path,
            resources=psij.ResourceSpecV1(node_count=request.nodes, processes_per_node=1,
                                          exclusive_node_use=config.exclusive),
            attributes=psij.JobAttributes(
                duration=timedelta(seconds=config.walltime_seconds),
                queue_name=self.queue_name(), account=config.account,
                custom_attributes=self.custom_attributes() or None),
            launcher="single")
        return psij.Job(spec)

    def queue_name(self) -> str | None:
        return self.config.queue or self.config.partition

    def custom_attributes(self) -> dict[str, object]:
        return {}


class SlurmProvider(PsijProvider):
    name = "slurm"

    def queue_name(self) -> str | None:
        return self.config.partition or self.config.queue

    def custom_attributes(self) -> dict[str, object]:
        return {"slurm.qos": self.config.qos} if self.config.qos else {}

    def launcher_argv(self, nodes: int) -> list[str]:
        if self.config.block_launcher == "mpiexec":
            return mpiexec_argv(nodes, self._mpi_flavor)
        n = str(nodes)
        return ["srun", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1", "--overlap",
                "--cpu-bind=none", "--no-kill", "--kill-on-bad-exit=0", "--export=ALL"]

    def _make_executor(self, work_dir: Path) -> Any:
        from psij.executors.batch.slurm import SlurmExecutorConfig, SlurmJobExecutor

        executor_class = _with_directives(_robust_squeue(SlurmJobExecutor), "slurm",
                                          "#SBATCH --job-name={}")
        executor = executor_class(config=self._executor_config(SlurmExecutorConfig, work_dir))
        executor.directive_lines = self.config.directive_lines
        return executor


class PbsProvider(PsijProvider):
    name = "pbs"

    def launcher_argv(self, nodes: int) -> list[str]:
        return mpiexec_argv(nodes, self._mpi_flavor)

    def _make_executor(self, work_dir: Path) -> Any:
        from psij.executors.batch.pbs import PBSExecutorConfig, PBSJobExecutor

        executor_class = _with_directives(PBSJobExecutor, "pbs", "#PBS -N {}")
        executor = executor_class(config=self._executor_config(PBSExecutorConfig, work_dir))
        executor.directive_lines = self.config.directive_lines
        return executor


def mpiexec_argv(nodes: int, flavor: str = "auto") -> list[str]:
    """mpiexec starting one process per node of the job, which it learns from the
    scheduler (PBS_NODEFILE, Slurm's variables). ``auto`` asks this host's mpiexec; where
    there is none (a login node whose MPI module worker_init loads), Hydra's and PALS's
    common spelling."""
    if flavor == "auto":
        try:
            flavor = detect_mpi_flavor()
        except LaunchError:
            flavor = "pals"
    n = str(nodes)
    if flavor == "openmpi":
        return ["mpiexec", "-n", n, "--map-by", "ppr:1:node", "-x", "EL_TREE", "-x", "EL_BOOT"]
    if flavor == "hydra":
        return ["mpiexec", "-n", n, "-ppn", "1", "-disable-auto-cleanup"]
    return ["mpiexec", "-n", n, "-ppn", "1"]


_STATES = {"NEW": BlockState.PENDING, "QUEUED": BlockState.PENDING,
           "ACTIVE": BlockState.RUNNING, "COMPLETED": BlockState.COMPLETED,
           "FAILED": BlockState.FAILED, "CANCELED": BlockState.CANCELLED}


def _message(state: BlockState, status: Any) -> str:
    if state is BlockState.COMPLETED:
        return ""
    if status.message:
        return str(status.message).strip()[-2000:]
    if status.exit_code is not None:
        return f"the block script exited with status {status.exit_code}"
    return state.value


def _words(exc: BaseException) -> str:
    """The scheduler's own message, on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _quoted(argv: list[str]) -> list[str]:
    return [shlex.quote(a) for a in argv]


def _with_directives(executor_class: Any, name: str, job_name: str) -> Any:
    """The executor (named ``name``, as PSI/J's own loader names them), writing the job's
    name (``job_name`` formats it) and the scheduler_options lines after its own
    directives."""

    class WithDirectives(executor_class):
        directive_lines: list[str] = []
        _NAME_ = name
        _VERSION_ = import_psij().__version__

        def generate_submit_script(self, job, context, submit_file) -> None:
            text = io.StringIO()
            super().generate_submit_script(job, context, text)
            named = job_name.format(_job_name(job.spec.name))
            submit_file.write(insert_directives(text.getvalue(),
                                                [named, *self.directive_lines]))

    WithDirectives.__name__ = executor_class.__name__
    return WithDirectives


def _job_name(name: str) -> str:
    """A name every scheduler takes: letters, digits, ``._-``, a letter first, 64 at most."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    return (safe if safe[:1].isalpha() else "el-" + safe)[:64]


def insert_directives(script: str, directives: list[str]) -> str:
    """``directives`` after the last directive line of ``script`` (those that begin with
    the same word as the first of ``directives``)."""
    if not directives:
        return script
    prefix = directives[0].split()[0]
    lines = script.splitlines()
    last = max((i for i, line in enumerate(lines) if line.startswith(prefix)), default=0)
    return "\n".join([*lines[:last + 1], *directives, *lines[last + 1:]]) + "\n"


def _robust_squeue(executor_class: Any) -> Any:
    """Slurm's executor, reading squeue's reason column whole and keeping reasons PSI/J's
    table does not have."""
    from psij import JobState, JobStatus
    from psij.executors.batch.batch_scheduler_executor import check_status_exit_code

    class RobustSqueue(executor_class):
        def parse_status_output(self, exit_code: int, out: str) -> dict[str, Any]:
            check_status_exit_code("squeue", exit_code, out)
            statuses = {}
            for line in out.splitlines()[1:]:
                cols = line.split(None, 2)
                if len(cols) < 2 or cols[1] not in self._STATE_MAP:
                    continue
                state = self._STATE_MAP[cols[1]]
                reason = cols[2].strip() if len(cols) == 3 else ""
                message = self._REASONS_MAP.get(reason, reason) \
                    if state == JobState.FAILED else None
                statuses[cols[0]] = JobStatus(state, message=message)
            return statuses

    RobustSqueue.__name__ = executor_class.__name__
    return RobustSqueue
