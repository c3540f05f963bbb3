"""What every provider shares: a block's request and record, its states, and the block
script that starts one worker per node.

The block script is ours, whatever the scheduler: ``worker_init``, the block's non-secret
variables (``EL_TREE``, ``EL_BOOT``) exported with shell quoting, then the site's launcher
starting ``argv`` once per node. Keys never appear in it: they reach the workers in the 0600
boot file that ``EL_BOOT`` names.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble_launcher.errors import ProviderError

if TYPE_CHECKING:
    from ensemble_launcher.config.models import ProviderConfig


class BlockState(str, Enum):
    PENDING = "pending"      # submitted, queued
    RUNNING = "running"      # the scheduler says it runs
    COMPLETED = "completed"  # ended by itself (its script exited 0)
    FAILED = "failed"        # ended with an error, a node failure or its walltime (message says)
    CANCELLED = "cancelled"  # cancelled, by us or by someone's scancel/qdel

    @property
    def ended(self) -> bool:
        return self in (BlockState.COMPLETED, BlockState.FAILED, BlockState.CANCELLED)


@dataclass
class BlockRequest:
    """What one block runs: ``argv`` once on each of its ``nodes``, with ``env``."""

    index: int
    nodes: int
    argv: list[str]
    env: dict[str, str]
    work_dir: Path
    name: str
    directory: Path = field(default_factory=Path.cwd)
    """Where the workers start, and so where tasks run by default: the directory ``el
    run`` started in, as for a run inside one job."""

    @property
    def script_path(self) -> Path:
        return self.work_dir / f"block-{self.index}.sh"

    @property
    def output_path(self) -> Path:
        """Where the block script's standard output goes (its standard error: ``.err``)."""
        return self.work_dir / f"block-{self.index}.out"

    @property
    def error_path(self) -> Path:
        return self.work_dir / f"block-{self.index}.err"


@dataclass
class Block:
    """One submitted block, as the scheduler last told us."""

    index: int
    job_id: str
    state: BlockState
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    message: str = ""


class Provider:
    """Submits, watches and cancels blocks on one scheduler.

    ``poll`` is cheap: PSI/J's own polling thread asks the scheduler about once a second
    and ``poll`` reads what it learnt; the local provider looks at its processes.
    ``cancel`` is idempotent.
    """

    name: str = ""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    def block_script(self, request: BlockRequest) -> str:
        """Our script that starts the block's workers (what the batch job runs)."""
        return render_block_script(self.config.worker_init, request,
                                   self.launch_lines(request))

    def launch_lines(self, request: BlockRequest) -> list[str]:
        """The last lines of the block script: those that start the workers."""
        raise NotImplementedError

    def script(self, request: BlockRequest) -> str:
        """The job script text the scheduler is given (for local: the block script)."""
        raise NotImplementedError

    def submit(self, request: BlockRequest) -> Block:
        raise NotImplementedError

    def poll(self, blocks: Iterable[Block]) -> None:
        raise NotImplementedError

    def cancel(self, block: Block) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop any helper thread; blocks still running are left to the caller to cancel."""


def render_block_script(worker_init: str, request: BlockRequest, launch: list[str]) -> str:
    """bash (not sh: worker_init lines such as ``source env/bin/activate`` need it)."""
    _check_env_names(request.env)
    lines = ["#!/bin/bash", f"# ensemble_launcher block {request.index} ({request.name}): "
             f"one worker on each of its {request.nodes} node(s)",
             f"cd {shlex.quote(str(request.directory))} || exit 1"]
    if worker_init.strip():
        lines += [worker_init.rstrip("\n")]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in request.env.items()]
    return "\n".join([*lines, *launch]) + "\n"


def write_block_script(request: BlockRequest, text: str) -> Path:
    """The script at ``request.script_path``, 0700 (made so before any byte is written)."""
    request.work_dir.mkdir(parents=True, exist_ok=True)
    path = request.script_path
    path.unlink(missing_ok=True)
    with open(path, "x", opener=_private_opener) as out:
        out.write(text)
    return path


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o700)


def _check_env_names(env: dict[str, str]) -> None:
    from ensemble_launcher.values import is_env_name

    bad = [name for name in env if not is_env_name(name)]
    if bad:
        raise ProviderError(f"block variables must be environment variable names, not {bad}")
