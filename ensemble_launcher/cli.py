"""``el``: the command line.

Exit status of ``el run`` and ``el resume`` (``el status`` and ``el report`` use 0, 2, 3):

    0    every task succeeded
    1    some task failed (the summary lists the first failures)
    2    bad input: a bad ensemble, config, option or run directory; nothing was run
    3    internal error, a bug: one line on the terminal, the traceback in
         RUNDIR/logs/master-main.log (or a file in $TMPDIR when there is no run directory)
    4    the run started but could not go on (the only worker lost, the journal could not
         be written, e.g. a full disk), or its ``--json`` file could not be written:
         ``el resume RUNDIR`` continues it
    130  interrupted (SIGINT/SIGTERM): ``el resume RUNDIR`` continues it

``kill -USR1`` on a running ``el`` (or any process of its tree) prints that process's
Python stack to its stderr.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import NoReturn

import click

EXIT_OK, EXIT_TASKS_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_ABORTED, EXIT_INTERRUPTED = \
    0, 1, 2, 3, 4, 130
#: Where ``_execute`` leaves the run directory in the click context's meta, for the log of
#: an internal error.
_RUN_DIR_KEY = "el.run_dir"
_EXIT_STATUSES = ("Exit status: 0 every task succeeded; 1 some task failed; 2 bad input, "
                  "nothing ran; 3 internal error (traceback in RUNDIR/logs/master-main.log); "
                  "4 the run could not go on (el resume continues it); 130 interrupted.")


class _Commands(click.Group):
    """Our commands, with one rule for an exception we did not raise on purpose (a bug):
    one line on the terminal, the traceback in the run's log, exit status 3."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - this is the one place bugs are reported
            _internal_error(exc, ctx.meta.get(_RUN_DIR_KEY))


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ensemble_launcher")
def main() -> None:
    """Launch ensembles of tasks across the nodes of an HPC job."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


_PROGRESS = click.option("--progress/--no-progress", default=None,
                         help="Force the rich progress display on or off (default: on for a "
                              "terminal).")
_JSON = click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write all results to this JSON file.")


@main.command(epilog=_EXIT_STATUSES)
@click.argument("ensemble", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--system-config", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON/YAML file with SystemConfig keys (ncpus, cpus, ngpus, gpus, ...).")
@click.option("--launcher-config", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON/YAML file with LauncherConfig keys (report_interval, ...).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (default: el-runs/<ensemble>-<time>-<pid>-<n>).")
@click.option("--no-pin", is_flag=True, help="Do not pin tasks to their cores.")
@click.option("--return-stdout", is_flag=True, help="Keep each task's stdout in its result.")
@click.option("--retries", type=click.IntRange(min=0),
              help="Run a failed task up to this many more times (LauncherConfig.retries).")
@click.option("--walltime", help="Time left in the job, as seconds or [D-]HH:MM:SS (default: "
                                 "asked of Slurm/PBS); longer tasks are not started.")
@_JSON
@_PROGRESS
def run(ensemble: Path, system_config: Path | None, launcher_config: Path | None,
        out_dir: Path | None, no_pin: bool, return_stdout: bool, retries: int | None,
        walltime: str | None, json_path: Path | None, progress: bool | None) -> None:
    """Run the tasks of an ENSEMBLE file (JSON or YAML)."""

    def make():
        from ensemble_launcher import config as models
        from ensemble_launcher.config.defaults import launcher_defaults
        from ensemble_launcher.launcher import EnsembleLauncher

        # A model is looked up, and pydantic imported, only for a file given.
        system = models.load_config_file(models.SystemConfig, system_config) \
            if system_config else None
        config = models.load_config_file(models.LauncherConfig, launcher_config) \
            if launcher_config else None
        config = _override(config, retries=retries, walltime=_seconds(walltime))
        return EnsembleLauncher(str(ensemble), system, config, pin_resources=not no_pin,
                                return_stdout=return_stdout, out_dir=out_dir,
                                reporter=_reporter(config or launcher_defaults(), progress))

    _execute(make, json_path)


@main.command(epilog=_EXIT_STATUSES)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--retry-failed", is_flag=True,
              help="Also run again the tasks that failed (default: only those not run).")
@_JSON
@_PROGRESS
def resume(run_dir: Path, retry_failed: bool, json_path: Path | None,
           progress: bool | None) -> None:
    """Continue an interrupted run in RUN_DIR: succeeded tasks are never run again."""

    def make():
        from ensemble_launcher.config import LauncherConfig, SystemConfig
        from ensemble_launcher.launcher import EnsembleLauncher

        meta = _resumable_meta(run_dir)
        config = _recorded(LauncherConfig, meta, "launcher_config", run_dir)
        return EnsembleLauncher(str(run_dir / meta["ensemble_copy"]),
                                _recorded(SystemConfig, meta, "system_config", run_dir), config,
                                pin_resources=meta["pin_resources"],
                                return_stdout=meta["return_stdout"], out_dir=run_dir,
                                reporter=_reporter(config, progress), resume=True,
                                retry_failed=retry_failed)

    _execute(make, json_path)


def _resumable_meta(run_dir: Path) -> dict:
    """The metadata el run recorded in RUN_DIR's journal, with what a resume needs."""
    from ensemble_launcher.errors import ConfigError, StoreError
    from ensemble_launcher.store.journal import JOURNAL_NAME, read_meta

    meta = read_meta(run_dir)
    journal = run_dir / JOURNAL_NAME
    if not meta:
        raise StoreError(f"{journal} holds no run metadata: it was not written by el run")
    if "ensemble_copy" not in meta:
        raise ConfigError(f"{run_dir} was not started from an ensemble file; resume it "
                          "from Python with EnsembleLauncher(..., out_dir=RUN_DIR, "
                          "resume=True)")
    missing = [key for key in ("launcher_config", "system_config", "pin_resources",
                               "return_stdout") if key not in meta]
    if missing:
        raise StoreError(f"{journal} lacks the run metadata {', '.join(missing)}; it was "
                         "written by another version, or damaged")
    return meta


