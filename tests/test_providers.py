"""Providers (issue 13): the provider config's checks, the job scripts the slurm and pbs
providers generate (PBS is tested through its script only: there is no PBS server here),
the local provider on real processes, and the slurm provider (PSI/J) on the Slurm test
cluster of tests/cluster: a block queued, running, cancelled and gone from the queue; a
rejected partition; blocks that end by themselves."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ensemble_launcher.config.files import build_model
from ensemble_launcher.config.models import LauncherConfig, ProviderConfig
from ensemble_launcher.errors import ConfigError, ProviderError
from ensemble_launcher.providers import Block, BlockRequest, BlockState, make_provider
from ensemble_launcher.providers.base import write_block_script

TREE = json.dumps([{"name": "main.w0", "host": "h'1"}, {"name": "main.w1", "host": "h 2"}])
ARGV = [sys.executable, "-m", "ensemble_launcher.orchestrator.child"]


def request(work: Path, *, index: int = 3, nodes: int = 2, argv: list[str] | None = None,
            env: dict[str, str] | None = None) -> BlockRequest:
    return BlockRequest(index=index, nodes=nodes, argv=argv or ARGV,
                        env={"EL_TREE": TREE, "EL_BOOT": str(work / "run dir" / ".boot-main")}
                        if env is None else env,
                        work_dir=work / "blocks", name=f"el-test-b{index}")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def until_state(provider, block: Block, done, timeout: float) -> Block:
    def reached() -> bool:
        provider.poll([block])
        return done(block.state)

    wait_for(reached, timeout, f"block {block.index} (job {block.job_id}) to leave "
             f"{block.state.value}")
    return block


# ----- the config


BAD_PROVIDERS = {
    "unknown-name": ({"name": "lsf"}, "provider.name", "'lsf'"),
    "no-name": ({}, "provider.name", "required"),
    "unknown-key": ({"name": "slurm", "nodes": 2}, "provider.nodes", "nodes_per_block"),
    "nodes_per_block-0": ({"name": "slurm", "nodes_per_block": 0}, "provider.nodes_per_block",
                          "value 0"),
    "nodes_per_block-bool": ({"name": "slurm", "nodes_per_block": True},
                             "provider.nodes_per_block", "True"),
    "init_blocks-negative": ({"name": "slurm", "init_blocks": -1}, "provider.init_blocks",
                             "-1"),
    "min_blocks-negative": ({"name": "slurm", "min_blocks": -1}, "provider.min_blocks", "-1"),
    "max_blocks-0": ({"name": "slurm", "max_blocks": 0, "init_blocks": 0},
                     "provider.max_blocks", "value 0"),
    "max_blocks-below-min": ({"name": "slurm", "min_blocks": 3, "max_blocks": 2},
                             "provider.max_blocks", "min_blocks (3)"),
    "max_blocks-below-init": ({"name": "slurm", "init_blocks": 4, "max_blocks": 2},
                              "provider.max_blocks", "init_blocks (4)"),
    "parallelism-0": ({"name": "slurm", "parallelism": 0}, "provider.parallelism", "value 0"),
    "parallelism-over-1": ({"name": "slurm", "parallelism": 1.5}, "provider.parallelism",
                           "1.5"),
    "parallelism-nan": ({"name": "slurm", "parallelism": float("nan")},
                        "provider.parallelism", "nan"),
    "walltime-words": ({"name": "slurm", "walltime": "30 minutes"}, "provider.walltime",
                       "'30 minutes'"),
    "walltime-61-minutes": ({"name": "pbs", "walltime": "00:61:00"}, "provider.walltime",
                            "'00:61:00'"),
    "walltime-zero": ({"name": "slurm", "walltime": "00:00"}, "provider.walltime", "'00:00'"),
    "walltime-number": ({"name": "slurm", "walltime": 1800}, "provider.walltime", "1800"),
    "partition-newline": ({"name": "slurm", "partition": "debug\n#SBATCH --x"},
                          "provider.partition", "newlines"),
    "queue-quote": ({"name": "pbs", "queue": 'debug"'}, "provider.queue", "quote"),
    "account-empty": ({"name": "pbs", "account": " "}, "provider.account", "empty"),
    "qos-quote": ({"name": "slurm", "qos": "hi'gh"}, "provider.qos", "quote"),
    "qos-with-pbs": ({"name": "pbs", "qos": "high"}, "provider.qos", "Slurm setting"),
    "options-pbs-line-for-slurm": ({"name": "slurm", "scheduler_options": "#PBS -l x=1"},
                                   "provider.scheduler_options", "'#SBATCH '"),
    "options-plain-line-for-pbs": ({"name": "pbs",
                                    "scheduler_options": "#PBS -l a=b\nmodule load x"},
                                   "provider.scheduler_options", "'module load x'"),
    "options-for-local": ({"name": "local", "scheduler_options": "#SBATCH -N 2"},
                          "provider.scheduler_options", "no scheduler"),
    "launcher-srun-with-pbs": ({"name": "pbs", "launcher": "srun"}, "provider.launcher",
                               "'srun'"),
    "launcher-unknown": ({"name": "slurm", "launcher": "aprun"}, "provider.launcher",
                         "'aprun'"),
    "launcher-with-local": ({"name": "local", "launcher": "mpiexec"}, "provider.launcher",
                            "itself"),
    "max_idletime-0": ({"name": "slurm", "max_idletime": 0}, "provider.max_idletime",
                       "value 0"),
    "address-wildcard": ({"name": "slurm", "address": "0.0.0.0"}, "provider.address",
                         "every interface"),
    "address-not-here": ({"name": "slurm", "address": "203.0.113.77"}, "provider.address",
                         "not an address of this host"),
    "address-no-such-interface": ({"name": "slurm", "address": "nosuch0"}, "provider.address",
                                  "'nosuch0'"),
    "submit_retries-0": ({"name": "slurm", "submit_retries": 0}, "provider.submit_retries",
                         "value 0"),
    "exclusive-not-bool": ({"name": "slurm", "exclusive": "maybe"}, "provider.exclusive",
                           "'maybe'"),
}


@pytest.mark.parametrize(("provider", "key", "part"), list(BAD_PROVIDERS.values()),
                         ids=list(BAD_PROVIDERS))
def test_a_bad_provider_key_is_one_error_naming_file_key_and_value(provider, key, part):
    with pytest.raises(ConfigError) as caught:
        build_model(LauncherConfig, {"provider": provider}, "provider.json")
    message = str(caught.value)
    assert message.startswith("provider.json: LauncherConfig key ") and "\n" not in message
    assert f"key '{key}'" in message and "; and" not in message, message
    assert part in message, message


@pytest.mark.parametrize(("settings", "key", "part"), [
    ({"nlevels": 2}, "nlevels", "provider runs need nlevels=1"),
    ({"nlevels": 0}, "nlevels", "provider runs need nlevels=1"),
    ({"comm_name": "multiprocessing"}, "comm_name", "zmq"),
])
def test_a_provider_run_is_a_flat_tree_over_zmq(settings, key, part):
    with pytest.raises(ConfigError) as caught:
        build_model(LauncherConfig, {"provider": {"name": "local"}, **settings}, "l.json")
    assert f"key '{key}'" in str(caught.value) and part in str(caught.value)
    config = LauncherConfig(provider={"name": "local"})
    assert (config.nlevels, config.comm_name) == (1, "zmq")
    assert LauncherConfig(provider={"name": "local"}, nlevels=1, comm_name="zmq").nlevels == 1


def test_provider_defaults_and_walltime_forms():
    config = ProviderConfig(name="slurm")
    assert (config.nodes_per_block, config.init_blocks, config.min_blocks, config.max_blocks,
            config.parallelism, config.walltime_seconds, config.max_idletime,
            config.submit_retries, config.exclusive) == (1, 1, 0, 1, 1.0, 1800, 120.0, 3, True)
    assert config.block_launcher == "srun"
    assert ProviderConfig(name="pbs").block_launcher == "mpiexec"
    assert ProviderConfig(name="slurm", launcher="mpiexec").block_launcher == "mpiexec"
    assert ProviderConfig(name="local").block_launcher == "local"
    for text, seconds in [("1-02:03:04", 93784), ("45:30", 2730), ("100:00:00", 360000),
                          ("00:00:01", 1)]:
        assert ProviderConfig(name="pbs", walltime=text).walltime_seconds == seconds
    assert ProviderConfig(name="slurm", address="127.0.0.1").address == "127.0.0.1"


# ----- the PBS and Slurm job scripts (PBS: the script only)


def fake_launcher(tmp_path: Path, name: str) -> Path:
    """A stand-in for srun/mpiexec on PATH: prints its arguments, the block's variables
    and worker_init's, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\nprintf "tree=%s\\nboot=%s\\ninit=%s\\n" '
                    '"$EL_TREE" "$EL_BOOT" "$FROM_INIT"\n')
    fake.chmod(0o755)
    return bin_dir


