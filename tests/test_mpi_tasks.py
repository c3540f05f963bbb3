"""MPI tasks: the exact command line of each flavor, packing and GPUs on one node, and
real MPI programs across the hosts of the test cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.executors.mpi import BIND_GPUS, MpiLaunch

ARGV = ["./sim", "--x", "1"]


@pytest.mark.parametrize("kind, expected", [
    ("hydra", ["mpiexec", "-n", "4", "-ppn", "2", "-hosts", "n1,n2", "-bind-to",
               "user:0+1,2+3"]),
    ("pals", ["mpiexec", "-n", "4", "--ppn", "2", "--hosts", "n1,n2", "--cpu-bind",
              "list:0,1:2,3"]),
    ("openmpi", ["mpiexec", "-n", "4", "--host", "n1:2,n2:2", "--map-by", "ppr:2:node:PE=2",
                 "--bind-to", "core", "--cpu-set", "0,1,2,3"]),
    ("srun", ["srun", "--overlap", "-N", "2", "-n", "4", "--ntasks-per-node", "2", "-w",
              "n1,n2", "--export=ALL", "--cpu-bind=mask_cpu:0x3,0xc"]),
])
def test_command_line_of_each_flavor(kind, expected):
    launch = MpiLaunch(kind, ["--extra"])
    command = launch.command(ARGV, ["n1", "n2"], 2, [[0, 1], [2, 3]], [[], []])
    assert command == [*expected, "--extra", *ARGV]


def test_one_core_ranks_and_a_local_single_node_task():
    command = MpiLaunch("hydra").command(ARGV, ["n1"], 2, [[5], [7]], [[], []], local=True)
    assert command == ["mpiexec", "-n", "2", "-ppn", "2", "-hosts", "n1", "-launcher", "fork",
                       "-bind-to", "user:5,7", *ARGV]
    srun = MpiLaunch("srun").command(ARGV, ["n1"], 2, [[5], [7]], [[], []])
    assert "--cpu-bind=mask_cpu:0x20,0x80" in srun


def test_gpus_per_rank_go_through_the_binding_wrapper():
    command = MpiLaunch("pals", gpu_selector="CUDA_VISIBLE_DEVICES").command(
        ARGV, ["n1"], 2, [[0], [1]], [["0.0"], ["0.1"]])
    assert command[-len(ARGV) - 4:] == ["sh", str(BIND_GPUS), "CUDA_VISIBLE_DEVICES",
                                        "0.0;0.1", *ARGV]


# One write per rank: with PYTHONUNBUFFERED set, print() writes each field apart, and
# mpiexec may then interleave the ranks' fields within a line.
PRINT_RANK = """import os
rank, mask = os.environ.get("PMI_RANK"), os.environ.get("ZE_AFFINITY_MASK")
os.write(1, f"{rank} {sorted(os.sched_getaffinity(0))} {mask}\\n".encode())
"""


def test_ranks_get_their_cores_and_overloaded_gpus_on_one_node(tmp_path):
    system = SystemConfig(name="fake", cpus=[0, 1], gpus=["0", "0", "1", "1"])
    script = tmp_path / "rank.py"
    script.write_text(PRINT_RANK)
    tasks = {"mpi": Task(task_id="mpi", ppn=2, ngpus_per_process=2,
                         executable=[sys.executable, str(script)])}
    r = EnsembleLauncher(tasks, system, return_stdout=True, out_dir=tmp_path / "run").run()
    result = r["mpi"]
    assert result.state == "succeeded", result.stderr
    assert result.cpus == (0, 1) and result.gpus == ("0", "0", "1", "1")
    ranks = sorted(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert ranks == [["0", "[0] 0,0"], ["1", "[1] 1,1"]]


def test_two_single_node_mpi_tasks_are_packed_and_run_together(tmp_path):
    system = SystemConfig(name="four", cpus=[0, 1, 2, 3])
    tasks = {f"m{i}": Task(task_id=f"m{i}", ppn=2, executable="sleep 1") for i in range(2)}
    r = EnsembleLauncher(tasks, system, pin_resources=False, out_dir=tmp_path / "run").run()
    a, b = r["m0"], r["m1"]
    assert a.state == b.state == "succeeded"
    assert a.start_time < b.end_time and b.start_time < a.end_time
    assert set(a.cpus).isdisjoint(b.cpus) and len(a.cpus) == len(b.cpus) == 2


def test_python_callables_cannot_ask_for_ranks(tmp_path):
    from ensemble_launcher import ResourceError

    with pytest.raises(ResourceError, match="mpi4py"):
        EnsembleLauncher({"f": Task(task_id="f", ppn=2, executable=len, args=([],))},
                         out_dir=tmp_path / "run")


# -- on the test cluster ---------------------------------------------------------------------

MPI_PROGRAM = r"""
#define _GNU_SOURCE
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0;
    char host[256], cores[256] = "";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    gethostname(host, sizeof host);
    cpu_set_t set;
    sched_getaffinity(0, sizeof set, &set);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set)) snprintf(cores + strlen(cores), 8, "%s%d", *cores ? "," : "", c);
    const char *gpu = getenv("ZE_AFFINITY_MASK");
    printf("rank=%d size=%d sum=%d host=%s cores=%s gpu=%s\n", rank, size, sum, host, cores,
           gpu ? gpu : "-");
    MPI_Finalize();
    return 0;
}
"""


@pytest.fixture(scope="module")
def mpi_program(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("mpiprog") / "ranks.c"
    src.write_text(MPI_PROGRAM)
    binary = src.with_suffix("")
    subprocess.run(["mpicc", "-O1", "-o", str(binary), str(src)], check=True, timeout=120)
    return binary


def parse_ranks(stdout: str) -> list[dict[str, str]]:
    return [dict(field.split("=", 1) for field in line.split())
            for line in stdout.splitlines() if line.startswith("rank=")]


def run_in_job(cluster, work: Path, ensemble: dict, nodes: int = 3,
               system: dict | None = None, el_flags: str = "", **launcher_config) -> dict:
    work.mkdir(exist_ok=True)
    (work / "e.json").write_text(json.dumps({"ensembles": ensemble}))
    (work / "lc.json").write_text(json.dumps({"nlevels": 1, **launcher_config}))
    (work / "sys.json").write_text(json.dumps(system or {"cpus": [0, 1], "gpus": ["0", "1"]}))
    script = (f"#!/bin/sh\ncd {work}\nexport FI_TCP_IFACE=eth0 FI_SOCKETS_IFACE=eth0\n"
              f"{sys.executable} -m ensemble_launcher.cli run e.json --launcher-config lc.json "
              f"--system-config sys.json --out run --json results.json --return-stdout "
              f"{el_flags}\necho \"el exit $?\"\n")
    job = cluster.sbatch(script, nodes=nodes, timeout=240)
    results = json.loads((work / "results.json").read_text()) \
        if (work / "results.json").exists() else {}
    failed = {k: (r["exception"], r["stderr"]) for k, r in results.items()
              if r["state"] != "succeeded"}
    assert "el exit 0" in job.stdout, f"{job.stdout}{job.stderr}{failed}"
    return results


def test_mpi_program_on_two_nodes_matches_what_was_recorded(cluster, mpi_program):
    results = run_in_job(cluster, cluster.run_dir / "work", {"mpi": {
        "nnodes": 2, "ppn": 2, "ngpus_per_process": 1, "cmd_template": f"{mpi_program} {{i}}",
        "i": [0]}})
    result = results["mpi-0"]
    assert result["state"] == "succeeded", result
    ranks = parse_ranks(result["stdout"])
    assert sorted(int(r["rank"]) for r in ranks) == [0, 1, 2, 3]
    assert all(r["sum"] == "6" and r["size"] == "4" for r in ranks)
    recorded_hosts = result["host"].split(",")
    assert len(set(recorded_hosts)) == 2
    assert sorted(r["host"] for r in ranks) == sorted(recorded_hosts * 2)
    by_host = defaultdict(list)
    for r in ranks:
        by_host[r["host"]].append((r["cores"], r["gpu"]))
    for host, seen in by_host.items():
        assert sorted(seen) == [("0", "0"), ("1", "1")], f"{host}: {seen}"
    assert result["cpus"] == [0, 1] and result["gpus"] == ["0", "1"]


def test_mixed_ensemble_never_gives_a_core_to_two_tasks(cluster, mpi_program):
    results = run_in_job(cluster, cluster.run_dir / "work", {
        "serial": {"cmd_template": "sh -c 'sleep 0.2; echo {i}'", "i": "range(24)"},
        "one_node": {"ppn": 2, "cmd_template": f"{mpi_program} {{i}}", "i": "range(4)"},
        "two_nodes": {"nnodes": 2, "ppn": 2, "cmd_template": f"{mpi_program} {{i}}",
                      "i": "range(3)"},
    })
    assert len(results) == 31
    assert all(r["state"] == "succeeded" for r in results.values()), \
        [r for r in results.values() if r["state"] != "succeeded"]
    for r in results.values():
        if r["ensemble"] != "serial":
            ranks = parse_ranks(r["stdout"])
            size = 2 * (2 if r["ensemble"] == "two_nodes" else 1)
            assert len(ranks) == size and all(x["sum"] == str(size * (size - 1) // 2)
                                              for x in ranks)
    intervals = defaultdict(list)
    for r in results.values():
        for host in r["host"].split(","):
            for core in r["cpus"]:
                intervals[(host, core)].append((r["start_time"], r["end_time"], r["task_id"]))
    for slot, spans in intervals.items():
        spans.sort()
        for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"{slot}: {first} and {second} overlap"


RANK_LINE = """import os
os.write(1, f"{os.environ.get('PMI_RANK')} {sorted(os.sched_getaffinity(0))}\\n".encode())
"""


@pytest.mark.parametrize("nlevels", [1, 2])
def test_multi_node_tasks_run_once_across_reserved_nodes(tmp_path, nlevels):
    from ensemble_launcher import ResourceError

    script = tmp_path / "rank.py"
    script.write_text(RANK_LINE)
    tasks = {f"g{i}": Task(task_id=f"g{i}", nnodes=2, ppn=1,
                           executable=[sys.executable, str(script)]) for i in range(3)}
    tasks.update({f"s{i}": Task(task_id=f"s{i}", executable="true") for i in range(10)})
    config = LauncherConfig(nlevels=nlevels, nchildren=2)
    r = EnsembleLauncher(tasks, Nodes=["localhost"] * 4, launcher_config=config,
                         return_stdout=True, out_dir=tmp_path / "run").run()
    assert r.counts() == {"succeeded": 13}
    for i in range(3):
        ranks = sorted(line.split(maxsplit=1)[0] for line in r[f"g{i}"].stdout.splitlines())
        assert ranks == ["0", "1"]
        assert len(r[f"g{i}"].host.split(",")) == 2
    if nlevels == 2:
        with pytest.raises(ResourceError, match="widest group of workers under one master "
                                                "has 2"):
            EnsembleLauncher({"wide": Task(task_id="wide", nnodes=3, executable="true")},
                             Nodes=["localhost"] * 4, launcher_config=config)


def test_two_one_node_mpi_tasks_share_a_cluster_node_at_once(cluster, mpi_program):
    """Issue 4's packing on a real host: the worker ``main.w0`` started by srun, each task's
    ranks by mpiexec there. The hosts have 2 CPUs, so the node declares 4 logical cores and
    pinning is off."""
    results = run_in_job(cluster, cluster.run_dir / "work", {"pack": {
        "ppn": 2, "cmd_template": f"sh -c '{mpi_program} {{i}} && sleep 1'", "i": "range(2)"}},
        nodes=1, system={"cpus": [0, 1, 2, 3]}, el_flags="--no-pin", child_launcher="srun")
    a, b = results["pack-0"], results["pack-1"]
    assert a["state"] == b["state"] == "succeeded", (a, b)
    assert a["host"] == b["host"] != ""
    assert a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"]
    assert set(a["cpus"]).isdisjoint(b["cpus"]) and len(a["cpus"]) == len(b["cpus"]) == 2
    for r in (a, b):
        ranks = parse_ranks(r["stdout"])
        assert sorted(x["rank"] for x in ranks) == ["0", "1"]
        assert all(x["sum"] == "1" and x["host"] == r["host"] for x in ranks)