def _recorded(model, meta: dict, key: str, run_dir: Path):
    """The config el run recorded under ``key``, read back as ``model`` (SystemConfig or
    LauncherConfig), with what holds only on the host that recorded it relaxed (a resume
    may run in another job, on another node); StoreError when it is refused."""
    from pydantic import ValidationError

    from ensemble_launcher.config.models import RECORDED_NOTES, recorded_context
    from ensemble_launcher.errors import StoreError

    context = recorded_context()
    try:
        config = model.model_validate(meta[key], context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or key
        raise StoreError(f"{run_dir}: the {key} recorded there cannot be used (another "
                         f"version wrote it, or it was edited): {where}: "
                         f"{first['msg']}") from None
    for note in context[RECORDED_NOTES]:
        click.echo(f"el: note: {note}", err=True)
    return config


@main.command()
@click.argument("ensemble", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--system-config", "--system-config-file", "system_config",
              type=click.Path(dir_okay=False, path_type=Path),
              help="JSON/YAML file with SystemConfig keys.")
@click.option("--launcher-config", "--launcher-config-file", "launcher_config",
              type=click.Path(dir_okay=False, path_type=Path),
              help="JSON/YAML file with LauncherConfig keys; \"cluster\": true and "
                   "\"checkpoint_dir\" make it a cluster.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The cluster's directory (LauncherConfig.checkpoint_dir).")
@click.option("--no-pin", is_flag=True, help="Do not pin tasks to their cores.")
@click.option("--return-stdout", is_flag=True,
              help="A command's future returns its stdout (default: its exit status 0).")
@click.option("--wait", is_flag=True,
              help="Return only when the cluster stops (for a batch script, whose job "
                   "ends when the script does).")
def start(ensemble: Path | None, system_config: Path | None, launcher_config: Path | None,
          checkpoint_dir: Path | None, no_pin: bool, return_stdout: bool, wait: bool) -> None:
    """Start a cluster in the background; print its checkpoint directory.

    Its tasks are ENSEMBLE's (none if omitted) and those ClusterClients submit. Started
    again on the same directory, it runs the tasks submitted before that had not
    finished. Exit status: 0 started (with --wait: stopped); 2 bad input; with --wait,
    the head's own exit status when it failed."""
    from ensemble_launcher.config import LauncherConfig, SystemConfig, load_config_file
    from ensemble_launcher.errors import EnsembleLauncherError
    from ensemble_launcher.launcher import EnsembleLauncher

    try:
        system = load_config_file(SystemConfig, system_config) if system_config else None
        config = load_config_file(LauncherConfig, launcher_config) if launcher_config \
            else None
        overrides: dict[str, object] = {"cluster": True}
        if checkpoint_dir is not None:
            overrides["checkpoint_dir"] = str(checkpoint_dir)
        config = LauncherConfig(**{**(config.model_dump() if config else {}), **overrides})
        el = EnsembleLauncher(str(ensemble) if ensemble else {}, system, config,
                              pin_resources=not no_pin, return_stdout=return_stdout)
        el.start(detach=not wait)
    except EnsembleLauncherError as exc:
        _bad_input(exc)
    except ValueError as exc:
        _bad_input(f"{launcher_config or 'the launcher config'}: {exc}")
    _remember_cluster(el.run_dir)
    click.echo(str(el.run_dir.resolve()))
    if wait:
        sys.exit(el.wait())


@main.command()
@click.argument("checkpoint_dir", required=False,
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to let the cluster finish its tasks before SIGTERM (default: "
                   "as long as they take).")
def stop(checkpoint_dir: Path | None, timeout: float | None) -> None:
    """Stop a cluster once its tasks are final (default: the last one el start started)."""
    from ensemble_launcher.cluster.head import stop_cluster
    from ensemble_launcher.errors import EnsembleLauncherError

    directory = checkpoint_dir or _last_cluster()
    try:
        stop_cluster(directory, timeout)
    except EnsembleLauncherError as exc:
        _bad_input(exc)
    click.echo(f"stopped the cluster in {directory}")


def _state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "ensemble_launcher" / "last-cluster"


def _remember_cluster(directory: Path) -> None:
    path = _state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(directory.resolve()))
    except OSError:
        pass


def _last_cluster() -> Path:
    try:
        return Path(_state_file().read_text().strip())
    except OSError:
        _bad_input("no checkpoint directory given, and el start has not started a cluster "
                   "here; give el stop the directory el start printed")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--firings", "firings", type=click.IntRange(min=0), default=10,
              show_default=True, help="How many of the latest rule firings to list.")
