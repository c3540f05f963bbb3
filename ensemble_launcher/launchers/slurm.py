"""Starting children with ``srun`` inside a Slurm allocation."""

from __future__ import annotations

from ensemble_launcher.launchers.base import ChildLauncher


class SrunLauncher(ChildLauncher):
    """One job step for all given hosts, one task per host.

    ``--overlap`` lets the tasks we start later share the cores with this step,
    ``--cpu-bind=none`` leaves pinning to us, and ``--no-kill --kill-on-bad-exit=0`` keep
    the other children running when one node fails.
    """

    name = "srun"

    def wrap(self, argv: list[str], hosts: list[str], env_names: list[str]) -> list[str]:
        n = str(len(hosts))
        return ["srun", "--overlap", "--nodes", n, "--ntasks", n, "--ntasks-per-node=1",
                "--nodelist", ",".join(hosts), "--cpu-bind=none", "--no-kill",
                "--kill-on-bad-exit=0",
                "--export=ALL", *self.extra_args, *argv]
