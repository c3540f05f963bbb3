"""Starting children on this host: plain processes, one per child."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import IO

from ensemble_launcher.launchers.base import ChildLauncher, start_process

#: The local launcher's rank variable (srun's is SLURM_PROCID): a child's index in its step.
INDEX_ENV = "EL_CHILD_INDEX"


class LocalLauncher(ChildLauncher):
    """Every host is this one: plain processes, one per child."""

    name = "local"

    def start(self, argv: list[str], hosts: list[str], env: Mapping[str, str],
              log: IO[bytes]) -> list[subprocess.Popen]:
        return [start_process(argv, {**env, INDEX_ENV: str(i)}, log)
                for i in range(len(hosts))]