def status(run_dir: Path, as_json: bool, firings: int) -> None:
    """Show the progress of a run, live or finished, from its RUN_DIR, and the latest
    firings of its event rules."""
    from ensemble_launcher.errors import EnsembleLauncherError
    from ensemble_launcher.monitor.status import read_status

    try:
        snapshot = read_status(run_dir, firings)
    except EnsembleLauncherError as exc:
        _bad_input(exc)
    if as_json:
        import json

        click.echo(json.dumps(snapshot.to_dict(), indent=1))
    else:
        click.echo("\n".join(snapshot.lines()))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the PNG plots go (default: RUN_DIR/report).")
@click.option("--html", "html", is_flag=True,
              help="Also write report.html there: the plots and tables in one file that "
                   "opens offline.")
def report(run_dir: Path, out_dir: Path | None, html: bool) -> None:
    """Plot where the time of a run went (PNG) and print a summary."""
    from ensemble_launcher.errors import EnsembleLauncherError, StoreError
    from ensemble_launcher.store.journal import check_journal

    try:
        check_journal(run_dir, read_all=True)
    except EnsembleLauncherError as exc:
        _bad_input(exc)
    from ensemble_launcher.monitor.report import write_report

    try:
        paths, lines = write_report(run_dir, out_dir)
    except StoreError as exc:
        _bad_input(exc)
    if html:
        from ensemble_launcher.dashboard.report import write_html_report

        try:
            paths.append(write_html_report(run_dir, paths, lines, out_dir))
        except StoreError as exc:
            _bad_input(exc)
    click.echo("\n".join(lines))
    for path in paths:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="The port to serve on (0: a free one).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="The address to listen on: one IP address, never a wildcard.")
