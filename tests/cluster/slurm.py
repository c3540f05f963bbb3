"""Slurm configuration for one test cluster, and parsing of `scontrol show job -o`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FINISHED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


@dataclass(frozen=True)
class SlurmLayout:
    """Where one cluster's Slurm files live; everything sits under the run directory."""

    run_dir: Path

    @property
    def conf(self) -> Path:
        return self.run_dir / "slurm.conf"

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "slurmctld"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "log"

    @property
    def slurmctld_pid_file(self) -> Path:
        return self.run_dir / "slurmctld.pid"

    @property
    def slurmctld_log(self) -> Path:
        return self.log_dir / "slurmctld.log"

    def spool_dir(self, host: str) -> Path:
        return self.run_dir / "slurmd" / host

    def slurmd_pid_file(self, host: str) -> Path:
        return self.run_dir / f"slurmd-{host}.pid"

    def slurmd_log(self, host: str) -> Path:
        return self.log_dir / f"slurmd-{host}.log"


def slurm_conf(
    layout: SlurmLayout,
    cluster_name: str,
    controller: str,
    controller_address: str,
    ports: tuple[int, int],
    munge_socket: Path,
    addresses: dict[str, str],
    cpus_per_host: int,
    extra: dict[str, str],
) -> str:
    """slurm.conf text: TESTBED.md's settings, with every path and port private to this run."""
    settings = {
        "ClusterName": cluster_name,
        "SlurmctldHost": f"{controller}({controller_address})",
        "SlurmctldPort": str(ports[0]),
        "SlurmdPort": str(ports[1]),
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={munge_socket}",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "StateSaveLocation": str(layout.state_dir),
        "SlurmdSpoolDir": str(layout.run_dir / "slurmd" / "%n"),
        "SlurmctldPidFile": str(layout.slurmctld_pid_file),
        "SlurmdPidFile": str(layout.run_dir / "slurmd-%n.pid"),
        "SlurmctldLogFile": str(layout.slurmctld_log),
        "SlurmdLogFile": str(layout.log_dir / "slurmd-%n.log"),
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "ReturnToService": "2",
        "MpiDefault": "none",
        "SlurmdParameters": "config_overrides",
        "KillWait": "2",
        "MailProg": "/bin/true",
        **extra,
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines += [
        f"NodeName={host} NodeAddr={address} CPUs={cpus_per_host} State=UNKNOWN"
        for host, address in addresses.items()
    ]
    lines.append(f"PartitionName=debug Nodes={','.join(addresses)} Default=YES "
                 "MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def cgroup_conf() -> str:
    """cgroup.conf: slurmd 22.05 loads a cgroup plugin even with proctrack/linuxproc and
    task/none, and fails without this file. Inside `ip netns exec`, /sys is a fresh sysfs
    with nothing mounted on /sys/fs/cgroup, so autodetection and cgroup/v2 fail on any
    machine; cgroup/v1 only checks its mounts when a cgroup plugin uses it, which none does.
    """
    return "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n"


def parse_show_job(line: str) -> dict[str, str]:
    """`scontrol show job -o` prints one line of Key=Value pairs."""
    return dict(re.findall(r"(\w+)=(\S*)", line))
