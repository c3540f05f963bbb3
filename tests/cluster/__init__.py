"""A real multi-node test cluster on one Linux machine (root only), after shared TESTBED.md.

Cluster(nhosts=3) starts, for a fresh run id elXXXXXX and a free subnet 10.77.X.0/24:

    this machine (root namespaces)             hosts: one network namespace each, with
                                               their own UTS and mount namespaces
    munged   socket RUN/munge/munge.socket
    slurmctld -D -f RUN/slurm.conf             elXXXXXX-1  eth0 10.77.X.11
      listening on 10.77.X.1                     slurmd -D -N elXXXXXX-1   (+ slurmstepd,
                                                 job steps, MPI proxies and ranks)
    bridge elXXXXXX-br  10.77.X.1/24
      +-- veth elXXXXXX-v1 <--------------->   eth0 of elXXXXXX-1
      +-- veth elXXXXXX-v2 <--------------->   eth0 of elXXXXXX-2  10.77.X.12
      +-- veth elXXXXXX-v3 <--------------->   eth0 of elXXXXXX-3  10.77.X.13

    clients here (srun, sbatch, sinfo,         each host: its own hostname, tmpfs on
    mpiexec) use SLURM_CONF=RUN/slurm.conf     /dev/shm and boot_id; cluster.run_on()
    through cluster.env / cluster.run()        and RUN/netns-rsh (Hydra's "ssh") enter
                                               it with nsenter -t <slurmd pid> -n -u -m

RUN is a fresh temporary directory with slurm.conf, cgroup.conf, the munge key and socket,
Slurm's state, spool and log files, pid files, job scripts and their output. The host
names are appended to /etc/hosts (marked lines, removed at teardown) so that they resolve
everywhere without a DNS query. Nothing is routed out of the bridge: no NAT, no forwarding.
Teardown kills the cluster's clients, daemons and every process on the hosts, deletes
namespaces, links, /etc/hosts lines and RUN, then checks that none of it is left. A run
whose owning process died without teardown is cleaned up by the next run (see runs.py).

MPI: Debian 12's MPICH is built for ch4:ucx, so the FI_* variables in cluster.env (from
TESTBED.md, for libfabric builds) have no effect here; UCX picks eth0 by itself. UCX 1.13
over TCP often hangs in MPI_Finalize across hosts (openucx/ucx#8738), so cluster.env
preloads a small shim that bounds that wait (ucx_disconnect_timeout.c); see
Cluster(mpi_finalize_timeout=...).

    with Cluster() as cluster:
        cluster.run(["srun", "-N3", "hostname"], capture_output=True, text=True)
        cluster.run_on(cluster.hosts[1], "hostname", capture_output=True, text=True)
        job = cluster.sbatch("srun hostname\n", nodes=3)

In tests, use the `cluster` fixture from tests/conftest.py (a fresh cluster per test).
"""

from __future__ import annotations

import os
import shutil

from .cluster import Cluster, JobResult
from .procs import ClusterError

__all__ = ["Cluster", "ClusterError", "JobResult", "cluster_fixture", "missing_requirements"]

PACKAGES = "mpich libmpich-dev slurm-wlm munge iproute2"
REQUIRED_PROGRAMS = (
    "srun", "sbatch", "sinfo", "scontrol", "scancel", "slurmctld", "slurmd", "munged",
    "mpiexec", "mpicc", "cc", "ip", "nsenter", "unshare", "mount", "hostname",
)


def missing_requirements() -> list[str]:
    """Why a Cluster cannot start here; empty when it can."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    problems = []
    if os.geteuid() != 0:
        problems.append("the test cluster needs root (network namespaces, mounts)")
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p, path=path) is None]
    if missing:
        problems.append(f"missing programs: {' '.join(missing)}; install them with "
                        f"`apt-get install -y {PACKAGES}`")
    return problems


def cluster_fixture(name: str = "cluster", **cluster_kwargs):
    """A function-scoped pytest fixture that yields a fresh, started Cluster.

    It fails (never skips) when the machine cannot run a cluster, and after teardown it
    checks that no namespace, link, daemon, /etc/hosts line or file of the run is left.
    """
    import pytest

    @pytest.fixture(name=name)
    def fixture():
        problems = missing_requirements()
        if problems:
            pytest.fail("cannot start the test cluster: " + "; ".join(problems), pytrace=False)
        with Cluster(**cluster_kwargs) as cluster:
            yield cluster
        leftovers = cluster.leftovers()
        assert not leftovers, f"test cluster {cluster.run_id} leaked: {leftovers}"

    return fixture