def run_block_script(path: Path, bin_dir: Path) -> list[str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(path)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def directive_block(script: str, prefix: str) -> list[str]:
    """The directive lines, which must all come before the first command of the script."""
    lines = [line for line in script.splitlines()[1:] if line.strip()]
    first_command = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert all(not line.startswith(prefix) for line in lines[first_command:]), script
    return lines[:first_command]


def test_pbs_job_script_has_the_directives_and_starts_one_worker_per_node(tmp_path):
    config = ProviderConfig(name="pbs", nodes_per_block=2, queue="debug", account="proj",
                            walltime="01:30:00",
                            scheduler_options="#PBS -l filesystems=home:eagle\n"
                                              "#PBS -l place=scatter",
                            worker_init="export FROM_INIT='from init'")
    provider = make_provider(config, mpi_flavor="pals")
    try:
        block = request(tmp_path)
        script = provider.script(block)
        ours = provider.block_script(block)
    finally:
        provider.close()
    wait_for(lambda: "pbs Queue Polling Thread" not in {t.name for t in threading.enumerate()},
             10, "PSI/J's polling thread to stop after close()")
    directives = directive_block(script, "#PBS")
    assert "#PBS -l select=2:ncpus=1:mpiprocs=1" in directives
    assert "#PBS -l place=scatter:exclhost" in directives
    assert "#PBS -l walltime=1:30:0" in directives
    assert "#PBS -q debug" in directives and "#PBS -A proj" in directives
    assert "#PBS -N el-test-b3" in directives
    assert directives[-2:] == ["#PBS -l filesystems=home:eagle", "#PBS -l place=scatter"]
    assert str(block.script_path) in script
    launch = f"exec mpiexec -n 2 -ppn 1 {shlex.join(ARGV)}"
    assert ours.splitlines()[-1] == launch
    assert ours.index("export FROM_INIT=") < ours.index("export EL_TREE=") < ours.index(launch)
    for text in (script, ours):
        assert "EL_CURVE" not in text and "secret" not in text.lower()

    path = write_block_script(block, ours)
    assert path.stat().st_mode & 0o777 == 0o700
    printed = run_block_script(path, fake_launcher(tmp_path, "mpiexec"))
    assert printed == ["-n", "2", "-ppn", "1", *ARGV, f"tree={TREE}",
                       f"boot={block.env['EL_BOOT']}", "init=from init"]


def test_slurm_job_script_has_the_directives_and_starts_one_worker_per_node(tmp_path):
    config = ProviderConfig(name="slurm", nodes_per_block=2, partition="debug",
                            account="acct", qos="high", walltime="1-00:10:00",
                            scheduler_options="#SBATCH --constraint=gpu\n#SBATCH -C cpu",
                            worker_init="FROM_INIT=ok\nexport FROM_INIT")
    provider = make_provider(config)
    try:
        block = request(tmp_path)
        script = provider.script(block)
        ours = provider.block_script(block)
    finally:
        provider.close()
    directives = directive_block(script, "#SBATCH")
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --time=1-0:10:0", '#SBATCH --partition="debug"',
                 '#SBATCH --account="acct"', '#SBATCH --qos="high"', "#SBATCH --exclusive",
                 "#SBATCH --job-name=el-test-b3"]:
        assert line in directives, script
    assert directives[-2:] == ["#SBATCH --constraint=gpu", "#SBATCH -C cpu"]
    assert ours.splitlines()[-1].startswith(
        "exec srun --nodes=2 --ntasks=2 --ntasks-per-node=1 ")
    assert ours.splitlines()[-1].endswith(shlex.join(ARGV))
    for text in (script, ours):
        assert "EL_CURVE" not in text and "secret" not in text.lower()

    shared = make_provider(ProviderConfig(name="slurm", exclusive=False))
    try:
        assert "--exclusive" not in shared.script(request(tmp_path, index=4))
    finally:
        shared.close()

    path = write_block_script(block, ours)
    printed = run_block_script(path, fake_launcher(tmp_path, "srun"))
    assert printed[:3] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    assert printed[-len(ARGV) - 3:] == [*ARGV, f"tree={TREE}", f"boot={block.env['EL_BOOT']}",
                                        "init=ok"]


