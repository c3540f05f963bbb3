"""Providers: one ensemble over many batch jobs ("blocks"), submitted from a login node.

A provider submits, watches and cancels blocks; each block's job script starts one worker
per node (srun or mpiexec) that connects back to the root's master. The keys reach the
workers in a 0600 boot file; the scripts, command lines and job environments carry only
``EL_TREE`` and ``EL_BOOT``. The elastic policy (how many blocks, when) is the
orchestrator's (``orchestrator.blocks``), not ours.

- ``slurm`` and ``pbs`` run on PSI/J (``pip install 'ensemble_launcher[providers]'``);
  see ``psij_jobs`` for what we add to it. Slurm is tested for real, on the test cluster of
  tests/cluster (submit, running, cancel, completion, a rejected partition). PBS is tested
  only through the job script we generate (directives, select, walltime, queue, account,
  scheduler_options, mpiexec one process per node): there is no PBS server to test on.
- ``local`` runs each block as local processes with its walltime enforced: the provider
  path without a scheduler, tested for real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ensemble_launcher.providers.base import Block, BlockRequest, BlockState, Provider

if TYPE_CHECKING:
    from ensemble_launcher.config.models import ProviderConfig

__all__ = ["Block", "BlockRequest", "BlockState", "Provider", "make_provider"]


def make_provider(config: ProviderConfig, mpi_flavor: str = "auto") -> Provider:
    """The provider ``config.name`` names. ``mpi_flavor`` (LauncherConfig.mpi_flavor) says
    how a block's mpiexec starts one process per node."""
    if config.name == "local":
        from ensemble_launcher.providers.local import LocalProvider

        return LocalProvider(config)
    from ensemble_launcher.providers.psij_jobs import PbsProvider, SlurmProvider

    if config.name == "slurm":
        return SlurmProvider(config, mpi_flavor)
    return PbsProvider(config, mpi_flavor)
