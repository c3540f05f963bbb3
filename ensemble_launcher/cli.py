"""``el``: the command line.

Exit status of ``el run``: 0 when every task succeeded, 1 when any task failed,
2 for bad input (nothing was run), 130 when interrupted. ``kill -USR1`` on a running ``el``
(or any process of its tree) prints that process's Python stack to its stderr.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import time
from pathlib import Path

import click

EXIT_OK, EXIT_TASKS_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ensemble_launcher")
def main() -> None:
    """Launch ensembles of tasks across the nodes of an HPC job."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


_PROGRESS = click.option("--progress/--no-progress", default=None,
                         help="Force the rich progress display on or off (default: on for a "
                              "terminal).")
_JSON = click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write all results to this JSON file.")


@main.command()
@click.argument("ensemble", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--system-config", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON/YAML file with SystemConfig keys (ncpus, cpus, ngpus, gpus, ...).")
@click.option("--launcher-config", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON/YAML file with LauncherConfig keys (report_interval, ...).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (default: el-runs/<ensemble>-<time>-<pid>).")
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
        from ensemble_launcher.config import LauncherConfig, SystemConfig, load_config_file
        from ensemble_launcher.launcher import EnsembleLauncher

        system = load_config_file(SystemConfig, system_config) if system_config else None
        config = load_config_file(LauncherConfig, launcher_config) if launcher_config \
            else LauncherConfig()
        config = _override(config, retries=retries, walltime=_seconds(walltime))
        return EnsembleLauncher(str(ensemble), system, config, pin_resources=not no_pin,
                                return_stdout=return_stdout, out_dir=out_dir,
                                reporter=_reporter(config, progress))

    _execute(make, json_path)


@main.command()
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
        from ensemble_launcher.errors import ConfigError
        from ensemble_launcher.launcher import EnsembleLauncher
        from ensemble_launcher.store import Results

        meta = Results(run_dir).meta()
        if "ensemble_copy" not in meta:
            raise ConfigError(f"{run_dir} was not started from an ensemble file; resume it "
                              "from Python with EnsembleLauncher(..., out_dir=RUN_DIR, "
                              "resume=True)")
        config = LauncherConfig.model_validate(meta["launcher_config"])
        return EnsembleLauncher(str(run_dir / meta["ensemble_copy"]),
                                SystemConfig.model_validate(meta["system_config"]), config,
                                pin_resources=meta["pin_resources"],
                                return_stdout=meta["return_stdout"], out_dir=run_dir,
                                reporter=_reporter(config, progress), resume=True,
                                retry_failed=retry_failed)

    _execute(make, json_path)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(run_dir: Path, as_json: bool) -> None:
    """Show the progress of a run, live or finished, from its RUN_DIR."""
    from ensemble_launcher.errors import EnsembleLauncherError
    from ensemble_launcher.monitor.status import read_status

    try:
        snapshot = read_status(run_dir)
    except EnsembleLauncherError as exc:
        click.echo(f"el: error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        import json

        click.echo(json.dumps(snapshot.to_dict(), indent=1))
    else:
        click.echo("\n".join(snapshot.lines()))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the PNG plots go (default: RUN_DIR/report).")
def report(run_dir: Path, out_dir: Path | None) -> None:
    """Plot where the time of a run went (PNG) and print a summary."""
    if not (run_dir / "journal.db").exists():
        click.echo(f"el: error: {run_dir} is not a run directory (no journal.db)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    from ensemble_launcher.monitor.report import write_report

    paths, lines = write_report(run_dir, out_dir)
    click.echo("\n".join(lines))
    for path in paths:
        click.echo(f"wrote {path}")


def _execute(make, json_path: Path | None) -> None:
    from ensemble_launcher.errors import EnsembleLauncherError

    started = time.monotonic()
    try:
        el = make()
        results = el.run()
    except EnsembleLauncherError as exc:
        click.echo(f"el: error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as exc:
        click.echo(f"el: {exc or 'interrupted'}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if json_path is not None:
        from ensemble_launcher.store import write_results_to_json

        write_results_to_json(results, json_path)
    sys.exit(_summarize(results, el.run_dir, time.monotonic() - started))


def _reporter(config, progress: bool | None):
    from ensemble_launcher.monitor import make_reporter

    return make_reporter(config.report_interval, interactive=progress)


def _override(config, **values):
    """A copy of ``config`` with the options given on the command line (not None)."""
    given = {k: v for k, v in values.items() if v is not None}
    return config.model_copy(update=given) if given else config


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    from ensemble_launcher.resources.walltime import parse_duration

    try:
        value = parse_duration(text)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 3600 or 01:00:00",
                                 param_hint="--walltime")
    return value


def _summarize(results, run_dir: Path, elapsed: float) -> int:
    counts = results.counts()
    total = sum(counts.values())
    failed = total - counts.get("succeeded", 0)
    click.echo(f"el: {total} tasks in {elapsed:.1f} s: {counts.get('succeeded', 0)} succeeded, "
               f"{failed} failed; run directory {run_dir}", err=True)
    for result in _first(results.failed(), 10):
        first_line = (result.exception or "").splitlines()[0:1]
        click.echo(f"  {result.task_id}: {result.state} ({result.reason}) "
                   f"{first_line[0] if first_line else ''}", err=True)
    if failed > 10:
        click.echo(f"  ... and {failed - 10} more; see {run_dir}/journal.db", err=True)
    return EXIT_TASKS_FAILED if failed else EXIT_OK


def _first(iterable, n: int):
    for i, item in enumerate(iterable):
        if i >= n:
            return
        yield item


if __name__ == "__main__":
    main()