def test_a_missing_psij_is_one_error_saying_what_to_install(tmp_path):
    code = ("import sys; sys.modules['psij'] = None\n"
            "from ensemble_launcher.config.models import ProviderConfig\n"
            "from ensemble_launcher.providers import make_provider\n"
            "try:\n    make_provider(ProviderConfig(name='slurm'))\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == ("ProviderError the slurm and pbs providers need PSI/J: "
                                   "pip install 'ensemble_launcher[providers]'"), done.stderr


# ----- the local provider, for real


@pytest.fixture
def local_provider():
    made = []

    def make(**settings):
        made.append(make_provider(ProviderConfig(name="local", **settings)))
        return made[-1]

    yield make
    for provider in made:
        provider.close()


def test_a_local_block_runs_its_argv_once_per_node(tmp_path, local_provider):
    provider = local_provider(worker_init="export FROM_INIT=yes")
    record = tmp_path / "ran"
    argv = ["sh", "-c", 'printf "%s %s %s" "$EL_TREE" "$EL_BOOT" "$FROM_INIT" '
            '> "$0.$EL_CHILD_INDEX"', str(record)]
    block = provider.submit(request(tmp_path, nodes=2, argv=argv))
    assert block.job_id.isdigit() and block.state is BlockState.RUNNING
    until_state(provider, block, lambda s: s.ended, 30)
    assert block.state is BlockState.COMPLETED and block.message == ""
    boot = str(tmp_path / "run dir" / ".boot-main")
    assert sorted(p.name for p in tmp_path.glob("ran.*")) == ["ran.0", "ran.1"]
    for path in tmp_path.glob("ran.*"):
        assert path.read_text() == f"{TREE} {boot} yes"
    script = request(tmp_path).script_path
    assert script.stat().st_mode & 0o777 == 0o700
    assert block.started is not None and block.ended is not None