def dashboard(run_dir: Path, port: int, bind: str) -> None:
    """Serve a live page of the run (or cluster) in RUN_DIR, read-only, until Ctrl-C.

    Open the URL it prints (it holds the page's token); from a laptop, forward the port
    first: ssh -N -L PORT:127.0.0.1:PORT HOST. Exit status: 0 stopped; 2 bad input."""
    from ensemble_launcher.errors import EnsembleLauncherError
    from ensemble_launcher.store.journal import check_journal

    try:
        check_journal(run_dir)
        from ensemble_launcher.dashboard import DashboardServer

        server = DashboardServer(run_dir, port=port, bind=bind)
    except EnsembleLauncherError as exc:
        _bad_input(exc)
    except OSError as exc:
        _bad_input(f"cannot listen on {bind}:{port}: {exc.strerror or exc}")
    click.echo(f"el dashboard: serving {run_dir} on {server.url}")
    host = f"[{server.host}]" if ":" in server.host else server.host
    click.echo(f"  from a laptop: ssh -N -L {server.port}:{host}:{server.port} "
               f"{_hostname()}, then open that URL there; Ctrl-C stops it")
    signal.signal(signal.SIGTERM, _interrupt)
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _execute(make, json_path: Path | None) -> None:
    from ensemble_launcher.errors import EnsembleLauncherError, RunAbortedError

    started = time.monotonic()
    try:
        _check_json_path(json_path)
        el = make()
        click.get_current_context().meta[_RUN_DIR_KEY] = el.run_dir
        results = el.run()
    except RunAbortedError as exc:
        click.echo(f"el: error: {exc}", err=True)
        sys.exit(EXIT_ABORTED)
    except EnsembleLauncherError as exc:
        _bad_input(exc)
    except KeyboardInterrupt as exc:
        click.echo(f"el: {exc or 'interrupted'}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if json_path is not None:
        _write_json(results, json_path, el.run_dir)
    sys.exit(_summarize(results, el.run_dir, time.monotonic() - started))


def _check_json_path(path: Path | None) -> None:
    """--json is written after the run, its missing directories made then, as --out's are:
    a path that cannot be written is bad input, found before anything runs and before
    anything is made."""
    if path is None:
        return
    from ensemble_launcher.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"--json {path}: is a directory")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--json {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--json {path}: directory {existing} is not writable")


def _write_json(results, path: Path, run_dir: Path) -> None:
    from ensemble_launcher.store import write_results_to_json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_results_to_json(results, path)
    except OSError as exc:
        click.echo(f"el: error: cannot write {path}: {exc}; the results are in "
                   f"{run_dir}/journal.db (el resume {run_dir} --json FILE writes them)",
                   err=True)
        sys.exit(EXIT_ABORTED)


def _bad_input(error: object) -> NoReturn:
    click.echo(f"el: error: {error}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _internal_error(exc: BaseException, run_dir: Path | None) -> NoReturn:
    text = "".join(traceback.format_exception(exc))
    log = _write_traceback(text, run_dir)
    first = (str(exc).splitlines() or [""])[0][:200]
    click.echo(f"el: internal error (a bug in ensemble_launcher; please report it): "
               f"{type(exc).__name__}: {first}; "
               f"{f'the traceback is in {log}' if log else 'its traceback follows'}", err=True)
    if log is None:
        click.echo(text, err=True, nl=False)
    sys.exit(EXIT_INTERNAL)


def _write_traceback(text: str, run_dir: Path | None) -> Path | None:
    """Append the traceback to the run's master log, or, without a run directory, to a
    file of its own in $TMPDIR. None when neither can be written (a full disk)."""
    candidates = [Path(tempfile.gettempdir()) / f"el-internal-error-{os.getpid()}.log"]
    if run_dir is not None and Path(run_dir).is_dir():
        candidates.insert(0, Path(run_dir) / "logs" / "master-main.log")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for path in candidates:
        try:
            path.parent.mkdir(exist_ok=True)
            with open(path, "a") as f:
                f.write(f"{stamp} ERROR ensemble_launcher: internal error\n{text}")
        except OSError:
            continue
        return path
    return None


def _reporter(config, progress: bool | None):
    from ensemble_launcher.monitor import make_reporter

    return make_reporter(config.report_interval, interactive=progress)


def _override(config, **values):
    """A copy of ``config`` with the options given on the command line (not None). Without
    a config, the default one with those options, or None when none was given: the
    launcher then works from the defaults without pydantic (see config.defaults)."""
    given = {k: v for k, v in values.items() if v is not None}
    if config is None and given:
        from ensemble_launcher.config import LauncherConfig

        config = LauncherConfig()
    return config.model_copy(update=given) if given else config


def _seconds(text: str | None) -> float | None:
    """``--walltime`` in seconds. The command line's values skip the model's checks
    (model_copy), so NaN and infinity, which would disable the walltime check, are
    refused here."""
    if text is None:
        return None
    import math

    from ensemble_launcher.errors import ConfigError, _short
    from ensemble_launcher.resources.walltime import parse_duration

    try:
        value = parse_duration(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--walltime: value {_short(text)}: not a duration like 3600 or "
                          "01:00:00 (a finite time > 0)")
    return value


def _summarize(results, run_dir: Path, elapsed: float) -> int:
    counts = results.counts()
    total = sum(counts.values())
    meta = results.meta()
    meant = _ended_on_purpose(counts, meta)
    failed = total - counts.get("succeeded", 0) - sum(meant.values())
    on_purpose = "".join(f", {n} {state.replace('_', ' ')}" for state, n in meant.items() if n)
    click.echo(f"el: {total} tasks in {elapsed:.1f} s: {counts.get('succeeded', 0)} succeeded, "
               f"{failed} failed{on_purpose}; run directory {run_dir}", err=True)
    if meta.get("terminated"):
        click.echo(f"el: the run was ended by {meta['terminated']}", err=True)
    for result in _first((r for r in results.failed() if r.state not in meant), 10):
        first_line = (result.exception or "").splitlines()[0:1]
        click.echo(f"  {result.task_id}: {result.state} ({result.reason}) "
                   f"{first_line[0] if first_line else ''}", err=True)
    if failed > 10:
        click.echo(f"  ... and {failed - 10} more; see {run_dir}/journal.db", err=True)
    return EXIT_TASKS_FAILED if failed else EXIT_OK


def _ended_on_purpose(counts: dict[str, int], meta: dict) -> dict[str, int]:
    """Tasks a rule meant to end unfinished, which are no failures: those it cancelled, and
    those not run because a rule terminated the run."""
    meant = {}
    if meta.get("rules"):
        meant["cancelled"] = counts.get("cancelled", 0)
    if meta.get("terminated"):
        meant["not_run"] = counts.get("not_run", 0)
    return meant


def _first(iterable, n: int):
    for i, item in enumerate(iterable):
        if i >= n:
            return
        yield item


if __name__ == "__main__":
    main()
