"""The `Cluster` context manager: see the package docstring for what it starts."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import netns, runs
from .procs import (
    ClusterError,
    children_of,
    kill_namespace_members,
    namespace_inode,
    pids_in_namespaces,
    pids_with_env,
    read_pid,
    reap,
    same_process_alive,
    send_signal,
    stop_daemon,
    tail,
    wait_until,
)
from .slurm import FINISHED_STATES, SlurmLayout, cgroup_conf, parse_show_job, slurm_conf

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

HOST_INIT = """
hostname "$1"
mount --bind "$2" /proc/sys/kernel/random/boot_id
mount -t tmpfs -o size=50%,mode=1777 tmpfs /dev/shm
shift 2
exec "$@"
"""

RSH_TEMPLATE = """#!/bin/sh
# Hydra's "ssh" for test cluster {run_id}: `netns-rsh [-opts] HOST CMD...` runs CMD on HOST
# by entering the namespaces of that host's slurmd.
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
case "$host" in
{cases}
  *) echo "netns-rsh: $host is not a host of test cluster {run_id}" >&2; exit 255 ;;
esac
pid=$(cat "$pidfile") || exit 255
exec nsenter -t "$pid" -n -u -m --wd="$PWD" sh -c "$*"
"""


@dataclass
class JobResult:
    """A finished batch job."""

    job_id: int
    state: str
    exit_code: int
    signal: int
    stdout_path: Path
    stderr_path: Path
    info: dict[str, str] = field(repr=False)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


class Cluster:
    """`nhosts` hosts with a Slurm controller, one slurmd each, munge and MPICH's Hydra.

    `slurm_options` adds or overrides slurm.conf settings (e.g. {"SlurmdTimeout": "5"}).
    `mpi_finalize_timeout` bounds how long MPI_Finalize waits for UCX disconnects, through
    an LD_PRELOAD shim in `env` (see ucx_disconnect_timeout.c); None leaves MPI untouched.
    """

    def __init__(
        self,
        nhosts: int = 3,
        cpus_per_host: int = 2,
        *,
        startup_timeout: float = 30.0,
        slurm_options: dict[str, str] | None = None,
        mpi_finalize_timeout: float | None = 1.0,
    ) -> None:
        if not 1 <= nhosts <= 200:
            raise ValueError(f"nhosts must be between 1 and 200, not {nhosts}")
        self.nhosts = nhosts
        self.cpus_per_host = cpus_per_host
        self.startup_timeout = startup_timeout
        self.slurm_options = dict(slurm_options or {})
        self.mpi_finalize_timeout = mpi_finalize_timeout
        self.run_id = "el" + secrets.token_hex(3)
        self.hosts = [f"{self.run_id}-{i}" for i in range(1, nhosts + 1)]
        self.bridge = f"{self.run_id}-br"
        self.veths = {host: f"{self.run_id}-v{i}" for i, host in enumerate(self.hosts, 1)}
        self.cluster_name = self.run_id
        self.controller = socket.gethostname().split(".")[0]
        self.addresses: dict[str, str] = {}
        self.bridge_address = ""
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._record: runs.RunRecord | None = None
        self._run_dir: Path | None = None
        self._children: dict[str, subprocess.Popen] = {}
        self._ns_inodes: dict[str, set[int]] = {}
        self._helpers: dict[int, str | None] = {}
        self._down: set[str] = set()
        self._jobs = itertools.count(1)
        self._started_on_hosts: list[subprocess.Popen] = []

    # ----- paths

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            raise ClusterError("the cluster has not been started")
        return self._run_dir

    @property
    def layout(self) -> SlurmLayout:
        return SlurmLayout(self.run_dir)

    @property
    def slurm_conf(self) -> Path:
        return self.layout.conf

    @property
    def rsh(self) -> str:
        """Path of the rsh-like program for `mpiexec -launcher ssh -launcher-exec`."""
        return str(self.run_dir / "netns-rsh")

    @property
    def munge_socket(self) -> Path:
        return self.run_dir / "munge" / "munge.socket"

    @property
    def munged_pid_file(self) -> Path:
        return self.run_dir / "munge" / "munged.pid"

    @property
    def munged_log(self) -> Path:
        return self.layout.log_dir / "munged.log"

    # ----- lifecycle

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start everything; on any failure tear down what was started, then raise."""
        try:
            self._timed("register", self._register)
            self._timed("files", self._write_files)
            self._timed("network", self._create_network)
            self._timed("munged", self._start_munged)
            self._timed("slurmctld", self._start_slurmctld)
            self._timed("slurmd", self._start_slurmds)
        except BaseException as setup_error:
            try:
                self.close()
            except ClusterError as teardown_error:
                raise ClusterError(f"{setup_error}\n\nTeardown after that failed too: "
                                   f"{teardown_error}") from setup_error
            raise

    def close(self) -> None:
        """Stop and remove everything this run created, then check that nothing is left.

        Each step runs even when an earlier one failed; all failures are reported together.
        """
        if self._record is None:
            return
        errors: list[str] = []

        def step(what: str, action, *args) -> None:
            try:
                action(*args)
            except Exception as exc:  # noqa: BLE001 - every step runs; all failures reported
                errors.append(f"{what}: {exc}")

        step("killing client commands", self._kill_clients)
        for host, child in self._slurmd_children():
            step(f"stopping slurmd on {host}", self._stop, child)
        step("killing processes on the hosts", kill_namespace_members, self._all_ns_inodes())
        for process in self._started_on_hosts:
            step(f"reaping {process.args}", _reap_and_close, process)
        if "slurmctld" in self._children:
            step("stopping slurmctld", self._stop, self._children["slurmctld"], 1.0)
        if "munged" in self._children:
            step("stopping munged", self._stop, self._children["munged"])
        for host in self.hosts:
            step(f"deleting namespace {host}", netns.delete_netns, host)
        for link in [*self.veths.values(), self.bridge]:
            step(f"deleting link {link}", netns.delete_link, link)
        with runs.registry_lock():
            step("cleaning /etc/hosts", runs.remove_hosts_lines, frozenset(), self.run_id)
        if self._run_dir is not None:
            step("removing the run directory", shutil.rmtree, self._run_dir)
        leftovers = self.leftovers()
        if errors or leftovers:
            raise ClusterError(
                f"teardown of test cluster {self.run_id} was incomplete\n"
                + "\n".join(errors + [f"left over: {item}" for item in leftovers])
            )
        self._record.path.unlink(missing_ok=True)
        self._record = None

    def leftovers(self) -> list[str]:
        """Everything of this run that still exists (empty after a clean teardown)."""
        found = [f"namespace {n}" for n in netns.netns_names() if n.startswith(self.run_id)]
        found += [f"link {link}" for link in [self.bridge, *self.veths.values()]
                  if netns.link_exists(link)]
        found += [f"process {child.pid} ({name})" for name, child in self._children.items()
                  if child.poll() is None]
        found += [f"process {pid} (a daemon's helper)" for pid, started in self._helpers.items()
                  if same_process_alive(pid, started)]
        if self._run_dir is not None:
            found += [f"client process {pid}" for pid in self._clients()]
        found += [f"/etc/hosts line {line!r}" for line in runs.marked_hosts_lines(self.run_id)]
        if self._run_dir is not None and self._run_dir.exists():
            found.append(f"directory {self._run_dir}")
        return found

    # ----- using the cluster

    def client_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This process's environment without any outer Slurm job's variables, plus `env`."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env.update(self.env)
        env.update(extra or {})
        return env

    def run(self, argv: list[str] | str, **kwargs) -> subprocess.CompletedProcess:
        """Run a client command (srun, sinfo, mpiexec...) here, outside the hosts."""
        kwargs.setdefault("env", self.client_env())
        kwargs.setdefault("timeout", 60)
        return subprocess.run(_argv(argv), **kwargs)

    def run_on(self, host: str, argv: list[str] | str, **kwargs) -> subprocess.CompletedProcess:
        """Run a command on `host`, as ssh would: in its namespaces, in the current directory.

        A string is run by `sh -c`. Keyword arguments go to subprocess.run; `env` defaults to
        client_env() and `timeout` to 60 s.
        """
        kwargs.setdefault("env", self.client_env())
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self._on_host(host, argv, kwargs.get("cwd")), **kwargs)

    def popen_on(self, host: str, argv: list[str] | str, **kwargs) -> subprocess.Popen:
        """Like run_on, but return the Popen; its pid is the command's own pid on the host.

        It returns once the command is on the host (nsenter has entered the namespaces), so
        that host_pids() and kill_host() see it. Teardown kills and reaps whatever is still
        running, and closes its pipes.
        """
        kwargs.setdefault("env", self.client_env())
        process = subprocess.Popen(self._on_host(host, argv, kwargs.get("cwd")), **kwargs)
        self._started_on_hosts.append(process)
        host_net = namespace_inode(f"/run/netns/{host}")
        wait_until(
            lambda: process.poll() is not None
            or namespace_inode(f"/proc/{process.pid}/ns/net") == host_net,
            10, f"{process.args} to enter host {host}")
        return process

    def sbatch(
        self,
        script: str,
        nodes: int = 3,
        *,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        **options: str | int | bool,
    ) -> JobResult:
        """Submit `script` with `sbatch -N nodes` and wait until the job has finished.

        Extra keyword options become sbatch options: ntasks_per_node=2 is
        --ntasks-per-node=2, exclusive=True is --exclusive. The job's output goes to files
        in the run directory. Raises ClusterError when sbatch fails or the job does not
        finish within `timeout` seconds (the job is then cancelled).
        """
        number = next(self._jobs)
        job_dir = self.run_dir / "jobs"
        path = job_dir / f"job{number}.sh"
        path.write_text(script if script.startswith("#!") else "#!/bin/sh\n" + script)
        path.chmod(0o755)
        stdout, stderr = job_dir / f"job{number}.out", job_dir / f"job{number}.err"
        argv = ["sbatch", "--parsable", f"--nodes={nodes}", f"--output={stdout}",
                f"--error={stderr}", *_long_options(options), str(path)]
        submitted = self.run(argv, env=env or self.client_env(), cwd=cwd or os.getcwd(),
                             capture_output=True, text=True)
        if submitted.returncode != 0:
            raise ClusterError(f"sbatch failed: {submitted.stderr.strip()}\n{self.log_tails()}")
        job_id = int(submitted.stdout.strip().split(";")[0])
        info: dict[str, str] = {}

        def finished() -> bool:
            info.update(self._show_job(job_id))
            return info.get("JobState") in FINISHED_STATES

        try:
            wait_until(finished, timeout, f"job {job_id} to finish",
                       lambda: f"job: {info}\n{self.log_tails()}", max_interval=0.2)
        except ClusterError:
            self.run(["scancel", str(job_id)], capture_output=True)
            raise
        exit_code, term_signal = (int(v) for v in info.get("ExitCode", "0:0").split(":"))
        return JobResult(job_id, info["JobState"], exit_code, term_signal, stdout, stderr, info)

    def kill_host(self, host: str) -> None:
        """Crash `host`: SIGKILL every process in its namespaces, slurmd included."""
        self._check_host(host)
        kill_namespace_members(self._ns_inodes[host])
        reap(self._children[f"slurmd {host}"])
        self._down.add(host)

    def cut_link(self, host: str) -> None:
        """Partition `host` from the others by taking its veth (the bridge side) down."""
        self._check_host(host)
        netns.set_link(self.veths[host], up=False)

    def restore_link(self, host: str, timeout: float = 10.0) -> None:
        """Undo cut_link; returns once the bridge forwards to `host` again."""
        self._check_host(host)
        veth = self.veths[host]
        netns.set_link(veth, up=True)
        wait_until(lambda: netns.forwarding(veth), timeout, f"{veth} to forward again")

    def slurmd_pid(self, host: str) -> int:
        self._check_host(host)
        if host in self._down:
            raise ClusterError(f"host {host} is down (kill_host was called)")
        return self._children[f"slurmd {host}"].pid

    def host_pids(self, host: str) -> set[int]:
        """Pids of every live process on `host`."""
        self._check_host(host)
        return pids_in_namespaces(self._ns_inodes[host])

    def node_states(self) -> dict[str, str]:
        """Slurm's view of each node, e.g. {'el3f9a1b-1': 'idle', ...}."""
        result = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True,
                          timeout=15)
        return dict(line.split() for line in result.stdout.splitlines() if line.strip())

    def job_info(self, job_id: int) -> dict[str, str]:
        """Slurm's view of one job (`scontrol show job`), e.g. info["JobState"]."""
        return self._show_job(job_id)

    def log_tails(self, lines: int = 25) -> str:
        """The ends of the daemons' logs, for error messages."""
        logs = [self.layout.slurmctld_log, self.layout.log_dir / "slurmctld.stderr"]
        for host in self.hosts:
            logs += [self.layout.slurmd_log(host), self.layout.log_dir / f"slurmd-{host}.stderr"]
        logs.append(self.munged_log)
        return "\n".join(tail(log, lines) for log in logs if log.exists())

    # ----- setup steps

    def _timed(self, name: str, step) -> None:
        began = time.monotonic()
        step()
        self.timings[name] = time.monotonic() - began

    def _register(self) -> None:
        """Reserve a subnet and names for this run, reaping stale runs first."""
        with runs.registry_lock():
            live = runs.live_records()
            free = netns.free_test_subnets({r.subnet for r in live})
            if not free:
                raise ClusterError("no free subnet in 10.77.0.0/16 for a test cluster")
            subnet = free[secrets.randbelow(len(free))]
            self._run_dir = Path(tempfile.mkdtemp(prefix=f"{self.run_id}-cluster-"))
            self._record = runs.RunRecord(
                run_id=self.run_id, subnet=subnet, bridge=self.bridge, hosts=self.hosts,
                veths=list(self.veths.values()), run_dir=str(self._run_dir),
                pid_files=[str(self.munged_pid_file), str(self.layout.slurmctld_pid_file)]
                + [str(self.layout.slurmd_pid_file(h)) for h in self.hosts],
            )
            self._record.save()
            self.bridge_address = f"10.77.{subnet}.1"
            self.addresses = {host: f"10.77.{subnet}.{10 + i}"
                              for i, host in enumerate(self.hosts, 1)}
            runs.add_hosts_lines(self.addresses, self.run_id)

    def _write_files(self) -> None:
        self.run_dir.chmod(0o711)  # munged wants every directory above its socket searchable
        for directory in [self.run_dir / "munge", self.layout.state_dir, self.layout.log_dir,
                          self.run_dir / "jobs", *map(self.layout.spool_dir, self.hosts)]:
            directory.mkdir(mode=0o755, parents=True)
        key = self.run_dir / "munge.key"
        key.touch(mode=0o600)
        key.write_bytes(os.urandom(1024))
        ports = _free_ports(2)
        self.slurm_conf.write_text(slurm_conf(
            self.layout, self.cluster_name, self.controller, self.bridge_address, ports,
            self.munge_socket, self.addresses, self.cpus_per_host, self.slurm_options))
        (self.run_dir / "cgroup.conf").write_text(cgroup_conf())
        for host in self.hosts:
            (self.run_dir / f"boot_id-{host}").write_text(str(uuid.uuid4()) + "\n")
        cases = "\n".join(
            f"  {host}|{address}) pidfile={shlex.quote(str(self.layout.slurmd_pid_file(host)))} ;;"
            for host, address in self.addresses.items())
        Path(self.rsh).write_text(RSH_TEMPLATE.format(run_id=self.run_id, cases=cases))
        Path(self.rsh).chmod(0o755)
        path = os.pathsep.join(dict.fromkeys(
            [os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep),
             *SYSTEM_PATH.split(os.pathsep)]))
        self.env = {"SLURM_CONF": str(self.slurm_conf), "FI_TCP_IFACE": "eth0",
                    "FI_SOCKETS_IFACE": "eth0", "PATH": path}
        if self.mpi_finalize_timeout is not None:
            self.env.update(self._ucx_shim_env())

    def _ucx_shim_env(self) -> dict[str, str]:
        """Build the MPI_Finalize shim (see ucx_disconnect_timeout.c) and preload it."""
        source = Path(__file__).with_name("ucx_disconnect_timeout.c")
        library = self.run_dir / "ucx_disconnect_timeout.so"
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise ClusterError("no C compiler (cc or gcc) to build the MPI_Finalize shim; "
                               "install gcc, or pass mpi_finalize_timeout=None")
        built = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library),
                                str(source), "-ldl"], capture_output=True, text=True,
                               timeout=60)
        if built.returncode != 0:
            raise ClusterError(f"building the MPI_Finalize shim failed:\n{built.stderr}")
        preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD")]))
        return {"LD_PRELOAD": preload,
                "ELTEST_UCX_DISCONNECT_TIMEOUT": str(self.mpi_finalize_timeout)}

    def _create_network(self) -> None:
        netns.create_bridge(self.bridge, self.bridge_address)
        for host in self.hosts:
            netns.create_host(host, self.veths[host], self.bridge, self.addresses[host])

    def _start_munged(self) -> None:
        self._spawn("munged", [
            "munged", "--foreground", f"--socket={self.munge_socket}",
            f"--key-file={self.run_dir / 'munge.key'}", f"--pid-file={self.munged_pid_file}",
            f"--seed-file={self.run_dir / 'munge' / 'seed'}"], self.munged_log)
        wait_until(lambda: self._alive("munged") and self.munge_socket.exists(),
                   self.startup_timeout, "munged to create its socket", self.log_tails)

    def _start_slurmctld(self) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.slurm_conf)],
                    self.layout.log_dir / "slurmctld.stderr")

        def answers() -> bool:
            self._alive("slurmctld")
            return self.run(["scontrol", "ping"], capture_output=True, timeout=15).returncode == 0

        wait_until(answers, self.startup_timeout, "slurmctld to answer", self.log_tails)

    def _start_slurmds(self) -> None:
        for host in self.hosts:
            argv = ["ip", "netns", "exec", host, "unshare", "--uts", "--mount",
                    "--propagation", "private", "sh", "-c", HOST_INIT, "sh", host,
                    str(self.run_dir / f"boot_id-{host}"),
                    "slurmd", "-D", "-N", host, "-f", str(self.slurm_conf)]
            self._spawn(f"slurmd {host}", argv, self.layout.log_dir / f"slurmd-{host}.stderr")

        def all_idle() -> bool:
            for host in self.hosts:
                self._alive(f"slurmd {host}")
            states = self.node_states()
            return all(states.get(host) == "idle" for host in self.hosts)

        wait_until(all_idle, self.startup_timeout, "every node to be idle in sinfo",
                   lambda: f"sinfo: {self.node_states()}\n{self.log_tails()}")
        for host in self.hosts:
            self._note_namespaces(host)

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        """Start a daemon in the foreground as our child, in its own session.

        Its own session keeps a Ctrl-C of pytest from killing it before teardown runs.
        """
        with open(log, "ab") as out:
            self._children[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                env=self._daemon_env())

    def _daemon_env(self) -> dict[str, str]:
        """client_env() without the MPI shim: the daemons do not need it, jobs get theirs
        from the submitting command's environment."""
        env = self.client_env()
        for name in ("LD_PRELOAD", "ELTEST_UCX_DISCONNECT_TIMEOUT"):
            env.pop(name, None)
        if "LD_PRELOAD" in os.environ:
            env["LD_PRELOAD"] = os.environ["LD_PRELOAD"]
        return env

    def _alive(self, name: str) -> bool:
        """True while daemon `name` runs; raise with the log tails once it has died."""
        code = self._children[name].poll()
        if code is not None:
            raise ClusterError(f"{name} exited with status {code} during startup\n"
                               f"{self.log_tails()}")
        return True

    def _note_namespaces(self, host: str) -> None:
        pid = self._children[f"slurmd {host}"].pid
        inodes = {namespace_inode(f"/run/netns/{host}"), namespace_inode(f"/proc/{pid}/ns/uts")}
        self._ns_inodes[host] = {i for i in inodes if i is not None}
        if read_pid(self.layout.slurmd_pid_file(host)) != pid:
            raise ClusterError(f"slurmd pid file of {host} does not hold its pid {pid}")

    # ----- helpers

    def _on_host(self, host: str, argv: list[str] | str, cwd: str | Path | None) -> list[str]:
        workdir = os.path.abspath(cwd or os.getcwd())
        return ["nsenter", "-t", str(self.slurmd_pid(host)), "-n", "-u", "-m",
                f"--wd={workdir}", "--", *_argv(argv)]

    def _check_host(self, host: str) -> None:
        if host not in self.hosts:
            raise ClusterError(f"{host!r} is not a host of this cluster: {self.hosts}")

    def _slurmd_children(self) -> list[tuple[str, subprocess.Popen]]:
        return [(h, self._children[f"slurmd {h}"]) for h in self.hosts
                if f"slurmd {h}" in self._children]

    def _all_ns_inodes(self) -> set[int]:
        inodes = set().union(*self._ns_inodes.values())
        inodes |= {i for h in self.hosts if (i := namespace_inode(f"/run/netns/{h}"))}
        return inodes

    def _clients(self) -> set[int]:
        """Processes outside the hosts that use this cluster (srun, mpiexec...).

        The daemons and their helpers (slurmctld's slurmscriptd) carry SLURM_CONF too; they
        are stopped in order instead, as slurmctld stalls when its helper dies first.
        """
        daemons = {child.pid for child in self._children.values()}
        for pid in list(daemons):
            daemons |= set(children_of(pid))
        on_hosts = pids_in_namespaces(self._all_ns_inodes())
        return pids_with_env("SLURM_CONF", str(self.slurm_conf)) - daemons - on_hosts

    def _kill_clients(self) -> None:
        def all_gone() -> bool:
            clients = self._clients()
            for pid in clients:
                send_signal(pid, signal.SIGKILL)
            return not clients

        wait_until(all_gone, 10, "client commands of the cluster to die")

    def _stop(self, child: subprocess.Popen, grace: float = 5.0) -> None:
        """Stop a daemon; slurmctld gets a short `grace`, as it may wait long for dead nodes."""
        self._helpers.update(stop_daemon(child, grace))

    def _show_job(self, job_id: int) -> dict[str, str]:
        shown = self.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True,
                         text=True, timeout=15)
        if shown.returncode != 0:
            raise ClusterError(f"scontrol show job {job_id} failed: {shown.stderr.strip()}")
        return parse_show_job(shown.stdout)


def _argv(argv: list[str] | str) -> list[str]:
    return ["sh", "-c", argv] if isinstance(argv, str) else list(argv)


def _reap_and_close(process: subprocess.Popen) -> None:
    reap(process)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _long_options(options: dict[str, str | int | bool]) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False:
            args.append(f"{flag}={value}")
    return args


def _free_ports(count: int) -> tuple[int, ...]:
    """Ports nothing listens on now, for SlurmctldPort and SlurmdPort."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("", 0))
        return tuple(sock.getsockname()[1] for sock in sockets)
