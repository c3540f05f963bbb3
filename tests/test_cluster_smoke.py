"""The test cluster is real: Slurm and MPICH's Hydra run across separate hosts.

Each test gets a fresh three-host cluster from the `cluster` fixture (tests/cluster).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest

MPI_PROGRAM = r"""
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rank, size, sum;
    char host[256];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d on %s sum %d\n", rank, size, host, sum);
    MPI_Finalize();
    return 0;
}
"""


@pytest.fixture(scope="module")
def mpi_program(tmp_path_factory):
    source = tmp_path_factory.mktemp("mpi") / "allreduce.c"
    source.write_text(MPI_PROGRAM)
    binary = source.with_suffix("")
    subprocess.run(["mpicc", "-o", str(binary), str(source)], check=True, timeout=120)
    return binary


def assert_allreduce_ran_on(output: str, hosts: list[str]) -> None:
    """Six ranks, two per host, and every rank saw 0+1+...+5 = 15."""
    ranks = re.findall(r"rank (\d+) of 6 on (\S+) sum (\d+)", output)
    assert sorted(int(rank) for rank, _, _ in ranks) == list(range(6)), output
    assert {total for _, _, total in ranks} == {"15"}, output
    assert Counter(host for _, host, _ in ranks) == dict.fromkeys(hosts, 2), output


def test_srun_runs_on_every_host(cluster):
    result = cluster.run(["srun", "-N3", "hostname"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == cluster.hosts


def test_every_host_has_its_own_address(cluster):
    result = cluster.run(["srun", "-N3", "-l", "ip", "-4", "-o", "addr", "show", "eth0"],
                         capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    addresses = re.findall(r"inet ([\d.]+)/24", result.stdout)
    assert sorted(addresses) == sorted(cluster.addresses.values()), result.stdout


def test_batch_job_spans_three_nodes(cluster):
    job = cluster.sbatch("srun -N3 hostname\necho nodelist=$SLURM_JOB_NODELIST\n", nodes=3)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), job.stderr
    assert f"nodelist={cluster.run_id}-[1-3]" in job.stdout
    assert sorted(job.stdout.split()[:3]) == cluster.hosts, job.stdout


def test_hydra_launches_across_hosts_through_rsh(cluster, mpi_program):
    result = cluster.run(
        ["mpiexec", "-iface", cluster.bridge, "-launcher", "ssh", "-launcher-exec", cluster.rsh,
         "-hosts", ",".join(cluster.hosts), "-n", "6", "-ppn", "2", str(mpi_program)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert_allreduce_ran_on(result.stdout, cluster.hosts)


def test_hydra_launches_through_slurm_inside_a_job(cluster, mpi_program):
    job = cluster.sbatch(f"mpiexec -n 6 -ppn 2 {mpi_program}\n", nodes=3)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), job.stderr
    assert_allreduce_ran_on(job.stdout, cluster.hosts)


def test_kill_host_kills_every_process_on_it(cluster):
    victim, survivor = cluster.hosts[1], cluster.hosts[0]
    sleeper = cluster.popen_on(victim, ["sleep", "1000"])
    try:
        assert sleeper.pid in cluster.host_pids(victim)
        cluster.kill_host(victim)
        assert sleeper.wait(timeout=10) == -9
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cluster.host_pids(victim) == set()
    assert cluster.run_on(survivor, "hostname", capture_output=True, text=True).stdout.strip() \
        == survivor


CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=1)
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print("unreachable", exc)
"""


def test_cut_link_partitions_a_host(cluster):
    """Port 9 is closed: a reachable host refuses at once, a cut-off one never answers."""
    source, target = cluster.hosts[0], cluster.hosts[2]

    def probe() -> str:
        argv = [sys.executable, "-c", CONNECT, cluster.addresses[target]]
        return cluster.run_on(source, argv, capture_output=True, text=True).stdout

    assert probe().startswith("refused")
    cluster.cut_link(target)
    assert probe().startswith("unreachable")
    cluster.restore_link(target)
    assert probe().startswith("refused")