def test_a_local_block_that_fails_says_its_exit_status(tmp_path, local_provider):
    provider = local_provider()
    argv = ["sh", "-c", "exit $((3 + $EL_CHILD_INDEX))"]
    block = provider.submit(request(tmp_path, nodes=2, argv=argv))
    until_state(provider, block, lambda s: s.ended, 30)
    assert block.state is BlockState.FAILED and "status" in block.message


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _started_pids(tmp_path: Path, count: int) -> list[int]:
    files = [tmp_path / f"pid.{i}" for i in range(count)]
    wait_for(lambda: all(f.exists() and f.read_text().strip() for f in files), 30,
             "the block's processes to start")
    return [int(f.read_text()) for f in files]


def test_cancel_stops_a_local_blocks_whole_group(tmp_path, local_provider):
    provider = local_provider()
    argv = ["sh", "-c", f'echo $$ > {tmp_path}/pid.$EL_CHILD_INDEX; exec sleep 300']
    block = provider.submit(request(tmp_path, nodes=2, argv=argv))
    pids = _started_pids(tmp_path, 2)
    provider.cancel(block)
    provider.cancel(block)
    until_state(provider, block, lambda s: s.ended, 30)
    assert block.state is BlockState.CANCELLED
    assert not any(_alive(pid) for pid in pids)
    provider.cancel(block)
    assert block.state is BlockState.CANCELLED


def test_a_local_block_ends_at_its_walltime_even_if_it_ignores_sigterm(tmp_path,
                                                                        local_provider):
    """SIGTERM at the walltime, SIGKILL 5 s later: the block ends FAILED, saying why."""
    provider = local_provider(walltime="00:01")
    argv = ["sh", "-c", f"trap '' TERM; echo $$ > {tmp_path}/pid.$EL_CHILD_INDEX; "
            "while :; do sleep 1; done"]
    block = provider.submit(request(tmp_path, nodes=1, argv=argv))
    pids = _started_pids(tmp_path, 1)
    until_state(provider, block, lambda s: s.ended, 60)
    assert block.state is BlockState.FAILED and "walltime" in block.message
    assert block.ended - block.started >= 1
    assert not _alive(pids[0])


# ----- the slurm provider (PSI/J) on the Slurm test cluster


