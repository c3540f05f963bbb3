"""Resume after the host changed (a finished task's directory gone, another node's
bind_address), numbers in env, capped messages of expressions, and el status reading a
journal without touching its directory."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing

import pytest
from test_cli import el, write

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.cli import _recorded
from ensemble_launcher.config import LauncherConfig
from ensemble_launcher.ensemble import EnsembleSpec, Task
from ensemble_launcher.errors import ConfigError, EnsembleFileError, StoreError
from ensemble_launcher.values import _GOOD_ENV_NAMES, _GOOD_ENV_NAMES_MAX, environment

#: An address no host here has (TEST-NET-1, RFC 5737).
ELSEWHERE = "192.0.2.1"
#: Fails on its first run in its directory, succeeds on the next.
FAILS_ONCE = "sh -c 'test -e again || { touch again; exit 1; }' {d}"


def _one_ok_one_failing(tmp_path):
    """A finished run: task d0 succeeded, task d1 failed and succeeds when run again."""
    dirs = [tmp_path / "d0", tmp_path / "d1"]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "again").touch()
    ens = write(tmp_path / "e.json", {"ensembles": {"e": {
        "cmd_template": FAILS_ONCE, "run_dir": "{d}", "d": [str(d) for d in dirs]}}})
    return ens, dirs


def test_resume_does_not_check_finished_tasks_whose_run_dir_was_deleted(tmp_path):
    ens, (done_dir, failed_dir) = _one_ok_one_failing(tmp_path)
    assert el("run", ens, "--out", tmp_path / "run").returncode == 1
    shutil.rmtree(done_dir)
    out = el("resume", tmp_path / "run", "--retry-failed")
    assert out.returncode == 0, out.stderr
    assert "2 succeeded, 0 failed" in out.stderr and "1 skipped" in out.stderr


def test_resume_still_checks_the_tasks_that_run_again(tmp_path):
    ens, (_, failed_dir) = _one_ok_one_failing(tmp_path)
    assert el("run", ens, "--out", tmp_path / "run").returncode == 1
    shutil.rmtree(failed_dir)
    out = el("resume", tmp_path / "run", "--retry-failed")
    assert out.returncode == 2
    assert str(failed_dir) in out.stderr and "does not exist" in out.stderr


def test_resume_from_python_skips_the_checks_of_finished_tasks(tmp_path):
    ens, (done_dir, _) = _one_ok_one_failing(tmp_path)
    EnsembleLauncher(str(ens), out_dir=tmp_path / "run").run()
    shutil.rmtree(done_dir)
    results = EnsembleLauncher(str(ens), out_dir=tmp_path / "run", resume=True,
                               retry_failed=True).run()
    assert results.counts() == {"succeeded": 2}
    with pytest.raises(EnsembleFileError, match="does not exist"):
        EnsembleLauncher(str(ens), out_dir=tmp_path / "new")


def test_resume_of_a_dict_of_tasks_skips_the_checks_of_finished_tasks(tmp_path):
    dirs = [tmp_path / "d0", tmp_path / "d1"]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "again").touch()

    def tasks():
        return {f"t{i}": Task(f"t{i}", executable=FAILS_ONCE.replace("{d}", str(d)), run_dir=str(d))
                for i, d in enumerate(dirs)}

    EnsembleLauncher(tasks(), out_dir=tmp_path / "run").run()
    shutil.rmtree(dirs[0])
    results = EnsembleLauncher(tasks(), out_dir=tmp_path / "run", resume=True,
                               retry_failed=True).run()
    assert results.counts() == {"succeeded": 2}
    with pytest.raises(ConfigError, match="does not exist"):
        EnsembleLauncher(tasks(), out_dir=tmp_path / "new")


def test_a_recorded_bind_address_of_another_host_is_dropped_with_a_note(tmp_path, capsys):
    meta = {"launcher_config": {"bind_address": ELSEWHERE, "report_interval": 2.0}}
    config = _recorded(LauncherConfig, meta, "launcher_config", tmp_path)
    assert config.bind_address is None and config.report_interval == 2.0
    assert ELSEWHERE in capsys.readouterr().err
    for value in ("0.0.0.0", "*", "::"):
        with pytest.raises(StoreError, match="every interface"):
            _recorded(LauncherConfig, {"launcher_config": {"bind_address": value}},
                      "launcher_config", tmp_path)
    with pytest.raises(ValueError, match="not an address of this host"):
        LauncherConfig(bind_address=ELSEWHERE)


def test_el_resume_of_a_run_recorded_with_another_hosts_bind_address(tmp_path):
    ens, _ = _one_ok_one_failing(tmp_path)
    cfg = write(tmp_path / "lc.json", {"bind_address": "127.0.0.1"})
    assert el("run", ens, "--launcher-config", cfg, "--out", tmp_path / "run").returncode == 1
    with closing(sqlite3.connect(tmp_path / "run" / "journal.db")) as conn, conn:
        (text,) = conn.execute("SELECT value FROM meta WHERE key = 'launcher_config'"
                               ).fetchone()
        recorded = json.loads(text)
        assert recorded["bind_address"] == "127.0.0.1"
        recorded["bind_address"] = ELSEWHERE
        conn.execute("UPDATE meta SET value = ? WHERE key = 'launcher_config'",
                     (json.dumps(recorded),))
    out = el("resume", tmp_path / "run", "--retry-failed")
    assert out.returncode == 0, out.stderr
    assert ELSEWHERE in out.stderr and "2 succeeded, 0 failed" in out.stderr


def test_numbers_in_env_become_text_in_tasks_and_in_files(tmp_path):
    task = Task("t", executable='echo "$N $X"', env={"N": 4, "X": 1.5, "S": "s"})
    assert task.env == {"N": "4", "X": "1.5", "S": "s"}
    spec = EnsembleSpec("e", {"cmd_template": "true", "env": {"N": 4, "X": 1.5}})
    assert spec[0].env == {"N": "4", "X": "1.5"}
    results = EnsembleLauncher({"t": task}, out_dir=tmp_path / "run", return_stdout=True).run()
    assert results["t"].stdout.strip() == "4 1.5"


@pytest.mark.parametrize("value", [None, True, False, [1], {"a": 1}, float("nan")])
def test_env_values_that_are_not_text_or_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="value of N must be a string or a finite number"):
        Task("t", executable="true", env={"N": value})
    with pytest.raises(EnsembleFileError, match="env.N"):
        EnsembleSpec("e", {"cmd_template": "true", "env": {"N": value}})


def test_the_cache_of_checked_env_names_stays_bounded():
    for i in range(_GOOD_ENV_NAMES_MAX + 100):
        environment({f"NAME_{i}": "x"})
    assert len(_GOOD_ENV_NAMES) <= _GOOD_ENV_NAMES_MAX


@pytest.mark.parametrize("expression", ["linspace('{long}', 1, 3)", "range('{long}')",
                                        "linspace(0, 1, '{long}')", "arange(0, '{long}')"])
def test_a_long_bad_expression_argument_is_shown_capped(expression):
    long = "x" * 100_000
    with pytest.raises(EnsembleFileError) as info:
        EnsembleSpec("e", {"cmd_template": "echo {a}", "a": expression.format(long=long)})
    assert len(str(info.value)) < 2000


def test_el_status_reads_a_journal_alone_and_creates_nothing_beside_it(tmp_path):
    ens = write(tmp_path / "e.json", {"ensembles": {"a": {"cmd_template": "true {i}",
                                                          "i": "range(3)"}}})
    assert el("run", ens, "--out", tmp_path / "run").returncode == 0
    alone = tmp_path / "alone"
    alone.mkdir()
    with closing(sqlite3.connect(tmp_path / "run" / "journal.db")) as src, \
            closing(sqlite3.connect(alone / "journal.db")) as dst:
        src.backup(dst)
    assert sorted(p.name for p in alone.iterdir()) == ["journal.db"]
    out = el("status", alone, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "finished"
    assert sorted(p.name for p in alone.iterdir()) == ["journal.db"]
