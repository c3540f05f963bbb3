"""``el``: the command line.

Exit status of ``el run``: 0 when every task succeeded, 1 when any task failed,
2 for bad input (nothing was run), 130 when interrupted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

EXIT_OK, EXIT_TASKS_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ensemble_launcher")
def main() -> None:
    """Launch ensembles of tasks across the nodes of an HPC job."""


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
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write all results to this JSON file.")
@click.option("--progress/--no-progress", default=None,
              help="Force the rich progress display on or off (default: on for a terminal).")
def run(ensemble: Path, system_config: Path | None, launcher_config: Path | None,
        out_dir: Path | None, no_pin: bool, return_stdout: bool, json_path: Path | None,
        progress: bool | None) -> None:
    """Run the tasks of an ENSEMBLE file (JSON or YAML)."""
    from ensemble_launcher.config import LauncherConfig, SystemConfig, load_config_file
    from ensemble_launcher.errors import EnsembleLauncherError
    from ensemble_launcher.launcher import EnsembleLauncher
    from ensemble_launcher.monitor import make_reporter

    started = time.monotonic()
    try:
        system = load_config_file(SystemConfig, system_config) if system_config else None
        launcher = load_config_file(LauncherConfig, launcher_config) if launcher_config \
            else LauncherConfig()
        reporter = make_reporter(launcher.report_interval, interactive=progress)
        el = EnsembleLauncher(str(ensemble), system, launcher, pin_resources=not no_pin,
                              return_stdout=return_stdout, out_dir=out_dir, reporter=reporter)
        results = el.run()
    except EnsembleLauncherError as exc:
        click.echo(f"el: error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("el: interrupted; results so far are in the run directory", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if json_path is not None:
        from ensemble_launcher.store import write_results_to_json

        write_results_to_json(results, json_path)
    sys.exit(_summarize(results, el.run_dir, time.monotonic() - started))


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