@pytest.fixture
def slurm(cluster, monkeypatch, tmp_path):
    """A slurm provider whose sbatch/squeue/scancel (run by PSI/J from PATH, with this
    process's environment) reach the test cluster; every block it submitted is cancelled
    at the end."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setenv("PATH", cluster.env["PATH"])
    providers, blocks = [], []

    def make(**settings):
        providers.append(make_provider(ProviderConfig(name="slurm", walltime="05:00",
                                                      **settings)))
        return providers[-1]

    make.work = cluster.run_dir / "el"
    make.blocks = blocks
    yield make
    for provider in providers:
        for block in blocks:
            provider.cancel(block)
        provider.close()


def queued(cluster) -> list[str]:
    """Our jobs that are still pending, running or completing."""
    out = cluster.run(["squeue", "-h", "-t", "PD,R,CG,CF", "-o", "%i %T %j"],
                      capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_a_slurm_block_runs_is_cancelled_and_leaves_the_queue(cluster, slurm):
    provider = slurm()
    block = provider.submit(request(slurm.work, index=0, nodes=1,
                                    argv=["sh", "-c", "hostname; sleep 30"]))
    slurm.blocks.append(block)
    assert block.state is BlockState.PENDING and block.job_id.isdigit()
    until_state(provider, block, lambda s: s is BlockState.RUNNING, 60)
    print(f"slurm block: submit to RUNNING {block.started - block.submitted:.2f} s")
    assert any(line.split()[:3] == [block.job_id, "RUNNING", "el-test-b0"]
               for line in queued(cluster)), queued(cluster)
    output = request(slurm.work, index=0).output_path
    wait_for(lambda: output.exists() and output.read_text().strip(), 30, "hostname")
    assert output.read_text().split()[0] in cluster.hosts

    provider.cancel(block)
    until_state(provider, block, lambda s: s.ended, 60)
    assert block.state is BlockState.CANCELLED and block.ended >= block.started
    wait_for(lambda: not any(line.split()[0] == block.job_id for line in queued(cluster)),
             30, f"job {block.job_id} to leave the queue")
    provider.cancel(block)


def test_a_rejected_slurm_block_quotes_sbatch(cluster, slurm):
    provider = slurm(partition="nosuch")
    with pytest.raises(ProviderError) as caught:
        provider.submit(request(slurm.work, index=0, nodes=1, argv=["true"]))
    assert "sbatch: error: Batch job submission failed: Invalid partition name specified" \
        in str(caught.value)
    assert queued(cluster) == []


def test_slurm_blocks_that_end_by_themselves(cluster, slurm):
    """A 2-node block whose workers exit 0 is COMPLETED (one worker per node, ranks 0 and
    1, with the block's variables); one whose script exits 3 is FAILED, saying so."""
    provider = slurm()
    argv = ["sh", "-c", 'echo "$SLURM_PROCID $(hostname) $EL_TREE"']
    done = provider.submit(request(slurm.work, index=0, nodes=2, argv=argv))
    failing = provider.submit(request(slurm.work, index=1, nodes=1,
                                      argv=["sh", "-c", "exit 3"]))
    slurm.blocks.extend([done, failing])
    until_state(provider, done, lambda s: s.ended, 60)
    until_state(provider, failing, lambda s: s.ended, 60)
    assert done.state is BlockState.COMPLETED, done.message
    lines = sorted(request(slurm.work, index=0).output_path.read_text().splitlines())
    assert [line.split(" ", 2)[0] for line in lines] == ["0", "1"]
    assert {line.split(" ", 2)[1] for line in lines} <= set(cluster.hosts)
    assert len({line.split(" ", 2)[1] for line in lines}) == 2
    assert all(line.split(" ", 2)[2] == TREE for line in lines)
    assert failing.state is BlockState.FAILED and "status 3" in failing.message
    assert queued(cluster) == []


def test_a_slurm_block_waiting_on_a_drained_node_stays_pending(cluster, slurm):
    """squeue's reason "ReqNodeNotAvail, UnavailableNodes:..." has a space, on which
    PSI/J 0.9.11's own parser fails (and, after three such polls, marks every job FAILED);
    the block stays PENDING over several polls. Its scheduler_options lines reach Slurm."""
    drained = cluster.hosts[0]
    cluster.run(["scontrol", "update", f"nodename={drained}", "state=drain",
                 "reason=provider test"], check=True)
    provider = slurm(scheduler_options=f"#SBATCH --nodelist={drained}\n"
                                       "#SBATCH --comment=el-provider-test")
    block = provider.submit(request(slurm.work, index=0, nodes=1, argv=["true"]))
    slurm.blocks.append(block)
    wait_for(lambda: cluster.job_info(int(block.job_id)).get("Reason", "")
             .startswith("ReqNodeNotAvail"), 30, "Slurm to hold the job for the drained node")
    polls_later = time.monotonic() + 5
    while time.monotonic() < polls_later:
        provider.poll([block])
        assert block.state is BlockState.PENDING, block.message
        time.sleep(0.2)
    info = cluster.job_info(int(block.job_id))
    assert (info["Comment"], info["OverSubscribe"], info["JobName"]) == (
        "el-provider-test", "NO", "el-test-b0")
    provider.cancel(block)
    until_state(provider, block, lambda s: s.ended, 60)
    assert block.state is BlockState.CANCELLED
